"""Session-wide real components: one migrated Airflow home, one PostgreSQL, two SFTP
servers and one SMTP server, shared by every test that needs them."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Airflow reads its settings when first imported: set them before anything imports it.
SESSION_DIR = Path(tempfile.mkdtemp(prefix="cdr-tests-"))
os.environ["CDR_BILLING_CONFIG"] = str(
    Path(__file__).resolve().parents[1] / "include/config/pipeline.yaml"
)
# sftp.stable_seconds: the sample files are complete before the servers start
os.environ["CDR_BILLING_STABLE_SECONDS"] = "0"
from cdr_devkit.airflow_env import airflow_settings  # noqa: E402

os.environ.update(airflow_settings(SESSION_DIR / "airflow"))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests measure correctness, not speed: no per-example deadline on a loaded 2-core machine.
settings.register_profile("no_deadline", deadline=None)
settings.load_profile("no_deadline")

from cdr_billing.months import BillingMonth  # noqa: E402
from cdr_devkit.airflow_env import migrate  # noqa: E402
from cdr_devkit.airflow_server import RunningAirflow  # noqa: E402
from cdr_devkit.payment_gateway import PaymentGatewayServer  # noqa: E402
from cdr_devkit.postgres import LocalPostgres  # noqa: E402
from cdr_devkit.sample_data import generate_month  # noqa: E402
from cdr_devkit.services import (  # noqa: E402
    LocalServices,
    ServerProcess,
    SftpServer,
    SwitchServer,
    connection_env,
    smtp_connection,
)

SAMPLE_MONTH = BillingMonth(2026, 10)
BACKFILL_MONTHS = [BillingMonth(2026, m) for m in (1, 2, 3)]


@pytest.fixture(scope="session")
def sftp_root() -> Path:
    """A generated sample month, served by both SFTP servers."""
    root = SESSION_DIR / "sftp"
    # each month also writes a small previous-month file
    for month in [
        *reversed(BACKFILL_MONTHS),
        SAMPLE_MONTH,
    ]:
        generate_month(root, month)
    return root


@dataclass
class Servers:
    """The session's running servers."""

    local: LocalServices
    primary: SftpServer
    secondary: SftpServer
    smtp: ServerProcess
    maildir: Path
    gateway: PaymentGatewayServer  # the prepaid runs' payment gateway (HTTPS)
    switch: SwitchServer  # where the prepaid runs send LOCK and UNLOCK

    def sftp_connection(self, server: SftpServer, **overrides: object) -> dict:
        """The Airflow connection of a server, with fields overridden."""
        return {**server.connection(self.local.client_key), **overrides}


@pytest.fixture(scope="session")
def services(sftp_root: Path):
    """Primary and secondary SFTP servers and an SMTP server, for the whole session."""
    with LocalServices(SESSION_DIR / "services") as local:
        yield Servers(
            local=local,
            primary=local.start_sftp("sftp_primary", sftp_root),
            secondary=local.start_sftp("sftp_secondary", sftp_root),
            smtp=local.start_smtp(SESSION_DIR / "mail"),
            maildir=SESSION_DIR / "mail",
            gateway=local.start_payment_gateway("payment_gateway", hang_seconds=25),
            switch=local.start_switch("switch", secret="session-switch-secret"),
        )


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the billing database."""
    with LocalPostgres() as server:
        yield server


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The session's migrated Airflow metadata database (SQLite)."""
    home = SESSION_DIR / "airflow"
    migrate(home)
    return home


@pytest.fixture(scope="session")
def pipeline_connections(services: Servers, postgres: LocalPostgres) -> dict[str, dict]:
    """The Airflow connections of a healthy deployment, set as AIRFLOW_CONN_* variables."""
    connections = {
        "cdr_sftp_primary": services.sftp_connection(services.primary),
        "cdr_sftp_secondary": services.sftp_connection(services.secondary),
        "billing_db": postgres.connection(),
        "smtp_default": smtp_connection(services.smtp.port),
        "payment_gateway": services.gateway.connection(),
        "prepaid_switch": services.switch.connection(),
    }
    os.environ.update(connection_env(connections))
    return connections


@pytest.fixture(scope="session")
def running_airflow(pipeline_connections: dict[str, dict], postgres: LocalPostgres):
    """Airflow's api-server, scheduler and dag-processor on their own Airflow home with a
    PostgreSQL metadata database (as in production), billing into the database `billing_ui`."""
    home = SESSION_DIR / "airflow-server"
    connections = {
        **pipeline_connections,
        "billing_db": postgres.connection(postgres.create_database("billing_ui")),
    }
    env = {
        **os.environ,
        **airflow_settings(home),
        **connection_env(connections),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url_of(
            postgres.create_database("airflow_metadata")
        ),
    }
    migrate(home, env)
    with RunningAirflow(home, env) as airflow:
        yield airflow
