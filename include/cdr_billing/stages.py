"""What each Airflow task does: run one stage on the run's work directory.

Every stage takes the small metadata dict of the stage before it (XCom), reads its input
files, calls the domain functions and writes its outputs next to them: Parquet, or Arrow IPC
for the bulk of a file that the next task reads whole (storage.HANDOFF_FILES). The dict carries paths
and counts only, never data.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from cdr_billing import (
    acquire,
    aggregate,
    alerts,
    attribute,
    billing_file,
    database,
    dedupe,
    entitlements,
    hashing,
    ledger,
    lineage,
    load,
    migrations,
    rate,
    read,
    report,
    storage,
    tariff,
    validate,
)
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.months import BillingMonth, resolve_billing_month

log = logging.getLogger(__name__)
Meta = dict[str, Any]


class MissingFilesError(RuntimeError):
    """A source delivered no usable file for the billing month."""


class FilesNotArrivedError(AirflowFailException):
    """The deadline passed and a source has still delivered nothing for the month: final (a retry
    would only wait and mail again); its files_not_arrived alert is the one mail."""

    alert_mailed = True


def _work_dir(meta: Meta) -> storage.Location:
    return storage.location(meta["work_dir"], meta.get("work_connection"))


def _work_file(meta: Meta, name: str) -> storage.Location:
    return _work_dir(meta) / name


def _write(meta: Meta, name: str, frame: pd.DataFrame) -> None:
    storage.write_frame(frame, _work_file(meta, storage.file_name(name)))


def _read(meta: Meta, name: str) -> pd.DataFrame:
    return storage.read_frame(_work_file(meta, storage.file_name(name)))


def _part_file(meta: Meta, part: dict[str, Any], name: str) -> storage.Location:
    """One intermediate file of one CDR file."""
    return storage.location(part["dir"], meta.get("work_connection")) / storage.file_name(name)


def _write_part(meta: Meta, part: dict[str, Any], name: str, frame: pd.DataFrame) -> None:
    storage.write_frame(frame, _part_file(meta, part, name))


def _read_part(
    meta: Meta,
    part: dict[str, Any],
    name: str,
    columns: list[str] | None = None,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    return storage.read_frame(_part_file(meta, part, name), columns, rows)


def _with_counts(meta: Meta, **counts: int) -> Meta:
    return {**meta, "counts": {**meta.get("counts", {}), **{k: int(v) for k, v in counts.items()}}}


def _send(config: PipelineConfig, alert: alerts.Alert) -> None:
    """Mail an alert to the recipients of its kind."""
    alerts.send(alert, list(config.recipients(alert.kind)), config.smtp_connection)


def run_work_dir(config: PipelineConfig, billing_month: str, run_id: str) -> storage.Location:
    """The directory a run keeps its Parquet files, GX results and report in (local or object storage)."""
    safe_run_id = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    return storage.location(
        f"{config.work_root.rstrip('/')}/{billing_month}/{safe_run_id}", config.work_connection
    )


def start_run(
    billing_month_param: str | None,
    data_interval_start: datetime | None,
    run_id: str,
    config: PipelineConfig | None = None,
    refresh_entitlements: bool = False,
    clear_number: int = 0,
    release_held_files: list[str] | None = None,
) -> Meta:
    """Resolve the billing month and create the run's work directory.

    A run cleared in the UI (or re-run by a reprocessing backfill) keeps its Airflow run id but
    is a new billing run: its clear number makes it a new batch; a retried task is not.
    """
    config = config or load_config()
    month = resolve_billing_month(billing_month_param, data_interval_start, config.billing.timezone)
    run_id = run_id if clear_number == 0 else f"{run_id}#clear{clear_number}"
    work_dir = run_work_dir(config, str(month), run_id)
    work_dir.mkdir(parents=True, exist_ok=True)
    return {
        "billing_month": str(month),
        "run_id": run_id,
        "work_dir": str(work_dir),
        "work_connection": config.work_connection,
        "refresh_entitlements": refresh_entitlements,
        "release_held_files": list(release_held_files or []),
    }


def _cdr_requests(config: PipelineConfig, month: str) -> list[acquire.FileRequest]:
    return [
        acquire.FileRequest(
            "cdr",
            s.name,
            s.remote_dir,
            s.pattern_for(month),
            False,
            s.done_marker,
            s.require_sidecar,
        )
        for s in config.sources
    ]


def _reference_requests(config: PipelineConfig, month: str) -> list[acquire.FileRequest]:
    requests = [
        acquire.FileRequest(
            "tariff", "tariff", config.tariff.remote_dir, config.tariff.pattern_for(month), True
        )
    ]
    if (
        config.entitlement_source.source == "file"
    ):  # the snapshots in force during the month, and later ones
        files = config.entitlements
        requests.append(
            acquire.FileRequest(
                "entitlements",
                "entitlements",
                files.remote_dir,
                files.pattern_for(month),
                dated_from=f"{month}-01",
            )
        )
    return requests


def files_arrived(
    meta: Meta, config: PipelineConfig | None = None, now: datetime | None = None
) -> bool:
    """True once every CDR source has a stable file for the month (on a server or archived):
    a source whose only files are still being written has not arrived.

    Past the deadline (month end + files_deadline_days) a missing source fails the run.
    """
    config = config or load_config()
    month = BillingMonth.parse(meta["billing_month"])
    requests = _cdr_requests(config, str(month))
    missing = acquire.find_missing_sources(
        list(config.sftp_connections),
        requests,
        config.connect_timeout_seconds,
        config.stable_seconds,
    )
    if missing:
        engine = database.billing_engine(config.billing.connection)
        migrations.upgrade(engine)
        archived = ledger.archived_month_files(engine, str(month), set(missing), present=set())
        missing = [source for source in missing if source not in {f.source for f in archived}]
    if not missing:
        return True
    deadline = month.bounds(config.billing.timezone)[1] + timedelta(days=config.files_deadline_days)
    if (now or datetime.now(UTC)) >= deadline:
        _send(
            config,
            alerts.files_not_arrived_alert(str(month), missing, f"{deadline:%Y-%m-%d %H:%M %Z}"),
        )
        raise FilesNotArrivedError(
            f"files for month {month} have not arrived: nothing from {missing} by the deadline {deadline:%Y-%m-%d %H:%M %Z}"
        )
    log.info(
        "files for %s not there yet from %s; checking again later (deadline %s)",
        month,
        missing,
        deadline,
    )
    return False


def fetch(meta: Meta, config: PipelineConfig | None = None) -> Meta:
    """Fetch the month's CDR files, tariff and entitlement snapshot; record them in the ledger."""
    config = config or load_config()
    month = meta["billing_month"]
    engine = database.billing_engine(config.billing.connection)
    migrations.upgrade(engine)
    requests = _cdr_requests(config, month) + _reference_requests(config, month)
    result = acquire.fetch_with_failover(
        list(config.sftp_connections),
        requests,
        config.archive_root
        / "incoming"
        / Path(meta["work_dir"]).name,  # local: downloads are archived from here
        config.connect_timeout_seconds,
        reuse=ledger.archived_copy_finder(engine),
        stable_seconds=config.stable_seconds,
    )
    for failed in result.failovers:
        _send(config, alerts.failover_alert(month, failed, result.server))
    fetched = [ledger.archive(f, config.archive_root) if f.downloaded else f for f in result.files]
    entries = _release(engine, meta, ledger.record(engine, month, fetched))
    for entry in entries:
        if entry.status == ledger.HELD:
            _send(
                config,
                alerts.held_file_alert(
                    month, entry.file.source, entry.file.name, entry.reason or "held earlier"
                ),
            )
    usable = [e.file for e in entries if e.status == ledger.ACCEPTED]
    processed_dirs = {s.name: s.processed_dir for s in config.sources if s.processed_dir}
    moves = [
        (f.remote_path, processed_dirs[f.source])
        for f in usable
        if f.downloaded and f.source in processed_dirs
    ]
    acquire.move_to_processed(result.server, moves, config.connect_timeout_seconds)
    # Billed files of the month that the servers no longer list, or list with held content.
    usable += ledger.archived_month_files(
        engine, month, {s.name for s in config.sources}, {(f.source, f.name) for f in usable}
    )
    missing = [r.source for r in requests if r.source not in {f.source for f in usable}]
    if missing:
        unstable = sorted(r.name for r in result.not_yet_stable)
        raise MissingFilesError(
            f"no usable files for month {month} from sources {missing} (not yet stable: {unstable})"
        )
    counts = Counter(e.status for e in entries)
    downloaded, reused = (
        sum(f.downloaded for f in result.files),
        sum(not f.downloaded for f in usable),
    )
    log.info(
        "%d files usable (%d from the archive), %d downloaded, %d held, %d duplicate deliveries, %d other files ignored, "
        "%d failovers, %d not yet stable (left for a later run)",
        len(usable),
        reused,
        downloaded,
        counts[ledger.HELD],
        counts[ledger.DUPLICATE_CONTENT],
        result.ignored,
        len(result.failovers),
        len(result.not_yet_stable),
    )
    files = [f.as_dict() for f in usable]
    return {
        **meta,
        "files": files,
        "server": result.server,
        "failovers": result.failovers,
        "file_counts": {
            "downloaded": downloaded,
            "reused": reused,
            "held": counts[ledger.HELD],
            "duplicate_content": counts[ledger.DUPLICATE_CONTENT],
            "ignored": result.ignored,
            "not_yet_stable": len(result.not_yet_stable),
        },
    }


