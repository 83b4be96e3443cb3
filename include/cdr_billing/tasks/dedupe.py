"""dedupe_calls and list_file_parts: the month's duplicates across files, its partial calls
combined, every file's rows reconciled."""

from __future__ import annotations

import dataclasses
import logging

from cdr_billing import database, dedupe, hashing, ledger, report, validate, workdir
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import DedupedMonth, ReconciledFile, Run, ValidatedFile

log = logging.getLogger(__name__)


def dedupe_calls(
    run: Run, validated: list[ValidatedFile], config: PipelineConfig | None = None
) -> DedupedMonth:
    """Drop calls delivered again in a later file of the month (first delivery wins, in the
    ledger's delivery order); combine the parts of partial calls month-wide (a session may
    span files); reconcile every file's rows and record them in the ledger."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    files = _in_delivery_order(engine, validated)
    repeated_rows = hashing.repeated_per_file(
        [workdir.read_part(run, f.dir, "call_hashes")["hash"].to_numpy() for f in files],
        lambda n, rows: workdir.read_part(run, files[n].dir, "accepted", hashing.CALL_KEY, rows),
    )
    in_session, reconciled = [], []
    for file, again in zip(files, repeated_rows, strict=True):
        aside = dedupe.set_aside(workdir.read_part(run, file.dir, "partial_parts"), again)
        workdir.write_part(run, file.dir, "set_aside", aside.positions)
        in_session.append(aside.in_session)
        reconciled.append(_reconciled(engine, file, accepted=len(again), repeated=int(again.sum())))
    sessions = dedupe.combine_month_sessions(in_session)
    for file, of_file in zip(files, sessions, strict=True):
        workdir.write_part(run, file.dir, "session_calls", of_file.session_calls)
        workdir.write_part(run, file.dir, "combined", of_file.combined)
    log.info(
        "month: %d calls, %d duplicates",
        sum(f.billable for f in reconciled),
        sum(f.duplicate for f in reconciled),
    )
    docs = validate.write_docs_index(
        workdir.run_file(run, "data_docs.html"), {f.name: f.data_docs for f in reconciled}
    )
    return DedupedMonth(
        run=run,
        files=tuple(reconciled),
        data_docs=str(docs),
        read=sum(f.read for f in reconciled),
        quarantined=sum(f.quarantined for f in reconciled),
        duplicates=sum(f.duplicate for f in reconciled),
        combined=sum(len(s.combined) for s in sessions),
    )


def _in_delivery_order(engine, validated: list[ValidatedFile]) -> list[ValidatedFile]:
    ordered = ledger.delivery_order(engine, [dataclasses.asdict(f) for f in validated])
    return [ValidatedFile(**f) for f in ordered]


def _reconciled(engine, file: ValidatedFile, accepted: int, repeated: int) -> ReconciledFile:
    """The file's rows after the month's duplicates (`repeated` of its `accepted` rows came
    earlier), proven to add up (read = billable + quarantined + duplicate) and recorded."""
    reconciled = ReconciledFile(
        **dataclasses.asdict(file),
        billable=accepted - repeated,
        duplicate=file.duplicates_in_file + repeated,
    )
    rows = dataclasses.asdict(reconciled)
    report.reconcile_file(rows)
    ledger.record_reconciliation(
        engine,
        file.source,
        file.name,
        file.sha256,
        {f"rows_{key}": rows[key] for key in ("read", "billable", "quarantined", "duplicate")},
    )
    return reconciled


def file_parts(deduped: DedupedMonth) -> list[ReconciledFile]:
    """The month's files: bill_cdr_file is mapped over them, one task per file."""
    return list(deduped.files)
