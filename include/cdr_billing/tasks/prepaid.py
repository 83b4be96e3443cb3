"""The prepaid DAG's task bodies (cdr_prepaid_balances): the month's CDR files delivered since the
last run, rated by the monthly run's functions with the same tariff versions, debited to the
prepaid balances; then top-ups, locks and unlocks, the switch told, the money at risk measured.

A file's content is taken once (prepaid_file, written in the transaction of its debits); a
call is debited once whatever is retried (the ledger's keys). The entitlement snapshot is not
touched: a prepaid run must not pin the month's snapshot before the monthly run does.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from cdr_billing import database, workdir
from cdr_billing.acquire import FetchedFile
from cdr_billing.config import PipelineConfig
from cdr_billing.contracts import (
    CreditControl,
    DedupedMonth,
    FetchedMonth,
    LedgerPostings,
    PrepaidExposure,
    RatedPrepaidFile,
    ReconciledFile,
    Run,
    SwitchDeliveries,
)
from cdr_billing.months import BillingMonth
from cdr_billing.prepaid import balances, calls, credit_control, exposure, mails, switch
from cdr_billing.prepaid.gateway import GatewaySettings, HttpsGateway
from cdr_billing.prepaid.topups import TopupSettings
from cdr_billing.privacy import shown_id
from cdr_billing.schema import prepaid_file, switch_outbox
from cdr_billing.tasks import bill, fetch
from cdr_billing.tasks.prepaid_settlement import postings_of
from cdr_billing.tasks.run import send

log = logging.getLogger(__name__)

UNDEBITED = "undebited"


def fetch_new_files(run: Run, config: PipelineConfig) -> FetchedMonth:
    """Fetch the month's files as the monthly run does (a source with nothing yet is no error)
    and keep the CDR files whose content no prepaid run has debited, with the references."""
    fetched = fetch.fetch_cdr_files(run, config, every_source=False)
    engine = database.billing_engine(config.billing.connection)
    with engine.connect() as conn:
        seen = _debited_files(conn, run.billing_month)
    new = tuple(f for f in fetched.files if f.role != "cdr" or _key(f) not in seen)
    log.info(
        "%d CDR files of %s not debited yet (of %d)",
        sum(f.role == "cdr" for f in new),
        run.billing_month,
        len(fetched.of_role("cdr")),
    )
    return replace(fetched, files=new)


def _key(file: FetchedFile | RatedPrepaidFile) -> tuple[str, str, str]:
    return (file.source, file.name, file.sha256)


def _debited_files(conn: Connection, billing_month: str) -> set[tuple[str, str, str]]:
    columns = (prepaid_file.c.source, prepaid_file.c.name, prepaid_file.c.sha256)
    query = select(*columns).where(prepaid_file.c.billing_month == billing_month)
    return {tuple(row) for row in conn.execute(query)}


def rate_prepaid_file(run: Run, file: ReconciledFile, config: PipelineConfig) -> RatedPrepaidFile:
    """Price one file's calls as bill_cdr_file does and keep those of prepaid accounts."""
    engine = database.billing_engine(config.billing.connection)
    priced, counts = bill.rate_file(run, file, engine, config)
    with engine.connect() as conn:
        accounts = calls.active_accounts(conn)
    prepaid = calls.split_prepaid(priced, accounts).prepaid
    workdir.write_part(run, file.dir, calls.PREPAID_PART, prepaid)
    log.info("%s: %d priced calls, %d of prepaid accounts", file.name, len(priced), len(prepaid))
    return RatedPrepaidFile(
        name=file.name,
        source=file.source,
        sha256=file.sha256,
        dir=file.dir,
        priced=len(priced),
        prepaid=len(prepaid),
        unbillable=counts.unbillable,
        not_billable=counts.not_billable,
    )


def debit_balances(
    deduped: DedupedMonth, rated: list[RatedPrepaidFile], config: PipelineConfig
) -> LedgerPostings:
    """Debit the run's prepaid calls and record its files as debited, in one transaction."""
    run = deduped.run
    prepaid = workdir.read_parts(run, [f.dir for f in rated], calls.PREPAID_PART)
    engine = database.billing_engine(config.billing.connection)
    with engine.begin() as conn:
        summary = balances.debit_calls(conn, prepaid, run.run_id, new_calls_only=True)
        _record_files(conn, run, rated)
    refused = {c.call_key for c in summary.refused_calls}
    workdir.write(run, UNDEBITED, prepaid[prepaid["call_key"].isin(refused)])
    for call in summary.refused_calls:
        shown = shown_id(call.account_id)
        log.warning("not debited: %s of %s: %s", call.call_key, shown, call.reason)
    log.info(
        "%d calls debited, %d unchanged, %d delivered again (first delivery kept), %d refused; "
        "%d balances moved",
        summary.debited,
        summary.unchanged,
        summary.redelivered,
        summary.refused,
        len(summary.balances),
    )
    return postings_of(summary)