def _release(
    engine: Engine, meta: Meta, entries: list[ledger.LedgerEntry]
) -> list[ledger.LedgerEntry]:
    """Release the held files the run names (`release_held_files`): their content is billed."""
    changed = [ledger.release_held(engine, name) for name in meta.get("release_held_files", [])]
    released = {(c.source, c.name, c.released_sha256) for c in changed}
    for c in changed:
        log.info(
            "%s %s: held content %s released (billed before: %s)",
            c.source,
            c.name,
            c.released_sha256[:12],
            c.billed_sha256[:12],
        )
    return [
        replace(e, status=ledger.ACCEPTED)
        if (e.file.source, e.file.name, e.file.sha256) in released
        else e
        for e in entries
    ]


def _files(meta: Meta, role: str) -> list[dict[str, Any]]:
    return [f for f in meta["files"] if f["role"] == role]


def cdr_files(meta: Meta) -> list[dict[str, Any]]:
    """The month's CDR files: validate_cdr_file is mapped over them, one task per file."""
    return _files(meta, "cdr")


def file_parts(meta: Meta) -> list[dict[str, Any]]:
    """The files' intermediate results: bill_cdr_file is mapped over them, one task per file."""
    return meta["parts"]


def _read_parts(meta: Meta, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One intermediate file of every part (CDR file), concatenated."""
    return pd.concat(
        [_read_part(meta, part, name, columns) for part in meta["parts"]], ignore_index=True
    )


def validate_file(
    meta: Meta, item: dict[str, Any], config: PipelineConfig | None = None
) -> dict[str, Any]:
    """Read and check one CDR file: accepted rows, quarantine (stored), duplicates inside the
    file, its Great Expectations suite. A file that fails is mailed about (file, failed
    expectations, masked sample rows) and fails the task."""
    config = config or load_config()
    try:
        return _validate_file(meta, item, config)
    except validate.FileValidationError as exc:
        _send(
            config,
            alerts.validation_alert(
                meta["billing_month"], exc.file_name, exc.problem, exc.expectations, exc.samples
            ),
        )
        raise


def _validate_file(meta: Meta, item: dict[str, Any], config: PipelineConfig) -> dict[str, Any]:
    month, profile, name = (
        BillingMonth.parse(meta["billing_month"]),
        config.profile_for(item["source"]),
        item["name"],
    )
    try:
        raw = read.read_cdr_file(Path(item["local_path"]), profile).assign(source=item["source"])
    except read.FileReadError as exc:
        raise validate.FileValidationError(name, str(exc).removeprefix(f"{name}: ")) from exc
    checked = validate.check_rows(raw, profile, month, config.billing)
    engine = database.billing_engine(config.billing.connection)
    migrations.upgrade(engine)
    load.store_quarantine(engine, meta["billing_month"], meta["run_id"], name, checked.quarantined)
    validate.enforce_rejection_threshold(
        name, len(raw), checked.quarantined, config.billing.max_rejected_share
    )
    accepted, duplicates = checked.accepted, checked.duplicates
    folder = _work_file(meta, "files") / item["sha256"][:16]
    folder.mkdir(parents=True, exist_ok=True)
    part = {**{key: item[key] for key in ("name", "source", "sha256")}, "dir": str(folder)}
    with (
        tempfile.TemporaryDirectory() as results
    ):  # GX writes locally; the results go to the work dir
        try:
            validate.ExpectationRunner(Path(results)).validate_file(
                accepted, name, profile, month, config.billing
            )
        finally:
            storage.publish(Path(results), folder / "gx_results")
    _write_part(meta, part, "accepted", accepted)
    _write_part(meta, part, "duplicates_in_file", duplicates)
    _write_part(meta, part, "quarantined", checked.quarantined)
    _write_part(
        meta, part, "call_hashes", pd.DataFrame({"hash": checked.call_hashes})
    )  # for dedupe_calls
    _write_part(meta, part, "partial_parts", dedupe.partial_rows(accepted))
    log.info(
        "%s: read %d, accepted %d, quarantined %d, duplicates in the file %d",
        name,
        len(raw),
        len(accepted),
        len(checked.quarantined),
        len(duplicates),
    )
    return {
        **part,
        "data_docs": str(folder / "gx_results" / validate.DATA_DOCS_INDEX),
        "read": len(raw),
        "quarantined": len(checked.quarantined),
        "duplicates_in_file": len(duplicates),
    }


def load_references(meta: Meta, config: PipelineConfig | None = None) -> dict[str, int]:
    """Store the month's tariff as a version (a known file keeps its version) and pin its
    entitlement snapshot (captured once, or again when the run asks for a fresh one); runs
    beside the files' validation. Returns the tariff version and the snapshot id."""
    config = config or load_config()
    settings, engine, now = (
        config.entitlement_source,
        database.billing_engine(config.billing.connection),
        datetime.now(UTC),
    )
    migrations.upgrade(engine)
    tariff_version = tariff.load_file(
        engine, Path(_files(meta, "tariff")[0]["local_path"]), config.billing
    )

    snapshot_files = sorted(
        (Path(f["local_path"]) for f in _files(meta, "entitlements")), key=lambda p: p.name
    )  # by date
    for path in snapshot_files[:-1]:  # the month's history; the newest is what a month pins
        entitlements.store(engine, entitlements.from_file(path, now, config.billing.timezone))

    def capture() -> entitlements.Snapshot:
        if settings.source == "sql":
            return entitlements.from_query(settings.connection, settings.query, now)
        return entitlements.from_file(snapshot_files[-1], now, config.billing.timezone)

    snapshot_id = entitlements.snapshot_for_month(
        engine, meta["billing_month"], capture, meta.get("refresh_entitlements", False)
    )
    log.info("tariff version %d, entitlement snapshot %d", tariff_version, snapshot_id)
    return {"tariff_version": tariff_version, "entitlement_snapshot": snapshot_id}


def dedupe_calls(
    meta: Meta, validated: list[dict[str, Any]], config: PipelineConfig | None = None
) -> Meta:
    """Drop calls delivered again in a later file of the month (first delivery wins, in the
    ledger's delivery order); combine the parts of partial calls month-wide (a session may span files); reconcile
    every file's rows and record them in the ledger."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    parts = ledger.delivery_order(engine, validated)
    repeated_rows = hashing.repeated_per_file(
        [_read_part(meta, part, "call_hashes")["hash"].to_numpy() for part in parts],
        lambda n, rows: _read_part(meta, parts[n], "accepted", hashing.CALL_KEY, rows),
    )
    partial = []  # parts of partial calls, from every file: a session may span files
    for i, (part, again) in enumerate(zip(parts, repeated_rows, strict=True)):
        positions, in_session = dedupe.set_aside(_read_part(meta, part, "partial_parts"), again)
        partial.append(in_session.assign(part_index=i))
        _write_part(meta, part, "set_aside", positions)
        repeated = int(again.sum())
        part.update(billable=len(again) - repeated, duplicate=part["duplicates_in_file"] + repeated)
        report.reconcile_file(part)
        ledger.record_reconciliation(
            engine,
            part["source"],
            part["name"],
            part["sha256"],
            {f"rows_{key}": part[key] for key in ("read", "billable", "quarantined", "duplicate")},
        )
    heads, merged = dedupe.combine_partial_calls(pd.concat(partial, ignore_index=True))
    session = ["source", "session_id"]
    head_part = merged[session].merge(heads[[*session, "part_index"]], on=session, how="left")[
        "part_index"
    ]
    merged = merged.assign(part_index=head_part.to_numpy())
    for i, part in enumerate(
        parts
    ):  # a combined call goes with its first part's file, the merged parts with it
        _write_part(
            meta,
            part,
            "session_calls",
            heads[heads["part_index"] == i].drop(columns="part_index").reset_index(drop=True),
        )
        _write_part(
            meta,
            part,
            "combined",
            merged[merged["part_index"] == i].drop(columns="part_index").reset_index(drop=True),
        )
    log.info(
        "month: %d calls, %d duplicates",
        sum(p["billable"] for p in parts),
        sum(p["duplicate"] for p in parts),
    )
    docs = validate.write_docs_index(
        _work_file(meta, "data_docs.html"), {p["name"]: p["data_docs"] for p in parts}
    )
    return _with_counts(
        {**meta, "parts": parts, "data_docs": str(docs)},
        read=sum(p["read"] for p in parts),
        quarantined=sum(p["quarantined"] for p in parts),
        duplicates=sum(p["duplicate"] for p in parts),
        combined=len(merged),
    )


def bill_file(
    meta: Meta,
    part: dict[str, Any],
    references: dict[str, int],
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Bill one file's calls: price them, attribute them to the entitlement snapshot valid at
    each call (suspense set aside) and sum them per user."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    priced, rated = _rate_file(meta, part, engine, config)
    snapshot_id = references["entitlement_snapshot"]
    attributed, suspense, user_codes = attribute.attribute_calls(
        priced, entitlements.history(engine, snapshot_id), snapshot_id
    )
    del priced  # with the rows _rate_file dropped: 1M calls peak at 1.06 GB, not 1.36
    for name, frame in (
        ("attributed", attributed),
        ("suspense", suspense),
        ("user_lines", aggregate.aggregate_users(attributed, user_codes)),
        ("revenue_share_sums", aggregate.revenue_share_sums(attributed)),
        ("call_totals", aggregate.call_totals(attributed)),
        ("stale_accounts", _stale_accounts(meta, attributed, config)),
    ):
        _write_part(meta, part, name, frame)
    log.info(
        "%s: snapshot %d: attributed %d calls, %d in suspense",
        part["name"],
        snapshot_id,
        len(attributed),
        len(suspense),
    )
    delivery_failed = int((attributed["completion_status"] == 3).sum())
    return {
        "sha256": part["sha256"],
        "delivery_failed_billed": delivery_failed,
        "billed": len(attributed),
        "suspense": len(suspense),
        **rated,
    }


def _rate_file(
    meta: Meta, part: dict[str, Any], engine: Engine, config: PipelineConfig
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Price one file's calls (provider's cost or the tariff's longest prefix); write its
    unbillable calls, price differences and duplicates (in the file, then of earlier files).
    Returns (priced calls, counts)."""
    rows, is_call, duplicates = dedupe.file_calls(
        storage.read_table(_part_file(meta, part, "accepted")),
        storage.read_table(_part_file(meta, part, "session_calls")),
        _read_part(meta, part, "set_aside"),
    )
    in_file = _read_part(meta, part, "duplicates_in_file")
    _write_part(
        meta, part, "duplicates", pd.concat([in_file, duplicates], ignore_index=True)
    )  # in the file, then again
    rates = tariff.all_rates(engine)
    priced, unbillable, failed = rate.rate_calls(
        rows, rates, config.billing, config.markups(), is_call
    )
    price_differences = rate.compare_with_tariff(priced, rates, config.billing)
    _write_part(meta, part, "unbillable", unbillable)
    _write_part(meta, part, "price_differences", price_differences)
    log.info(
        "%s: priced %d calls, %d unbillable, %d failed (not billable)",
        part["name"],
        len(priced),
        len(unbillable),
        len(failed),
    )
    return priced, {
        "price_differences": len(price_differences),
        "unbillable": len(unbillable),
        "not_billable": len(failed),
    }


STALE_ACCOUNT_COLUMNS = ["account_id", "customer_id", "last_login", "calls"]
BILLED_COUNTS = (
    "billed",
    "suspense",
    "unbillable",
    "not_billable",
)  # summed over the files' bill_file results


def _stale_accounts(meta: Meta, attributed: pd.DataFrame, config: PipelineConfig) -> pd.DataFrame:
    """The file's billed accounts whose last login is older than the month's end less the
    entitlement source's stale_after_days."""
    month_end = BillingMonth.parse(meta["billing_month"]).bounds(config.billing.timezone)[1]
    cutoff = pd.Timestamp(month_end) - pd.Timedelta(days=config.entitlement_source.stale_after_days)
    return pd.DataFrame(attribute.stale_accounts(attributed, cutoff), columns=STALE_ACCOUNT_COLUMNS)


def aggregate_lines(meta: Meta, billed: list[dict[str, Any]], references: dict[str, int]) -> Meta:
    """Sum the files' user lines per user, then into billing lines; prove the totals and counts."""
    stale_accounts = attribute.merge_stale_accounts(
        _read_parts(meta, "stale_accounts").to_dict("records")
    )
    _write(meta, "stale_accounts", pd.DataFrame(stale_accounts, columns=STALE_ACCOUNT_COLUMNS))
    facts = {
        "entitlement_snapshot": references["entitlement_snapshot"],
        "tariff_version": references["tariff_version"],
        **{
            key: sum(b[key] for b in billed)
            for key in ("delivery_failed_billed", "price_differences")
        },
    }
    meta = _with_counts(
        {**meta, **facts}, **{key: sum(b[key] for b in billed) for key in BILLED_COUNTS}
    )
    user_lines = aggregate.merge_user_lines(_read_parts(meta, "user_lines"))
    lines = aggregate.aggregate_lines(user_lines)
    call_totals = _read_parts(meta, "call_totals")
    report.check_totals(lines, call_totals)
    report.reconcile(meta["counts"])
    shares = aggregate.revenue_share(_read_parts(meta, "revenue_share_sums"))
    _write(meta, "user_lines", user_lines)
    _write(meta, "lines", lines)
    _write(meta, "revenue_share", shares)
    meta = {**meta, "credits": report.credits(call_totals)}
    log.info(
        "%d billing lines from %d user lines; revenue share of %d providers; %d stale accounts",
        len(lines),
        len(user_lines),
        shares["service_provider"].nunique(),
        len(stale_accounts),
    )
    return meta


def _detail(frame: pd.DataFrame) -> pd.Series:
    """What an operator needs to act on a non-billed row: the account, and the number range."""
    columns = [c for c in ("user_id", "number_range", "session_id") if c in frame]
    return pd.Series(
        [json.dumps(record) for record in frame[columns].to_dict("records")],
        index=frame.index,
        dtype=str,
    )


# Rows not billed: (kind, the run's Parquet file, reason when the file has no reason_code).
NOT_BILLED = (
    ("quarantined", "quarantined", None),
    ("duplicate", "duplicates", "DUPLICATE_TRANSACTION"),
    ("unbillable", "unbillable", None),
    ("combined", "combined", None),
    ("suspense", "suspense", None),
)


def _exception_rows(meta: Meta, skip_kinds: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows not billed, in one shape, for the billing database and the report."""
    parts = []
    for kind, name, reason in NOT_BILLED:
        if kind in skip_kinds:
            continue
        frame = _read_parts(meta, name)
        if frame.empty:
            continue
        detail = frame["original_values"] if "original_values" in frame else _detail(frame)
        parts.append(
            pd.DataFrame(
                {
                    "kind": kind,
                    "reason_code": frame["reason_code"] if reason is None else reason,
                    "source_file": frame["source_file"],
                    "source_row": frame["source_row"].astype("int64"),
                    "transaction_id": frame["transaction_id"] if "transaction_id" in frame else "",
                    "detail": detail,
                }
            )
        )
    columns = ["kind", "reason_code", "source_file", "source_row", "transaction_id", "detail"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def load_billing(meta: Meta, config: PipelineConfig | None = None) -> Meta:
    """Load the lines and exception rows as the month's new current batch."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    migrations.upgrade(engine)
    batch = load.Batch(
        lines=_read(meta, "lines"),
        user_lines=_read(meta, "user_lines"),
        revenue_share=_read(meta, "revenue_share"),
        billed_calls=(
            lineage.billed_calls(
                _read_part(meta, part, "attributed"), _read_part(meta, part, "combined")
            )
            for part in meta["parts"]
        ),
        exceptions=_exception_rows(
            meta, skip_kinds=("quarantined",)
        ),  # those are in quarantined_row already
    )
    result = load.load_month(engine, meta["billing_month"], meta["run_id"], batch, meta["counts"])
    log.info(
        "batch %s is current for %s (superseded %s, already loaded: %s)",
        result.batch_id,
        meta["billing_month"],
        result.superseded_batch_id,
        result.already_loaded,
    )
    return {
        **meta,
        "batch": {"batch_id": result.batch_id, "superseded_batch_id": result.superseded_batch_id},
    }


def report_month(meta: Meta, config: PipelineConfig | None = None) -> Meta:
    """Write the month report from the loaded batch and check it matches the run."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    loaded = load.current_lines(engine, meta["billing_month"])
    computed = _read(meta, "lines")
    if not loaded.reset_index(drop=True).equals(
        computed.astype(loaded.dtypes.to_dict()).reset_index(drop=True)
    ):
        raise report.ReconciliationError(
            "the billing database's current lines differ from this run's lines"
        )
    month_report = report.build_report(
        meta["billing_month"], meta["batch"], meta["counts"], loaded, _exception_rows(meta)
    )
    month_report["customer_totals"] = report.customer_totals(loaded)
    month_report["revenue_share"] = report.revenue_share_report(_read(meta, "revenue_share"))
    month_report["files"] = meta["parts"]
    month_report["data_docs"] = meta["data_docs"]
    month_report["unbillable_ranges"] = report.unbillable_ranges(_read_parts(meta, "unbillable"))
    month_report["delivery_failed_billed"] = meta["delivery_failed_billed"]
    month_report["credits"] = meta["credits"]
    month_report["held_files"] = ledger.held_files(engine, meta["billing_month"])
    month_report["changed_files"] = ledger.changed_files(engine, meta["billing_month"])
    month_report["price_differences"] = meta["price_differences"]
    month_report["suspense_accounts"] = report.suspense_accounts(_read_parts(meta, "suspense"))
    month_report["stale_entitlements"] = _read(meta, "stale_accounts").to_dict("records")
    month_report["entitlement_snapshot"] = meta["entitlement_snapshot"]
    previous = meta["batch"]["superseded_batch_id"]
    month_report["changes"] = (
        None if previous is None else report.diff_lines(load.batch_lines(engine, previous), loaded)
    )
    csv_file, excel_file = billing_file.write(
        loaded, meta["billing_month"], config.billing_file_columns, _work_dir(meta)
    )
    month_report["billing_file"] = {"csv": str(csv_file), "xlsx": str(excel_file)}
    if month_report["unbillable_ranges"]:
        _send(
            config,
            alerts.unbillable_alert(meta["billing_month"], month_report["unbillable_ranges"]),
        )
    if month_report["suspense_accounts"]:
        _send(
            config, alerts.suspense_alert(meta["billing_month"], month_report["suspense_accounts"])
        )
    _work_file(meta, "report.json").write_text(json.dumps(month_report, indent=1), encoding="utf-8")
    text = report.render_text(month_report)
    _work_file(meta, "report.txt").write_text(text + "\n", encoding="utf-8")
    log.info("month report\n%s", text)
    subject = f"[CDR billing] Month report {meta['billing_month']}: {len(loaded)} billing lines (batch {meta['batch']['batch_id']})"
    _send(config, alerts.Alert("month_report", subject, html_body=report.render_html(month_report)))
    return {**meta, "report": str(_work_file(meta, "report.json"))}
