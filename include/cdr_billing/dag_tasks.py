"""The tasks both DAGs run, declared once: the billing database's upgrade, the files' checks and
the month's duplicates. Each is a typed function made a task by `pipeline_task`; its body is in
`cdr_billing.tasks`. A DAG file makes them with its own config (`shared_tasks`), so a parse
sees the config of its time, as the DAG's own tasks do. Light imports only: the DAG files
import this at parse time."""

from __future__ import annotations

from typing import Any, NamedTuple

from cdr_billing.acquire import FetchedFile
from cdr_billing.config import PipelineConfig
from cdr_billing.contracts import DedupedMonth, FetchedMonth, ReconciledFile, ValidatedFile
from cdr_billing.taskflow import pipeline_task

ASK_DEVELOPERS = "Send the log to the pipeline's developers."


def side_by_side(config: PipelineConfig) -> dict[str, int]:
    """A mapped task's instances that run at once: one file each, so this bounds memory. The
    same cap holds for all runs of the DAG together (months run side by side: memory is that
    of `files_at_once` files however many months run)."""
    return {
        "max_active_tis_per_dagrun": config.files_at_once,
        "max_active_tis_per_dag": config.files_at_once,
    }


class SharedTasks(NamedTuple):
    upgrade_billing_db: Any
    list_cdr_files: Any
    validate_cdr_file: Any
    dedupe_calls: Any
    list_file_parts: Any


def shared_tasks(config: PipelineConfig) -> SharedTasks:
    """The shared tasks, their failure mails and limits from `config`."""

    @pipeline_task(config, "Check that the billing database (connection billing_db) is reachable.")
    def upgrade_billing_db() -> None:
        """Upgrade the billing database's schema to this release, once per run (the command
        `python -m cdr_billing.migrations` does the same for a deployment)."""
        from cdr_billing import database, migrations

        migrations.upgrade(database.billing_engine(config.billing.connection))

    @pipeline_task(config, ASK_DEVELOPERS)
    def list_cdr_files(fetched: FetchedMonth) -> list[FetchedFile]:
        """The month's CDR files, which validate_cdr_file is mapped over (one task per file)."""
        from cdr_billing.tasks import fetch

        return fetch.cdr_files(fetched)

    @pipeline_task(
        config,
        "Read the validation mail and the quarantined_row table; ask the provider to redeliver "
        "the file, or fix the source profile in include/config/profiles.yaml if the provider "
        "changed the format.",
        mapped_name="cdr_file",
        **side_by_side(config),
    )
    def validate_cdr_file(fetched: FetchedMonth, cdr_file: FetchedFile) -> ValidatedFile:
        """One task per CDR file: read it, quarantine bad rows, drop duplicates inside it, run
        its Great Expectations suite."""
        from cdr_billing.tasks import validate

        return validate.validate_cdr_file(fetched.run, cdr_file, config)

    @pipeline_task(
        config, "Rows of a file do not add up: send the log to the pipeline's developers."
    )
    def dedupe_calls(fetched: FetchedMonth, validated: list[ValidatedFile]) -> DedupedMonth:
        """Drop calls delivered again in a later file of the month; combine the parts of partial
        calls; reconcile each file's rows in the ledger."""
        from cdr_billing.tasks import dedupe

        return dedupe.dedupe_calls(fetched.run, validated, config)

    @pipeline_task(config, ASK_DEVELOPERS)
    def list_file_parts(deduped: DedupedMonth) -> list[ReconciledFile]:
        """The month's files after dedupe_calls, which the file's rating is mapped over."""
        from cdr_billing.tasks import dedupe

        return dedupe.file_parts(deduped)

    return SharedTasks(
        upgrade_billing_db, list_cdr_files, validate_cdr_file, dedupe_calls, list_file_parts
    )
