"""`make demo`: bill one sample month end to end on local servers, print the result.

Starts two SFTP servers (primary, secondary) serving a generated month, an SMTP server that
keeps mails as files, a local HTTPS payment gateway and a local switch webhook, uses a SQLite
billing database, and runs the DAGs in-process: first `cdr_prepaid_balances` once, inside the
month, for a few carrier accounts made prepaid (their calls debited, a top-up approved, one
declined and its line locked), then `cdr_billing_monthly`, which bills the other calls and
settles the prepaid ones against their debits (nothing debited twice), and writes and mails
the itemised statements of two customers (C1001 as PDF, C1002 as a portal link; the demo's
config is the shipped one with a `statements:` section, .demo/pipeline.yaml). Prints the
billing lines, the counts, the prepaid accounts and where the statements are. Everything
lives under .demo/ and .airflow/.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cdr_billing.config import CONFIG_ENV, STABLE_SECONDS_ENV
from cdr_devkit.airflow_env import PROJECT_ROOT, airflow_settings, migrate
from cdr_devkit.payment_gateway import PaymentGatewayServer
from cdr_devkit.sample_data import generate_month
from cdr_devkit.services import (
    LocalServices,
    SwitchServer,
    connection_env,
    smtp_connection,
    stop_on_sigterm,
)

DEMO_DIR = PROJECT_ROOT / ".demo"
AIRFLOW_HOME = PROJECT_ROOT / ".airflow"
PREPAID_DAG_ID = "cdr_prepaid_balances"
OPERATOR = "demo"
# Carrier users of the sample month made prepaid, and how the local gateway answers a charge of
# their payment method (its reference names the behaviour: cdr_devkit.payment_gateway).
PREPAID_ACCOUNTS = {"SUB-00060": "approve", "SUB-00061": "decline", "SUB-00062": "approve"}
PREPAID_LEVELS = {  # EUR, as the command takes them
    "--low-balance": "5.00",
    "--topup": "40.00",
    "--lock-level": "0.00",
    "--unlock-level": "2.00",
}
PREPAID_RUN_DAY = 20  # the prepaid run's logical date: noon of this day of the month
# The customers whose users get statements in the demo, and the portal their links point at
DEMO_STATEMENTS = {
    "C1001": {"mask_digits": 3, "deliver": "pdf"},
    "C1002": {"mask_digits": 2, "deliver": "link"},
}
DEMO_PORTAL_URL = "http://127.0.0.1:8090"


def write_demo_config() -> Path:
    """The shipped pipeline.yaml with statements for the demo's customers, as .demo/pipeline.yaml
    (its profiles still the shipped ones)."""
    import yaml

    shipped = PROJECT_ROOT / "include/config"
    raw = yaml.safe_load((shipped / "pipeline.yaml").read_text(encoding="utf-8"))
    raw["profiles_file"] = str(shipped / raw.get("profiles_file", "profiles.yaml"))
    raw["statements"] = {
        **(raw.get("statements") or {}),
        "customers": DEMO_STATEMENTS,
        "portal_url": DEMO_PORTAL_URL,
    }
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    path = DEMO_DIR / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def print_statements(run_id: str) -> None:
    """Where the month's statements are and how their mails went."""
    from sqlalchemy import text

    from cdr_billing import database
    from cdr_billing.config import load_config

    config = load_config()
    engine = database.billing_engine(config.billing.connection)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.customer_id, COUNT(*), MIN(d.pdf_path), "
                "SUM(CASE WHEN m.status = 'sent' THEN 1 ELSE 0 END) "
                "FROM statement s JOIN billing_batch b ON b.batch_id = s.batch_id "
                "LEFT JOIN statement_document d ON d.statement_id = s.statement_id "
                "LEFT JOIN statement_delivery m ON m.statement_id = s.statement_id "
                "WHERE b.run_id = :run GROUP BY s.customer_id ORDER BY s.customer_id"
            ),
            {"run": run_id},
        ).all()
    print("\nStatements (HTML and PDF per user; the Billing page: month > The users' statements):")
    for customer, count, pdf, sent in rows:
        how = DEMO_STATEMENTS[customer]["deliver"]
        print(f"  {customer}: {count} statements, {sent or 0} mailed ({how})")
        if pdf:
            print(f"    in {Path(pdf).parent}")


@dataclass
class DemoServices:
    """The running servers' Airflow connections (as environment variables), and the gateway
    and switch whose records the prepaid summary shows."""

    env: dict[str, str]
    gateway: PaymentGatewayServer
    switch: SwitchServer = field(repr=False)


def start_demo_services(services: LocalServices, month: str) -> DemoServices:
    """Generate the month, start the servers; return their connections as env vars (and
    sftp.stable_seconds 0: the generated files are complete before the servers start)."""
    from cdr_billing.months import BillingMonth

    sftp_root = DEMO_DIR / "sftp"
    shutil.rmtree(sftp_root, ignore_errors=True)
    generate_month(sftp_root, BillingMonth.parse(month))
    primary = services.start_sftp("sftp_primary", sftp_root)
    secondary = services.start_sftp("sftp_secondary", sftp_root)
    smtp = services.start_smtp(DEMO_DIR / "mail")
    gateway = services.start_payment_gateway("payment_gateway")
    switch = services.start_switch("prepaid_switch", secret=secrets.token_urlsafe(24))
    connections = {
        "cdr_sftp_primary": primary.connection(services.client_key),
        "cdr_sftp_secondary": secondary.connection(services.client_key),
        "billing_db": {"conn_type": "sqlite", "host": str(DEMO_DIR / "billing.sqlite")},
        "smtp_default": smtp_connection(smtp.port),
        "payment_gateway": gateway.connection(),
        "prepaid_switch": switch.connection(),
    }
    env = {**connection_env(connections), STABLE_SECONDS_ENV: "0"}
    return DemoServices(env, gateway, switch)