def _record_files(conn: Connection, run: Run, rated: list[RatedPrepaidFile]) -> None:
    seen = _debited_files(conn, run.billing_month)
    now = datetime.now(UTC)
    rows = [
        {
            "source": f.source,
            "name": f.name,
            "sha256": f.sha256,
            "billing_month": run.billing_month,
            "run_id": run.run_id,
            "calls": f.prepaid,
            "debited_at": now,
        }
        for f in rated
        if _key(f) not in seen
    ]
    if rows:
        conn.execute(insert(prepaid_file), rows)


def control_credit(config: PipelineConfig, now: datetime | None = None) -> CreditControl:
    """Top up the low balances, lock and unlock lines; mail the declines and the changes."""
    engine = database.billing_engine(config.billing.connection)
    with engine.connect() as conn:
        if not calls.active_accounts(conn):
            return CreditControl(0, 0, 0, 0, 0)
    settings = config.prepaid
    gateway = HttpsGateway.from_connection(
        GatewaySettings(
            settings.gateway_connection,
            settings.gateway_connect_timeout_seconds,
            settings.gateway_read_timeout_seconds,
        )
    )
    summary = credit_control.run_credit_control(
        engine, gateway, TopupSettings(settings.topup_holdoff_minutes), now or datetime.now(UTC)
    )
    topups = summary.topups
    if topups.declined or topups.unknown:
        send(config, mails.topup_problems_alert(topups.declined, topups.unknown))
    if summary.lock_changes:
        send(config, mails.lock_changes_alert(summary.lock_changes))
    return CreditControl(
        approved=len(topups.approved),
        declined=len(topups.declined),
        unknown=len(topups.unknown),
        locked=len(summary.locked),
        unlocked=len(summary.unlocked),
    )


def deliver_switch_events(config: PipelineConfig, now: datetime | None = None) -> SwitchDeliveries:
    """Send the switch the lock and unlock events it has not accepted yet, in order per
    account; mail the ones it refuses (they are retried with backoff)."""
    engine = database.billing_engine(config.billing.connection)
    with engine.connect() as conn:
        pending = conn.execute(
            select(switch_outbox.c.outbox_id).where(switch_outbox.c.delivered_at.is_(None))
        ).first()
    if pending is None:
        return SwitchDeliveries(0, 0, 0)
    sender = switch.HttpSwitchSender.from_connection(config.prepaid.switch_connection)
    outcome = switch.deliver_pending(engine, sender, now or datetime.now(UTC))
    if outcome.failures:
        send(config, mails.webhook_failing_alert(outcome.failures, outcome.waiting))
    return SwitchDeliveries(outcome.delivered, outcome.failed, outcome.waiting)


def measure_exposure(
    run: Run, config: PipelineConfig, now: datetime | None = None
) -> PrepaidExposure:
    """The money at risk per account and currency, stored per run; mail the accounts above the
    limit."""
    engine = database.billing_engine(config.billing.connection)
    bounds = BillingMonth.parse(run.billing_month).bounds(config.billing.timezone)
    report = exposure.run_exposure(
        engine,
        run.run_id,
        bounds[0],
        bounds[1],
        _undebited(run),
        exposure.configured(config.prepaid),
        now or datetime.now(UTC),
    )
    if report.above_limit:
        send(config, mails.exposure_alert(report))
    return PrepaidExposure(
        bound_minor={c: t.bound_minor for c, t in report.totals.items()},
        undebited_minor={c: t.undebited_minor for c, t in report.totals.items()},
        above_limit=len(report.above_limit),
    )


class RunHadFailuresError(AirflowFailException):
    """A task of the run failed (its own mail said which and why): the run must show failed,
    though credit control and the switch ran after it."""

    alert_mailed = True


def fail_the_run() -> None:
    """Raised by the run's last task, which runs only when another task failed."""
    raise RunHadFailuresError("a task of this prepaid run failed: see its log and mail")


def _undebited(run: Run) -> pd.DataFrame:
    """The run's prepaid calls the ledger refused (none when the run debited nothing)."""
    try:
        return workdir.read(run, UNDEBITED)
    except FileNotFoundError:
        return pd.DataFrame(
            {"account_id": pd.Series(dtype=str), "cost_minor": pd.Series(dtype=int)}
        )
