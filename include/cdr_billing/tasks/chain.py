"""A month through the task functions in the DAG's order, in one process and without Airflow:
what the benchmark measures and the property tests check, so that neither can drift from what
the DAG runs. The caller upgrades the billing database first, as the DAG's first task does."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from cdr_billing import database, ledger
from cdr_billing.acquire import FetchedFile
from cdr_billing.config import PipelineConfig
from cdr_billing.contracts import (
    FetchedMonth,
    FileCounts,
    MonthLines,
    PrepaidSettlement,
    Run,
    ValidatedFile,
)
from cdr_billing.tasks.aggregate import aggregate_lines
from cdr_billing.tasks.bill import bill_cdr_file
from cdr_billing.tasks.dedupe import dedupe_calls, file_parts
from cdr_billing.tasks.fetch import cdr_files
from cdr_billing.tasks.prepaid_settlement import settle_prepaid
from cdr_billing.tasks.references import load_references
from cdr_billing.tasks.validate import check_cdr_file, validate_cdr_file

# How the tasks run: runner(task function, the argument tuples of its task instances) -> their
# results, in order; one tuple for a task that is not mapped.
Runner = Callable[[Callable[..., Any], list[tuple]], list[Any]]


def in_this_process(function: Callable[..., Any], arguments: list[tuple]) -> list[Any]:
    return [function(*a) for a in arguments]


def fetched_locally(
    config: PipelineConfig, run: Run, files: list[tuple[str, str, Path]]
) -> FetchedMonth:
    """Local files (role, source, path) recorded in the ledger in one transaction, in the
    order given, as one fetch records what it downloaded: a month's input without SFTP."""
    fetched = tuple(
        FetchedFile(
            role,
            source,
            path.name,
            str(path),
            path.stat().st_size,
            0,
            _sha256(path),
            "local",
        )
        for role, source, path in files
    )
    ledger.record(database.billing_engine(config.billing.connection), run.billing_month, fetched)
    return FetchedMonth(run, fetched, "local", (), FileCounts(len(fetched), 0, 0, 0, 0, 0))


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class BilledMonth(NamedTuple):
    """The month's billing lines and its prepaid settlement."""

    lines: MonthLines
    settlement: PrepaidSettlement


def bill_month(
    config: PipelineConfig,
    fetched: FetchedMonth,
    runner: Runner = in_this_process,
    expectations: bool = True,
) -> MonthLines:
    """The month's billing lines from its fetched files (run_month's lines)."""
    return run_month(config, fetched, runner, expectations).lines


def run_month(
    config: PipelineConfig,
    fetched: FetchedMonth,
    runner: Runner = in_this_process,
    expectations: bool = True,
) -> BilledMonth:
    """The month's billing lines and prepaid settlement from its fetched files: load_references
    beside validate_cdr_file per file (as the DAG runs them), dedupe_calls, bill_cdr_file per
    file, aggregate_lines, settle_prepaid. Without `expectations`, each file is checked
    (check_cdr_file) but its Great Expectations suite is left to the caller (expect_cdr_file),
    which times it apart."""
    run = fetched.run
    validate = validate_cdr_file if expectations else check_cdr_file_only
    with ThreadPoolExecutor(1) as beside:
        loading = beside.submit(runner, load_references, [(fetched, config)])
        validated = runner(validate, [(run, f, config) for f in cdr_files(fetched)])
        (references,) = loading.result()
    (deduped,) = runner(dedupe_calls, [(run, validated, config)])
    billed = runner(bill_cdr_file, [(run, f, references, config) for f in file_parts(deduped)])
    (lines,) = runner(aggregate_lines, [(deduped, billed, references)])
    (settlement,) = runner(settle_prepaid, [(lines, config)])
    return BilledMonth(lines, settlement)


def check_cdr_file_only(run: Run, cdr_file: FetchedFile, config: PipelineConfig) -> ValidatedFile:
    """validate_cdr_file without its Great Expectations suite."""
    return check_cdr_file(run, cdr_file, config).file
