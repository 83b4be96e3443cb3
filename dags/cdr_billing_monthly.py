"""
### CDR billing, monthly

Turns the providers' call detail records of one **billing month** into billing lines:

wait for the files → fetch over SFTP (primary, then secondary) → validate (Great Expectations), file by file,
while the tariff and the entitlement snapshot are loaded → drop duplicates → rate (tariff) → attribute
(entitlement snapshot) → aggregate per customer id and sequence number → load into the billing database
→ month report.

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
from airflow.sdk import (
    CronDataIntervalTimetable,
    Param,
    PokeReturnValue,
    dag,
    get_current_context,
    task,
)

from cdr_billing.alerts import task_failure_mail
from cdr_billing.config import load_config

CONFIG = load_config()


def failure_mail(next_step: str):
    """The failure mail of a task: month, task, the error in one sentence, log link, next step."""
    return task_failure_mail(
        list(CONFIG.recipients("task_failure")),
        CONFIG.billing.timezone,
        next_step,
        CONFIG.smtp_connection,
    )


def stage_task(task_id: str, **task_args):
    """A task that runs one function of `cdr_billing.stages` on its inputs (metadata from XCom);
    `task_args`: more of the task's arguments."""
    stage, doc, next_step = STAGES[task_id]

    def run_stage(
        meta: dict,
        item: dict | None = None,
        part: dict | None = None,
        validated=None,
        billed=None,
        references=None,
    ) -> dict | list:
        from cdr_billing import stages

        inputs = {
            "item": item,
            "part": part,
            "validated": validated,
            "billed": billed,
            "references": references,
        }
        # `validated` and `billed` collect a mapped task's results: a lazy sequence, read by index
        inputs = {
            name: [value[i] for i in range(len(value))] if name in LISTS else value
            for name, value in inputs.items()
            if value is not None
        }
        return getattr(stages, stage)(meta, **inputs)

    return task(
        task_id=task_id,
        doc_md=f"{doc}\n\n**If it fails:** {next_step}",
        on_failure_callback=[failure_mail(next_step)],
        **task_args,
    )(run_stage)


LISTS = ("validated", "billed")

# task id: (function in cdr_billing.stages, what it does, what the operator does when it fails)
STAGES = {
    "fetch_cdr_files": (
        "fetch",
        "Download the month's CDR files, tariff and entitlement snapshot from the first SFTP server that delivers "
        "them (primary, then secondary); mail each failover; record every file in the ledger.",
        "Check that the SFTP servers answer and that their host keys are the pinned ones (a changed key may be an "
        "attack: confirm the fingerprint with the provider before re-pinning it in the connection).",
    ),
    "load_references": (
        "load_references",
        "Beside the files' validation: store the month's tariff as a version and pin the month's entitlement snapshot "
        "(the one it was first billed with, or a fresh one when the run asks for it).",
        "Check the tariff file named in the log (python -m cdr_billing.tariff load FILE reports the bad line) and the "
        "entitlement snapshot (file or the entitlements_db query).",
    ),
    "list_cdr_files": (
        "cdr_files",
        "The month's CDR files, which validate_cdr_file is mapped over (one task per file).",
        "Send the log to the pipeline's developers.",
    ),
    "validate_cdr_file": (
        "validate_file",
        "One task per CDR file: read it, quarantine bad rows, drop duplicates inside it, run its Great Expectations suite.",
        "Read the validation mail and the quarantined_row table; ask the provider to redeliver the file, or fix the "
        "source profile in include/config/profiles.yaml if the provider changed the format.",
    ),
    "dedupe_calls": (
        "dedupe_calls",
        "Drop calls delivered again in a later file of the month; reconcile each file's rows in the ledger.",
        "Rows of a file do not add up: send the log to the pipeline's developers.",
    ),
    "list_file_parts": (
        "file_parts",
        "The files' intermediate results, which bill_cdr_file is mapped over (one task per file).",
        "Send the log to the pipeline's developers.",
    ),
    "bill_cdr_file": (
        "bill_file",
        "One task per CDR file: price calls by the provider's cost or the tariff's longest prefix (unbillable calls set "
        "aside); join them to the entitlement snapshot valid at each call (unknown or not-entitled accounts go to "
        "suspense); sum them per user.",
        "Send the log to the pipeline's developers; the tariff and the snapshot were checked by load_references.",
    ),
    "aggregate_lines": (
        "aggregate_lines",
        "Sum the files' calls per user, then per customer id and sequence number; prove rows and money reconcile.",
        "Rows or money do not add up: do not bill the month; send the log to the pipeline's developers.",
    ),
    "load_billing": (
        "load_billing",
        "Upgrade the billing database schema if needed; load the month's new current batch in one transaction.",
        "Check that the billing database (connection billing_db) is reachable; the month's old batch stays current.",
    ),
    "report_month": (
        "report_month",
        "Re-read the loaded lines, check them and write the month report.",
        "Check the SMTP connection and the work directory; the batch is loaded already.",
    ),
}


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
        "on_failure_callback": [
            failure_mail(
                "Check that the SFTP servers answer (the error names each one) and whether the provider has delivered "
                "the month's files; the task log lists the sources missing."
            )
        ],
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
        "release_held_files": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Release held files",
            description="Names of held CDR files (delivered again with other content) whose new content this run "
            "bills, once checked with the provider. One name per line.",
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
            release_held_files=params.get("release_held_files"),
        )
        return PokeReturnValue(is_done=stages.files_arrived(meta), xcom_value=meta)

    fetched = stage_task("fetch_cdr_files")(meta=wait_for_cdr_files())
    references = stage_task("load_references")(meta=fetched)
    files = stage_task("list_cdr_files")(meta=fetched)
    side_by_side = {"max_active_tis_per_dagrun": CONFIG.files_at_once}
    validated = (
        stage_task("validate_cdr_file", **side_by_side).partial(meta=fetched).expand(item=files)
    )
    deduped = stage_task("dedupe_calls")(meta=fetched, validated=validated)
    parts = stage_task("list_file_parts")(meta=deduped)
    billed = (
        stage_task("bill_cdr_file", **side_by_side)
        .partial(meta=deduped, references=references)
        .expand(part=parts)
    )
    aggregated = stage_task("aggregate_lines")(meta=deduped, billed=billed, references=references)
    stage_task("report_month")(meta=stage_task("load_billing")(meta=aggregated))


cdr_billing_monthly()