def add_prepaid_accounts() -> None:
    """Upgrade the billing database and make the demo's carrier accounts prepaid with the
    accounts command; an account that is prepaid already (an earlier demo) is left as it is."""
    from cdr_billing import database
    from cdr_billing.config import load_config
    from cdr_billing.migrations import upgrade
    from cdr_billing.prepaid import accounts

    connection = load_config().billing.connection
    engine = database.billing_engine(connection)
    upgrade(engine)
    with engine.connect() as conn:
        existing = {row["account_id"] for row in accounts.list_accounts(conn)}
    for account, payment_method in PREPAID_ACCOUNTS.items():
        if account in existing:
            print(f"{account} is a prepaid account already (an earlier demo): kept as it is")
            continue
        levels = [item for option in PREPAID_LEVELS.items() for item in option]
        command = ["--conn", connection, "add", account, "--currency", "EUR", *levels]
        command += ["--payment-method", payment_method, "--operator", OPERATOR]
        if accounts.main(command) != 0:
            raise SystemExit(f"could not make {account} prepaid")


def prepaid_run_date(month: str) -> datetime:
    """Noon of PREPAID_RUN_DAY of the month, in the billing timezone."""
    import pendulum

    from cdr_billing.config import load_config
    from cdr_billing.months import BillingMonth

    parsed = BillingMonth.parse(month)
    zone = load_config().billing.timezone
    return pendulum.datetime(parsed.year, parsed.month, PREPAID_RUN_DAY, 12, tz=zone)


def print_prepaid_summary(demo: DemoServices) -> None:
    """Each demo account's balance and line, the switch's events and the gateway's charges."""
    from sqlalchemy import text

    from cdr_billing import database
    from cdr_billing.config import load_config
    from cdr_billing.prepaid.accounts import format_amount

    engine = database.billing_engine(load_config().billing.connection)
    with engine.connect() as conn:
        lines = conn.execute(
            text("SELECT account_id, locked, balance_minor, currency FROM prepaid_line_state")
        ).mappings()
        state = {row["account_id"]: row for row in lines}
        entries = conn.execute(
            text("SELECT account_id, kind, COUNT(*) FROM balance_entry GROUP BY account_id, kind")
        ).all()
    print("\nPrepaid accounts (view prepaid_line_state; ledger entries by kind):")
    for account, method in PREPAID_ACCOUNTS.items():
        row = state.get(account)
        if row is None:
            print(f"  {account}: not an active prepaid account")
            continue
        kinds = ", ".join(f"{n} {kind}" for who, kind, n in sorted(entries) if who == account)
        print(
            f"  {account} (payment method {method!r}): balance "
            f"{format_amount(row['balance_minor'], row['currency'])}, line "
            f"{'LOCKED' if row['locked'] else 'unlocked'}; entries: {kinds or 'none'}"
        )
    events = demo.switch.events()
    print(f"Switch webhook: {len(events)} events accepted ({demo.switch.events_path})")
    for event in events:
        print(f"  event {event['event_id']}: {event['action']} {event['account_id']}")
    charges = demo.gateway.charges()
    print(f"Payment gateway: {len(charges)} charge requests answered ({demo.gateway.state_dir})")
    for charge in charges:
        print(
            f"  {charge.account_id}: {format_amount(charge.amount_minor, 'EUR')} "
            f"{charge.status}{'' if charge.charged else ' (nothing charged)'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--month", default="2026-10", help="billing month to generate and bill (YYYY-MM)"
    )
    args = parser.parse_args()
    stop_on_sigterm()
    os.environ.update(airflow_settings(AIRFLOW_HOME, log_level="WARNING"))
    print(
        f"Billing sample month {args.month}: migrating {AIRFLOW_HOME}, starting the SFTP, SMTP, "
        "payment gateway and switch servers, running the prepaid DAG once, then the monthly DAG"
    )
    migrate(AIRFLOW_HOME)
    os.environ[CONFIG_ENV] = str(write_demo_config())
    with LocalServices(DEMO_DIR / "services") as services:
        demo = start_demo_services(services, args.month)
        os.environ.update(demo.env)
        from cdr_devkit.airflow_env import load_dag, run_dag

        add_prepaid_accounts()
        prepaid_run = run_dag(load_dag(PREPAID_DAG_ID), logical_date=prepaid_run_date(args.month))
        print(f"\nPrepaid DAG run {prepaid_run.run_id}: {prepaid_run.state}")
        if prepaid_run.state != "success":
            print(f"the run did not succeed; task logs are under {AIRFLOW_HOME / 'logs'}")
            return 1
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
        print_prepaid_summary(demo)
        print_statements(dag_run.run_id)
    print(f"Billing database: {DEMO_DIR / 'billing.sqlite'}; mails: {DEMO_DIR / 'mail'}")
    print(f"Run files, Great Expectations Data Docs and the report: {work_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
