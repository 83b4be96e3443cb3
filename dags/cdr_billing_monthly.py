"""
### CDR billing, monthly

Turns the providers' call detail records of one **billing month** into billing lines:

upgrade the billing database → wait for the files → fetch over SFTP (primary, then
secondary) → validate each file (row checks, Great Expectations) while the tariff and the
entitlement snapshot are loaded → drop duplicates and combine partial calls → bill each file
(price, set prepaid accounts' calls aside, attribute, sum per user) → aggregate per customer id
and sequence number → load into the billing database, beside it settle the prepaid calls
against the balances → month report.

    … → bill_cdr_file (per file) → aggregate_lines ─┬─▶ load_billing ───┬─▶ report_month
                                                    └─▶ settle_prepaid ─┘
                              load_billing ─▶ render_statements ─▶ deliver_statements

**Statements.** For the customers the config's `statements:` section lists, the load stores
each user's itemised statement with the batch (docs/statements.md); `render_statements`
writes them as HTML and PDF into the archive, `deliver_statements` mails them, each once.

**Prepaid accounts.** Calls of active prepaid accounts are not billed on the post-paid lines
(their row outcome is `prepaid`); `settle_prepaid` debits them to the balances, each call once:
a re-run after a tariff fix posts a reversal and a new debit per changed call, never an edit.

**Which month.** The scheduled run for the interval starting on the 1st of month M bills
month M (it runs once M is over). A manual run bills the last complete month, or the month
picked in the `billing_month` param. Backfill a range with
`airflow backfill create --dag-id cdr_billing_monthly --from-date 2026-01-01 --to-date 2026-03-31`:
it bills the months whose 1st lies in the range, the dates read as typed in any timezone.

**Re-running is safe.** Every run loads a new batch that replaces the month's current one
in a single transaction; the old batch is kept as superseded.

**On failure** every task mails the alert recipients of `include/config/pipeline.yaml`.
Intermediate data lives in the run's work directory (see the task logs).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, PokeReturnValue, dag, get_current_context

from cdr_billing.config import load_config
from cdr_billing.contracts import (
    BilledFile,
    DedupedMonth,
    DeliveredStatements,
    FetchedMonth,
    LoadedBatch,
    MonthLines,
    MonthReport,
    PrepaidSettlement,
    ReconciledFile,
    References,
    RenderedStatements,
    Run,
)
from cdr_billing.dag_tasks import shared_tasks, side_by_side
from cdr_billing.months import BillingMonth
from cdr_billing.taskflow import failure_mail, pipeline_task
from cdr_billing.timetables import BillingMonthTimetable, billing_month_param

CONFIG = load_config()
SIDE_BY_SIDE = side_by_side(CONFIG)
SHARED = shared_tasks(CONFIG)

FIRST_MONTH = BillingMonth(2026, 1)  # the DAG's start_date: the first month it bills

SERVERS_DOWN = (
    "Check that the SFTP servers answer (the error names each one) and whether the provider has "
    "delivered the month's files; the task log lists the sources missing."
)


@pipeline_task(
    CONFIG,
    SERVERS_DOWN,
    sensor=True,
    mode="reschedule",
    poke_interval=timedelta(minutes=CONFIG.poke_interval_minutes),
    timeout=timedelta(days=CONFIG.files_deadline_days + 31),
)
def wait_for_cdr_files() -> PokeReturnValue:
    """Wait, without holding a worker slot, until every CDR source has a file for the billing
    month; past the deadline it fails with 'files for month M have not arrived'."""
    from cdr_billing.tasks import fetch, run

    context = get_current_context()
    params = context["params"]
    billing_run = run.start_run(
        params.get("billing_month"),
        context.get("data_interval_start"),
        context["run_id"],
        CONFIG,
        refresh_entitlements=bool(params.get("refresh_entitlements")),
        clear_number=context["dag_run"].clear_number or 0,
        release_held_files=params.get("release_held_files"),
    )
    return PokeReturnValue(fetch.files_arrived(billing_run, CONFIG), billing_run)


@pipeline_task(
    CONFIG,
    "Check that the SFTP servers answer and that their host keys are the pinned ones (a changed "
    "key may be an attack: confirm the fingerprint with the provider before re-pinning it in "
    "the connection).",
)
def fetch_cdr_files(run: Run) -> FetchedMonth:
    """Download the month's CDR files, tariff and entitlement snapshots from the first SFTP
    server that delivers them (primary, then secondary); mail each failover; record every file
    in the ledger."""
    from cdr_billing.tasks import fetch

    return fetch.fetch_cdr_files(run, CONFIG)


@pipeline_task(
    CONFIG,
    "Check the tariff file named in the log (python -m cdr_billing.tariff load FILE reports the "
    "bad line) and the entitlement snapshot (file or the entitlements_db query).",
)
def load_references(fetched: FetchedMonth) -> References:
    """Beside the files' validation: store the month's tariff as a version and pin the month's
    entitlement snapshot (the one it was first billed with, or a fresh one when the run asks)."""
    from cdr_billing.tasks import references

    return references.load_references(fetched, CONFIG)


@pipeline_task(
    CONFIG,
    "Send the log to the pipeline's developers; the tariff and the snapshot were checked by "
    "load_references.",
    mapped_name="file",
    **SIDE_BY_SIDE,
)
def bill_cdr_file(
    deduped: DedupedMonth, file: ReconciledFile, references: References
) -> BilledFile:
    """One task per CDR file: price calls by the provider's cost or the tariff's longest prefix
    (unbillable calls set aside); set the active prepaid accounts' calls aside for
    settle_prepaid; join the others to the entitlement snapshot valid at each call (unknown or
    not-entitled accounts go to suspense); sum them per user."""
    from cdr_billing.tasks import bill

    return bill.bill_cdr_file(deduped.run, file, references, CONFIG)


@pipeline_task(
    CONFIG,
    "Rows or money do not add up: do not bill the month; send the log to the pipeline's "
    "developers.",
)
def aggregate_lines(
    deduped: DedupedMonth, billed: list[BilledFile], references: References
) -> MonthLines:
    """Sum the files' calls per user, then per customer id and sequence number; prove rows and
    money reconcile."""
    from cdr_billing.tasks import aggregate

    return aggregate.aggregate_lines(deduped, billed, references)


@pipeline_task(
    CONFIG,
    "Check that the billing database (connection billing_db) is reachable; the month's old "
    "batch stays current.",
)
def load_billing(lines: MonthLines) -> LoadedBatch:
    """Load the month's new current batch in one transaction."""
    from cdr_billing.tasks import load

    return load.load_billing(lines, CONFIG)


