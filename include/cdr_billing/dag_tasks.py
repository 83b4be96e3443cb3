"""The tasks both DAGs run, declared once: the billing database's upgrade, the files' checks and
the month's duplicates. Each is a typed function made a task by `pipeline_task`; its body is in
`cdr_billing.tasks`. Light imports only: the DAG files import this at parse time."""

from __future__ import annotations

from cdr_billing.acquire import FetchedFile
from cdr_billing.config import load_config
from cdr_billing.contracts import DedupedMonth, FetchedMonth, ReconciledFile, ValidatedFile
from cdr_billing.taskflow import pipeline_task

CONFIG = load_config()
SIDE_BY_SIDE = {"max_active_tis_per_dagrun": CONFIG.files_at_once}  # mapped tasks at once
ASK_DEVELOPERS = "Send the log to the pipeline's developers."


@pipeline_task(CONFIG, "Check that the billing database (connection billing_db) is reachable.")
def upgrade_billing_db() -> None:
    """Upgrade the billing database's schema to this release, once per run (the command
    `python -m cdr_billing.migrations` does the same for a deployment)."""
    from cdr_billing import database, migrations

    migrations.upgrade(database.billing_engine(CONFIG.billing.connection))


@pipeline_task(CONFIG, ASK_DEVELOPERS)
def list_cdr_files(fetched: FetchedMonth) -> list[FetchedFile]:
    """The month's CDR files, which validate_cdr_file is mapped over (one task per file)."""
    from cdr_billing.tasks import fetch

    return fetch.cdr_files(fetched)


@pipeline_task(
    CONFIG,
    "Read the validation mail and the quarantined_row table; ask the provider to redeliver the "
    "file, or fix the source profile in include/config/profiles.yaml if the provider changed "
    "the format.",
    mapped_name="cdr_file",
    **SIDE_BY_SIDE,
)
def validate_cdr_file(fetched: FetchedMonth, cdr_file: FetchedFile) -> ValidatedFile:
    """One task per CDR file: read it, quarantine bad rows, drop duplicates inside it, run its
    Great Expectations suite."""
    from cdr_billing.tasks import validate

    return validate.validate_cdr_file(fetched.run, cdr_file, CONFIG)


@pipeline_task(CONFIG, "Rows of a file do not add up: send the log to the pipeline's developers.")
def dedupe_calls(fetched: FetchedMonth, validated: list[ValidatedFile]) -> DedupedMonth:
    """Drop calls delivered again in a later file of the month; combine the parts of partial
    calls; reconcile each file's rows in the ledger."""
    from cdr_billing.tasks import dedupe

    return dedupe.dedupe_calls(fetched.run, validated, CONFIG)


@pipeline_task(CONFIG, ASK_DEVELOPERS)
def list_file_parts(deduped: DedupedMonth) -> list[ReconciledFile]:
    """The month's files after dedupe_calls, which the file's rating is mapped over."""
    from cdr_billing.tasks import dedupe

    return dedupe.file_parts(deduped)
