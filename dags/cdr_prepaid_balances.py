"""
### Prepaid balances, every few minutes

Debits the calls of prepaid accounts to their balances as the providers deliver CDR files,
with the monthly run's own fetch, checks and rating (the same tariff versions):

upgrade the billing database → fetch the month's files, keep those no prepaid run has debited
→ store the tariff → validate each new file → drop duplicates, combine partial calls → price
each file, keep the prepaid accounts' calls → debit the balances (each call once) → top up low
balances through the payment gateway, lock and unlock lines → tell the switch (webhooks, in
order per account) → measure the money at risk until the next run.

**How often:** `prepaid.interval_minutes` in `include/config/pipeline.yaml` (default 30), chosen
with the exposure figures of each run (docs/prepaid.md). A run with no new file still tops up,
locks, unlocks and retries the switch's webhooks.

**Re-running is safe.** A call is debited once whatever is retried or re-run; a re-rated call is
reversed and debited again, never edited. The monthly run settles the month.

**Accounts** are managed with `python -m cdr_billing.prepaid.accounts` (docs/prepaid.md).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DeltaDataIntervalTimetable, dag, get_current_context

from cdr_billing.config import load_config
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
from cdr_billing.dag_tasks import ASK_DEVELOPERS, shared_tasks, side_by_side
from cdr_billing.taskflow import failure_mail, pipeline_task

CONFIG = load_config()
SIDE_BY_SIDE = side_by_side(CONFIG)
SHARED = shared_tasks(CONFIG)

SERVERS_DOWN = (
    "Check that the SFTP servers answer (the error names each one); the next run takes the "
    "files this one could not."
)
# Credit control and the switch run whatever happened to the files (none new, a server down).
EVERY_RUN = {"trigger_rule": "all_done"}
AFTER_A_FAILURE = {"trigger_rule": "one_failed"}


@pipeline_task(CONFIG, ASK_DEVELOPERS)
def start_prepaid_run() -> Run:
    """The run's month (that of its data interval's start) and work directory."""
    from cdr_billing.tasks import run

    context = get_current_context()
    return run.start_run(None, context.get("data_interval_start"), context["run_id"], CONFIG)


@pipeline_task(
    CONFIG,
    "Check that the SFTP servers answer and that their host keys are the pinned ones; the "
    "month's tariff must be on the server.",
)
def fetch_new_files(run: Run) -> FetchedMonth:
    """Fetch the month's files (primary, then secondary) and keep the CDR files whose content
    no prepaid run has debited."""
    from cdr_billing.tasks import prepaid

    return prepaid.fetch_new_files(run, CONFIG)


@pipeline_task(
    CONFIG,
    "Check the tariff file named in the log (python -m cdr_billing.tariff load FILE reports the "
    "bad line).",
)
def load_tariff(fetched: FetchedMonth) -> int:
    """Store the month's tariff as a version (the monthly run rates with the same versions)."""
    from cdr_billing.tasks import references

    return references.load_tariff(fetched, CONFIG)


@pipeline_task(CONFIG, ASK_DEVELOPERS, mapped_name="file", **SIDE_BY_SIDE)
def rate_prepaid_file(deduped: DedupedMonth, file: ReconciledFile) -> RatedPrepaidFile:
    """One task per new file: price its calls as the monthly run does and keep those of
    prepaid accounts."""
    from cdr_billing.tasks import prepaid

    return prepaid.rate_prepaid_file(deduped.run, file, CONFIG)


@pipeline_task(
    CONFIG,
    "Check that the billing database is reachable; nothing was debited (a retry debits each "
    "call once).",
)
def debit_balances(deduped: DedupedMonth, rated: list[RatedPrepaidFile]) -> LedgerPostings:
    """Debit the prepaid calls to their balances, each call once (a re-rated call is reversed
    and debited again), and record the files as debited, in one transaction."""
    from cdr_billing.tasks import prepaid

    return prepaid.debit_balances(deduped, rated, CONFIG)


@pipeline_task(
    CONFIG,
    "Check the payment gateway (connection payment_gateway); a top-up that was sent is sent "
    "again with the same idempotency key, never charged twice.",
    **EVERY_RUN,
)
def control_credit() -> CreditControl:
    """Request top-ups of low balances (one in flight per account, a hold-off after a decline),
    lock the lines out of credit and unlock those topped up; mail declines and lock changes."""
    from cdr_billing.tasks import prepaid

    return prepaid.control_credit(CONFIG)


@pipeline_task(
    CONFIG,
    "Check the switch's endpoint (connection prepaid_switch); undelivered events wait in the "
    "outbox and are sent in order by the next run.",
    **EVERY_RUN,
)
def deliver_switch_events() -> SwitchDeliveries:
    """Send the switch each lock and unlock it has not accepted, in order per account, signed;
    a refused event is retried with backoff and mailed."""
    from cdr_billing.tasks import prepaid

    return prepaid.deliver_switch_events(CONFIG)


@pipeline_task(CONFIG, ASK_DEVELOPERS, **EVERY_RUN)
def measure_exposure(run: Run) -> PrepaidExposure:
    """The money at risk per account until the next run (2 x concurrent calls x longest call x
    average price per minute, and calls not debited); mail the accounts above the limit."""
    from cdr_billing.tasks import prepaid

    return prepaid.measure_exposure(run, CONFIG)


@pipeline_task(
    CONFIG, "Read the mail of the task that failed; the next run retries.", **AFTER_A_FAILURE
)
def mark_run_failed() -> None:
    """Runs only when another task failed, and fails: credit control and the switch run after
    a failure, so without it the run would show success."""
    from cdr_billing.tasks import prepaid

    prepaid.fail_the_run()


@dag(
    dag_id="cdr_prepaid_balances",
    schedule=DeltaDataIntervalTimetable(timedelta(minutes=CONFIG.prepaid.interval_minutes)),
    start_date=pendulum.datetime(2026, 1, 1, tz=CONFIG.billing.timezone),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["billing", "cdr", "prepaid"],
    default_args={
        "owner": "billing-ops",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "on_failure_callback": [failure_mail(CONFIG, SERVERS_DOWN)],
    },
)
def cdr_prepaid_balances():
    upgrade = SHARED.upgrade_billing_db()
    run = start_prepaid_run()
    upgrade >> run
    fetched = fetch_new_files(run)
    tariff = load_tariff(fetched)
    files = SHARED.list_cdr_files(fetched)
    validated = SHARED.validate_cdr_file.partial(fetched=fetched).expand(cdr_file=files)
    deduped = SHARED.dedupe_calls(fetched, validated)
    parts = SHARED.list_file_parts(deduped)
    rated = rate_prepaid_file.partial(deduped=deduped).expand(file=parts)
    tariff >> rated
    debits = debit_balances(deduped, rated)
    credit = control_credit()
    debits >> credit
    ends = [deliver_switch_events(), measure_exposure(run)]
    credit >> ends
    tasks = [upgrade, run, fetched, tariff, files, validated, deduped, parts, rated, debits]
    [*tasks, credit, *ends] >> mark_run_failed()


cdr_prepaid_balances()
