"""`make demo`: bill one sample month end to end on local servers, print the result.

Starts two SFTP servers (primary, secondary) serving a generated month, an SMTP server
that keeps mails as files, uses a SQLite billing database, runs the DAG once in-process
and prints the billing lines and counts. Everything lives under .demo/ and .airflow/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from cdr_billing.config import STABLE_SECONDS_ENV
from cdr_devkit.airflow_env import PROJECT_ROOT, airflow_settings, migrate
from cdr_devkit.sample_data import generate_month
from cdr_devkit.services import LocalServices, connection_env, smtp_connection, stop_on_sigterm

DEMO_DIR = PROJECT_ROOT / ".demo"
AIRFLOW_HOME = PROJECT_ROOT / ".airflow"


def start_demo_services(services: LocalServices, month: str) -> dict[str, str]:
    """Generate the month, start the servers; return the connections as env vars, and
    sftp.stable_seconds 0: the generated files are complete before the servers start."""
    from cdr_billing.months import BillingMonth

    sftp_root = DEMO_DIR / "sftp"
    shutil.rmtree(sftp_root, ignore_errors=True)
    generate_month(sftp_root, BillingMonth.parse(month))
    primary = services.start_sftp("sftp_primary", sftp_root)
    secondary = services.start_sftp("sftp_secondary", sftp_root)
    smtp = services.start_smtp(DEMO_DIR / "mail")
    connections = {
        "cdr_sftp_primary": primary.connection(services.client_key),
        "cdr_sftp_secondary": secondary.connection(services.client_key),
        "billing_db": {"conn_type": "sqlite", "host": str(DEMO_DIR / "billing.sqlite")},
        "smtp_default": smtp_connection(smtp.port),
    }
    return {**connection_env(connections), STABLE_SECONDS_ENV: "0"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--month", default="2026-10", help="billing month to generate and bill (YYYY-MM)"
    )
    args = parser.parse_args()
    stop_on_sigterm()
    os.environ.update(airflow_settings(AIRFLOW_HOME, log_level="WARNING"))
    print(
        f"Billing sample month {args.month}: migrating {AIRFLOW_HOME}, "
        "starting SFTP and SMTP servers, running the DAG"
    )
    migrate(AIRFLOW_HOME)
    with LocalServices(DEMO_DIR / "services") as services:
        os.environ.update(start_demo_services(services, args.month))
        from cdr_devkit.airflow_env import load_dag, run_dag

        dag_run = run_dag(load_dag(), logical_date=None, run_conf={"billing_month": args.month})
    print(f"\nDAG run {dag_run.run_id}: {dag_run.state}")
    if dag_run.state != "success":
        print(f"the run did not succeed; task logs are under {AIRFLOW_HOME / 'logs'}")
        return 1
    from cdr_billing.config import load_config
    from cdr_billing.workdir import run_work_dir

    work_dir = run_work_dir(load_config(), args.month, dag_run.run_id)
    print((work_dir / "report.txt").read_text())
    counts = json.loads((work_dir / "report.json").read_text())["counts"]
    print(
        "Summary: read {read}, billed {billed}, rejected {quarantined}, "
        "unbillable {unbillable}, suspense {suspense}, failed calls {not_billable}, "
        "duplicates {duplicates}, partial parts combined {combined}, "
        "prepaid (debited to balances) {prepaid}".format(**counts)
    )
    print(f"Billing database: {DEMO_DIR / 'billing.sqlite'}; mails: {DEMO_DIR / 'mail'}")
    print(f"Run files, Great Expectations Data Docs and the report: {work_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
