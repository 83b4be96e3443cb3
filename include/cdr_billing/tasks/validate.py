"""validate_cdr_file: one CDR file read and checked (mapped, one task per file)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from cdr_billing import alerts, database, dedupe, load, read, storage, validate, workdir
from cdr_billing.acquire import FetchedFile
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import Run, ValidatedFile
from cdr_billing.months import BillingMonth
from cdr_billing.tasks.run import send

log = logging.getLogger(__name__)


def validate_cdr_file(
    run: Run, cdr_file: FetchedFile, config: PipelineConfig | None = None
) -> ValidatedFile:
    """Read and check one CDR file (accepted rows, quarantine stored, duplicates inside the
    file), then run its Great Expectations suite. A file that fails is mailed about (file,
    failed expectations, masked sample rows) and fails the task."""
    config = config or load_config()
    try:
        checked = check_cdr_file(run, cdr_file, config)
        expect_cdr_file(run, checked.file, checked.accepted, config)
    except validate.FileValidationError as exc:
        alert = alerts.validation_alert(
            run.billing_month, exc.file_name, exc.problem, exc.expectations, exc.samples
        )
        send(config, alert)
        raise
    return checked.file


class CheckedFile(NamedTuple):
    file: ValidatedFile
    accepted: pd.DataFrame  # its accepted rows, for the suite


def check_cdr_file(run: Run, cdr_file: FetchedFile, config: PipelineConfig) -> CheckedFile:
    """Read one CDR file, check its rows, store its quarantine and write its accepted rows,
    call hashes and partial-call parts for dedupe_calls."""
    month, profile, name = (
        BillingMonth.parse(run.billing_month),
        config.profile_for(cdr_file.source),
        cdr_file.name,
    )
    try:
        raw = read.read_cdr_file(Path(cdr_file.local_path), profile).assign(source=cdr_file.source)
    except read.FileReadError as exc:
        raise validate.FileValidationError(name, str(exc).removeprefix(f"{name}: ")) from exc
    checked = validate.check_rows(raw, profile, month, config.billing)
    engine = database.billing_engine(config.billing.connection)
    load.store_quarantine(engine, run.billing_month, run.run_id, name, checked.quarantined)
    validate.enforce_rejection_threshold(
        name, len(raw), checked.quarantined, config.billing.max_rejected_share
    )
    folder = workdir.file_folder(run, cdr_file.sha256)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, frame in (
        ("accepted", checked.accepted),
        ("duplicates_in_file", checked.duplicates),
        ("quarantined", checked.quarantined),
        ("call_hashes", pd.DataFrame({"hash": checked.call_hashes})),
        ("partial_parts", dedupe.partial_rows(checked.accepted)),
    ):
        workdir.write_part(run, str(folder), kind, frame)
    log.info(
        "%s: read %d, accepted %d, quarantined %d, duplicates in the file %d",
        name,
        len(raw),
        len(checked.accepted),
        len(checked.quarantined),
        len(checked.duplicates),
    )
    validated = ValidatedFile(
        name=name,
        source=cdr_file.source,
        sha256=cdr_file.sha256,
        dir=str(folder),
        data_docs=str(folder / "gx_results" / validate.DATA_DOCS_INDEX),
        read=len(raw),
        quarantined=len(checked.quarantined),
        duplicates_in_file=len(checked.duplicates),
    )
    return CheckedFile(validated, checked.accepted)


def expect_cdr_file(
    run: Run, file: ValidatedFile, accepted: pd.DataFrame, config: PipelineConfig
) -> None:
    """Run the file's Great Expectations suite on its accepted rows; its results and data docs
    go to the file's folder (GX writes locally, then they are published)."""
    month, profile = BillingMonth.parse(run.billing_month), config.profile_for(file.source)
    folder = storage.location(file.dir, run.work_connection)
    with tempfile.TemporaryDirectory() as results:
        try:
            runner = validate.ExpectationRunner(Path(results))
            runner.validate_file(accepted, file.name, profile, month, config.billing)
        finally:
            storage.publish(Path(results), folder / "gx_results")
