"""
### CDR billing, monthly

Turns the providers' call detail records of one **billing month** into billing lines:

wait for the files → fetch over SFTP (primary, then secondary) → validate (Great Expectations) → rate (tariff)
→ attribute (entitlement snapshot) → aggregate per customer id and sequence number
→ load into the billing database → month report.

**Which month.** The scheduled run for the interval starting on the 1st of month M bills
month M (it runs once M is over). A manual run bills the last complete month, or the month
given in the `billing_month` param (`YYYY-MM`). Backfill a range with
`airflow backfill create --dag-id cdr_billing_monthly --from-date 2026-01-01 --to-date 2026-03-31`.

**Re-running is safe.** Every run loads a new batch that replaces the month's current one
in a single transaction; the old batch is kept as superseded.

**On failure** every task mails the alert recipients of `include/config/pipeline.yaml`.
Intermediate data lives as Parquet files in the run's work directory (see the task logs).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, PokeReturnValue, dag, get_current_context, task

from cdr_billing.alerts import TaskFailureMail
from cdr_billing.config import load_config

CONFIG = load_config()

failure_mail = TaskFailureMail(
    to=list(CONFIG.alert_to),
    subject="[CDR billing] {{ ti.task_id }} failed ({{ dag.dag_id }}, {{ run_id }})",
    html_content=(
        "<p>Task <b>{{ ti.task_id }}</b> of <b>{{ dag.dag_id }}</b> failed on try {{ ti.try_number }}.</p>"
        "<p>Run: {{ run_id }}<br>Billing month param: {{ params.billing_month or 'from the data interval' }}</p>"
        "<p>Error: {{ exception }}</p>"
        '<p><a href="{{ ti.log_url }}">Task log</a>. Fix the cause, then clear the task in the Airflow UI '
        "to re-run it; re-running a month never bills it twice.</p>"
    ),
)


def stage_task(task_id: str, stage: str, doc: str):
    """A task that runs one function of `cdr_billing.stages` on the previous task's metadata."""

    def run_stage(meta: dict) -> dict:
        from cdr_billing import stages

        return getattr(stages, stage)(meta)

    return task(task_id=task_id, doc_md=doc)(run_stage)


# (task id, function in cdr_billing.stages, what the operator reads in the task's docs)
STAGES = [
    (
        "fetch_cdr_files",
        "fetch",
        "Download the month's CDR files, tariff and entitlement snapshot from the first SFTP server that delivers "
        "them (primary, then secondary); mail each failover; record every file in the ledger.",
    ),
    (
        "validate_cdrs",
        "validate_files",
        "Read every file, quarantine bad rows, drop duplicates, run the Great Expectations suites.",
    ),
    (
        "rate_calls",
        "rate_calls",
        "Price calls by the provider's cost or the tariff's longest prefix; set aside unbillable calls.",
    ),
    (
        "attribute_calls",
        "attribute_calls",
        "Join calls to the entitlement snapshot; unknown or not-entitled accounts go to suspense.",
    ),
    ("aggregate_lines", "aggregate_lines", "Sum calls per customer id and sequence number; prove rows and money reconcile."),
    ("load_billing", "load_billing", "Load the lines as the month's new current batch in one transaction."),
    ("report_month", "report_month", "Re-read the loaded lines, check them and write the month report."),
]


@dag(
    dag_id="cdr_billing_monthly",
    schedule=CronDataIntervalTimetable("0 0 1 * *", timezone=CONFIG.billing.timezone),
    start_date=pendulum.datetime(2026, 1, 1, tz=CONFIG.billing.timezone),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["billing", "cdr"],
    default_args={
        "owner": "billing-ops",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "on_failure_callback": [failure_mail],
    },
    params={
        "billing_month": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
            title="Billing month",
            description="YYYY-MM. Leave empty to bill the month of the run's data interval.",
        ),
        "refresh_entitlements": Param(
            False,
            type="boolean",
            title="Take a fresh entitlement snapshot",
            description="Off: a re-run bills with the snapshot the month was first billed with (reproducible). "
            "On: capture a new one, e.g. after an account was fixed.",
        ),
    },
)
def cdr_billing_monthly():
    @task.sensor(
        mode="reschedule",
        poke_interval=timedelta(minutes=CONFIG.poke_interval_minutes),
        timeout=timedelta(days=CONFIG.files_deadline_days + 31),
        doc_md="Wait, without holding a worker slot, until every CDR source has a file for the billing month; "
        "past the deadline it fails with 'files for month M have not arrived'.",
    )
    def wait_for_cdr_files() -> PokeReturnValue:
        from cdr_billing import stages

        context = get_current_context()
        params = context["params"]
        meta = stages.start_run(
            params.get("billing_month"),
            context.get("data_interval_start"),
            context["run_id"],
            clear_number=context["dag_run"].clear_number or 0,
            refresh_entitlements=bool(params.get("refresh_entitlements")),
        )
        return PokeReturnValue(is_done=stages.files_arrived(meta), xcom_value=meta)

    meta = wait_for_cdr_files()
    for task_id, stage, doc in STAGES:
        meta = stage_task(task_id, stage, doc)(meta)


cdr_billing_monthly()