@pipeline_task(
    CONFIG,
    "Check that the billing database (connection billing_db) is reachable: the settlement is "
    "one transaction, so nothing was posted, and a retry posts each call once. Refused calls "
    "(another currency than the account's) are listed in the log and the month report: fix the "
    "account, then re-run the month.",
)
def settle_prepaid(lines: MonthLines) -> PrepaidSettlement:
    """Settle the month's prepaid calls against the balances in one transaction: debit the new,
    reverse and debit again the re-rated, reverse the debits of calls no longer prepaid calls
    of the month. After aggregate_lines, so that only a month whose rows reconcile moves
    money; beside load_billing, because the two touch disjoint calls (prepaid calls are not on
    the post-paid lines) and neither needs the other's result."""
    from cdr_billing.tasks import prepaid_settlement

    return prepaid_settlement.settle_prepaid(lines, CONFIG)


@pipeline_task(CONFIG, "Check the SMTP connection and the work directory; the batch is loaded.")
def report_month(loaded: LoadedBatch, settlement: PrepaidSettlement) -> MonthReport:
    """Re-read the loaded lines, check them and write and mail the month report, with the
    prepaid settlement's postings and refused calls."""
    from cdr_billing.tasks import report

    return report.report_month(loaded, CONFIG, settlement)


@pipeline_task(
    CONFIG,
    "Check the archive folder (archive_root) and the log; the batch is loaded, a retry renders "
    "the statements again.",
)
def render_statements(loaded: LoadedBatch) -> RenderedStatements:
    """Render the batch's statements (customers that opt in, statements: in the config) as HTML
    and PDF into the archive."""
    from cdr_billing.tasks import statements

    return statements.render_statements(loaded, CONFIG)


@pipeline_task(
    CONFIG,
    "Check the SMTP connection; mails sent are never sent again, and those the task was "
    "sending when it stopped are listed as unknown on the Billing page (check the mail log).",
    sensor=True,
    mode="reschedule",
    poke_interval=timedelta(minutes=CONFIG.statements.retry_minutes),
    timeout=timedelta(days=1),
)
def deliver_statements(rendered: RenderedStatements) -> PokeReturnValue:
    """Mail each statement once (PDF or portal link, per customer); deferred mails are tried
    again at the next poke, without holding a worker slot, until none waits."""
    from cdr_billing.tasks import statements

    delivered: DeliveredStatements = statements.deliver_statements(rendered, CONFIG)
    return PokeReturnValue(delivered.waiting == 0, delivered)


@dag(
    dag_id="cdr_billing_monthly",
    # Monthly in the billing timezone; backfill ranges read as the dates typed (README).
    schedule=BillingMonthTimetable(CONFIG.billing.timezone),
    start_date=pendulum.datetime(
        FIRST_MONTH.year, FIRST_MONTH.month, 1, tz=CONFIG.billing.timezone
    ),
    catchup=False,
    # Months side by side: a month waiting for its files does not hold back a re-run of
    # another (what conflicts is serialised by database locks, docs/operations.md).
    max_active_runs=CONFIG.months_at_once,
    doc_md=__doc__,
    tags=["billing", "cdr"],
    default_args={
        "owner": "billing-ops",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "on_failure_callback": [failure_mail(CONFIG, SERVERS_DOWN)],
    },
    params={
        "billing_month": billing_month_param(FIRST_MONTH, CONFIG.billing.timezone),
        "refresh_entitlements": Param(
            False,
            type="boolean",
            title="Take a fresh entitlement snapshot",
            description="Off: a re-run bills with the snapshot the month was first billed with "
            "(reproducible). On: capture a new one, e.g. after an account was fixed.",
        ),
        "release_held_files": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Release held files",
            description="Names of held CDR files (delivered again with other content) whose new "
            "content this run bills, once checked with the provider. One name per line.",
        ),
    },
)
def cdr_billing_monthly():
    run = wait_for_cdr_files()
    SHARED.upgrade_billing_db() >> run
    fetched = fetch_cdr_files(run)
    references = load_references(fetched)
    validated = SHARED.validate_cdr_file.partial(fetched=fetched).expand(
        cdr_file=SHARED.list_cdr_files(fetched)
    )
    deduped = SHARED.dedupe_calls(fetched, validated)
    billed = bill_cdr_file.partial(deduped=deduped, references=references).expand(
        file=SHARED.list_file_parts(deduped)
    )
    lines = aggregate_lines(deduped, billed, references)
    loaded = load_billing(lines)
    report_month(loaded, settle_prepaid(lines))
    deliver_statements(render_statements(loaded))


cdr_billing_monthly()
