"""What each Airflow task does: run one stage on the run's work directory.

Every stage takes the small metadata dict of the stage before it (XCom), reads its input
Parquet files, calls the domain functions and writes its outputs as Parquet next to them.
The dict carries paths and counts only, never data.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from cdr_billing import (
    acquire,
    aggregate,
    alerts,
    attribute,
    billing_file,
    database,
    entitlements,
    ledger,
    lineage,
    load,
    migrations,
    rate,
    read,
    report,
    tariff,
    validate,
)
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.months import BillingMonth, resolve_billing_month

log = logging.getLogger(__name__)
Meta = dict[str, Any]


class MissingFilesError(RuntimeError):
    """A source delivered no usable file for the billing month."""


class FilesNotArrivedError(RuntimeError):
    """The deadline passed and a source has still delivered nothing for the month."""


def _work_file(meta: Meta, name: str) -> Path:
    return Path(meta["work_dir"]) / name


def _write(meta: Meta, name: str, frame: pd.DataFrame) -> None:
    frame.to_parquet(_work_file(meta, f"{name}.parquet"), index=False)


def _read(meta: Meta, name: str) -> pd.DataFrame:
    return pd.read_parquet(_work_file(meta, f"{name}.parquet"))


def _with_counts(meta: Meta, **counts: int) -> Meta:
    return {**meta, "counts": {**meta.get("counts", {}), **{k: int(v) for k, v in counts.items()}}}


def _send(config: PipelineConfig, alert: alerts.Alert) -> None:
    """Mail an alert to the recipients of its kind."""
    alerts.send(alert, list(config.recipients(alert.kind)), config.smtp_connection)


def run_work_dir(config: PipelineConfig, billing_month: str, run_id: str) -> Path:
    """The directory a run keeps its Parquet files, GX results and report in."""
    return config.work_root / billing_month / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def start_run(
    billing_month_param: str | None,
    data_interval_start: datetime | None,
    run_id: str,
    config: PipelineConfig | None = None,
    refresh_entitlements: bool = False,
    clear_number: int = 0,
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
        "refresh_entitlements": refresh_entitlements,
    }


def _cdr_requests(config: PipelineConfig, month: str) -> list[acquire.FileRequest]:
    return [acquire.FileRequest("cdr", s.name, s.remote_dir, s.pattern_for(month)) for s in config.sources]


def _reference_requests(config: PipelineConfig, month: str) -> list[acquire.FileRequest]:
    references = [("tariff", config.tariff)]
    if config.entitlement_source.source == "file":
        references.append(("entitlements", config.entitlements))
    return [
        acquire.FileRequest(role, role, files.remote_dir, files.pattern_for(month), newest_only=True)
        for role, files in references
    ]


def files_arrived(meta: Meta, config: PipelineConfig | None = None, now: datetime | None = None) -> bool:
    """True once every CDR source has a file for the month (on a server or archived).

    Past the deadline (month end + files_deadline_days) a missing source fails the run.
    """
    config = config or load_config()
    month = BillingMonth.parse(meta["billing_month"])
    requests = _cdr_requests(config, str(month))
    missing = acquire.find_missing_sources(list(config.sftp_connections), requests, config.connect_timeout_seconds)
    if missing:
        engine = database.billing_engine(config.billing.connection)
        migrations.upgrade(engine)
        archived = ledger.archived_month_files(engine, str(month), set(missing), present=set())
        missing = [source for source in missing if source not in {f.source for f in archived}]
    if not missing:
        return True
    deadline = month.bounds(config.billing.timezone)[1] + timedelta(days=config.files_deadline_days)
    if (now or datetime.now(UTC)) >= deadline:
        _send(config, alerts.files_not_arrived_alert(str(month), missing, f"{deadline:%Y-%m-%d %H:%M %Z}"))
        raise FilesNotArrivedError(
            f"files for month {month} have not arrived: nothing from {missing} by the deadline {deadline:%Y-%m-%d %H:%M %Z}"
        )
    log.info("files for %s not there yet from %s; checking again later (deadline %s)", month, missing, deadline)
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
        _work_file(meta, "incoming"),
        config.connect_timeout_seconds,
        reuse=ledger.archived_copy_finder(engine),
    )
    for failed in result.failovers:
        _send(config, alerts.failover_alert(month, failed, result.server))
    fetched = [ledger.archive(f, config.archive_root) if f.downloaded else f for f in result.files]
    entries = ledger.record(engine, month, fetched)
    for entry in entries:
        if entry.status == ledger.HELD:
            _send(config, alerts.held_file_alert(month, entry.file.source, entry.file.name, entry.reason or "held earlier"))
    usable = [e.file for e in entries if e.status == ledger.ACCEPTED]
    processed_dirs = {s.name: s.processed_dir for s in config.sources if s.processed_dir}
    moves = [(f.remote_path, processed_dirs[f.source]) for f in usable if f.downloaded and f.source in processed_dirs]
    acquire.move_to_processed(result.server, moves, config.connect_timeout_seconds)
    # Billed files of the month that the servers no longer list, or list with held content.
    usable += ledger.archived_month_files(engine, month, {s.name for s in config.sources}, {(f.source, f.name) for f in usable})
    missing = [r.source for r in requests if r.source not in {f.source for f in usable}]
    if missing:
        raise MissingFilesError(f"no usable files for month {month} from sources {missing}")
    counts = Counter(e.status for e in entries)
    downloaded = sum(f.downloaded for f in usable)
    log.info(
        "%d files usable (%d downloaded, %d from the archive), %d held, %d duplicate deliveries, %d other files ignored, "
        "%d failovers",
        len(usable), downloaded, len(usable) - downloaded, counts[ledger.HELD], counts[ledger.DUPLICATE_CONTENT],
        result.ignored, len(result.failovers),
    )  # fmt: skip
    return {
        **meta,
        "files": [f.as_dict() for f in usable],
        "server": result.server,
        "failovers": result.failovers,
        "file_counts": {
            "downloaded": downloaded,
            "reused": len(usable) - downloaded,
            "held": counts[ledger.HELD],
            "duplicate_content": counts[ledger.DUPLICATE_CONTENT],
            "ignored": result.ignored,
        },
    }


def _files(meta: Meta, role: str) -> list[dict[str, Any]]:
    return [f for f in meta["files"] if f["role"] == role]


def validate_files(meta: Meta, config: PipelineConfig | None = None) -> Meta:
    """Read and check every CDR file: accepted calls, quarantine, duplicates. A file that
    fails is mailed about (file, failed expectations, masked sample rows) and fails the task."""
    config = config or load_config()
    try:
        return _validate_files(meta, config)
    except validate.FileValidationError as exc:
        _send(config, alerts.validation_alert(meta["billing_month"], exc.file_name, exc.problem, exc.expectations, exc.samples))
        raise


def _validate_files(meta: Meta, config: PipelineConfig) -> Meta:
    month = BillingMonth.parse(meta["billing_month"])
    accepted, quarantined, file_stats = [], [], []
    for item in _files(meta, "cdr"):
        profile = config.profile_for(item["source"])
        try:
            raw = read.read_cdr_file(Path(item["local_path"]), profile).assign(source=item["source"])
        except read.FileReadError as exc:
            raise validate.FileValidationError(item["name"], str(exc).removeprefix(f"{item['name']}: ")) from exc
        checked = validate.check_rows(raw, profile, month, config.billing)
        accepted.append(checked.accepted)
        quarantined.append(checked.quarantined)
        file_stats.append(
            {
                "sha256": item["sha256"],
                "name": item["name"],
                "source": item["source"],
                "read": len(raw),
                "accepted": len(checked.accepted),
                "quarantined": len(checked.quarantined),
            }
        )
        log.info(
            "%s: read %d, accepted %d, quarantined %d", item["name"], len(raw), len(checked.accepted), len(checked.quarantined)
        )
    engine = database.billing_engine(config.billing.connection)
    migrations.upgrade(engine)
    quarantine = pd.concat(quarantined, ignore_index=True)
    load.store_quarantine(engine, meta["billing_month"], meta["run_id"], quarantine)
    for stats, rejected in zip(file_stats, quarantined, strict=True):
        validate.enforce_rejection_threshold(stats["name"], stats["read"], rejected, config.billing.max_rejected_share)
    calls, duplicates = validate.split_duplicates(pd.concat(accepted, ignore_index=True))
    runner = validate.ExpectationRunner(_work_file(meta, "gx_results"))
    for stats in file_stats:
        in_file = calls["source_file"] == stats["name"]
        runner.validate_file(calls[in_file], stats["name"], config.profile_for(stats["source"]), month, config.billing)
        stats["billable"] = int(in_file.sum())
        stats["duplicate"] = int((duplicates["source_file"] == stats["name"]).sum())
        report.reconcile_file(stats)
        ledger.record_reconciliation(
            engine, stats["source"], stats["name"], stats["sha256"],
            {f"rows_{key}": stats[key] for key in ("read", "billable", "quarantined", "duplicate")},
        )  # fmt: skip
    _write(meta, "calls", calls)
    _write(meta, "quarantined", quarantine)
    _write(meta, "duplicates", duplicates)
    log.info("month: %d calls, %d duplicates", len(calls), len(duplicates))
    return _with_counts(
        {**meta, "file_stats": file_stats, "data_docs": str(runner.docs_dir / "index.html")},
        read=sum(s["read"] for s in file_stats),
        quarantined=len(quarantine),
        duplicates=len(duplicates),
    )


def rate_calls(meta: Meta, config: PipelineConfig | None = None) -> Meta:
    """Price the month's calls; set aside unbillable and failed calls."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    tariff_file = Path(_files(meta, "tariff")[0]["local_path"])
    newest_version = tariff.load_file(engine, tariff_file, config.billing.timezone)  # a known file keeps its version
    rates = tariff.all_rates(engine)
    calls, merged_parts = rate.combine_partial_calls(_read(meta, "calls"))
    priced, unbillable, failed = rate.rate_calls(calls, rates, config.billing, config.markups())
    price_differences = rate.compare_with_tariff(priced, rates, config.billing)
    _write(meta, "priced", priced)
    _write(meta, "unbillable", unbillable)
    _write(meta, "combined", merged_parts)
    _write(meta, "price_differences", price_differences)
    log.info(
        "priced %d calls with tariff versions up to %d, %d unbillable, %d failed (not billable)",
        len(priced), newest_version, len(unbillable), len(failed),
    )  # fmt: skip
    facts = {"tariff_version": newest_version, "price_differences": len(price_differences)}
    return _with_counts({**meta, **facts}, unbillable=len(unbillable), not_billable=len(failed), combined=len(merged_parts))


def attribute_calls(meta: Meta, config: PipelineConfig | None = None) -> Meta:
    """Join priced calls to the entitlement snapshot valid at each call; set aside suspense calls."""
    config = config or load_config()
    settings, engine, now = config.entitlement_source, database.billing_engine(config.billing.connection), datetime.now(UTC)

    def capture() -> entitlements.Snapshot:
        if settings.source == "sql":
            return entitlements.from_query(settings.connection, settings.query, now)
        return entitlements.from_file(Path(_files(meta, "entitlements")[0]["local_path"]), now)

    snapshot_id = entitlements.snapshot_for_month(engine, meta["billing_month"], capture, meta.get("refresh_entitlements", False))
    attributed, suspense = attribute.attribute_calls(
        _read(meta, "priced"), entitlements.history(engine, snapshot_id), snapshot_id
    )
    month_end = BillingMonth.parse(meta["billing_month"]).bounds(config.billing.timezone)[1]
    stale = attribute.stale_accounts(attributed, pd.Timestamp(month_end) - pd.Timedelta(days=settings.stale_after_days))
    _write(meta, "attributed", attributed)
    _write(meta, "suspense", suspense)
    _write(meta, "stale_accounts", pd.DataFrame(stale, columns=["account_id", "customer_id", "last_login", "calls"]))
    log.info(
        "snapshot %d: attributed %d calls, %d in suspense, %d stale accounts",
        snapshot_id,
        len(attributed),
        len(suspense),
        len(stale),
    )
    facts = {"entitlement_snapshot": snapshot_id, "delivery_failed_billed": int((attributed["completion_status"] == 3).sum())}
    return _with_counts({**meta, **facts}, billed=len(attributed), suspense=len(suspense))


def aggregate_lines(meta: Meta) -> Meta:
    """Sum attributed calls per user, then into billing lines; prove the totals and counts."""
    attributed = _read(meta, "attributed")
    user_lines = aggregate.aggregate_users(attributed)
    lines = aggregate.aggregate_lines(user_lines)
    report.check_totals(lines, attributed)
    report.reconcile(meta["counts"])
    shares = aggregate.revenue_share(attributed)
    _write(meta, "user_lines", user_lines)
    _write(meta, "lines", lines)
    _write(meta, "revenue_share", shares)
    log.info("%d billing lines from %d user lines; revenue share of %d providers", len(lines), len(user_lines),
             shares["service_provider"].nunique())  # fmt: skip
    return meta


def _detail(frame: pd.DataFrame) -> pd.Series:
    """What an operator needs to act on a non-billed row: the account, and the number range."""
    columns = [c for c in ("user_id", "number_range", "session_id") if c in frame]
    return pd.Series([json.dumps(record) for record in frame[columns].to_dict("records")], index=frame.index, dtype=str)


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
        frame = _read(meta, name)
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
        billed_calls=lineage.billed_calls(_read(meta, "attributed"), _read(meta, "combined")),
        exceptions=_exception_rows(meta, skip_kinds=("quarantined",)),  # those are in quarantined_row already
    )
    result = load.load_month(engine, meta["billing_month"], meta["run_id"], batch, meta["counts"])
    log.info(
        "batch %s is current for %s (superseded %s, already loaded: %s)",
        result.batch_id,
        meta["billing_month"],
        result.superseded_batch_id,
        result.already_loaded,
    )
    return {**meta, "batch": {"batch_id": result.batch_id, "superseded_batch_id": result.superseded_batch_id}}


def report_month(meta: Meta, config: PipelineConfig | None = None) -> Meta:
    """Write the month report from the loaded batch and check it matches the run."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    loaded = load.current_lines(engine, meta["billing_month"])
    computed = _read(meta, "lines")
    if not loaded.reset_index(drop=True).equals(computed.astype(loaded.dtypes.to_dict()).reset_index(drop=True)):
        raise report.ReconciliationError("the billing database's current lines differ from this run's lines")
    month_report = report.build_report(meta["billing_month"], meta["batch"], meta["counts"], loaded, _exception_rows(meta))
    month_report["customer_totals"] = report.customer_totals(loaded)
    month_report["revenue_share"] = report.revenue_share_report(_read(meta, "revenue_share"))
    month_report["files"] = meta["file_stats"]
    month_report["data_docs"] = meta["data_docs"]
    month_report["unbillable_ranges"] = report.unbillable_ranges(_read(meta, "unbillable"))
    month_report["delivery_failed_billed"] = meta["delivery_failed_billed"]
    month_report["price_differences"] = meta["price_differences"]
    month_report["suspense_accounts"] = report.suspense_accounts(_read(meta, "suspense"))
    month_report["stale_entitlements"] = _read(meta, "stale_accounts").to_dict("records")
    month_report["entitlement_snapshot"] = meta["entitlement_snapshot"]
    previous = meta["batch"]["superseded_batch_id"]
    month_report["changes"] = None if previous is None else report.diff_lines(load.batch_lines(engine, previous), loaded)
    csv_file, excel_file = billing_file.write(loaded, meta["billing_month"], config.billing_file_columns, Path(meta["work_dir"]))
    month_report["billing_file"] = {"csv": str(csv_file), "xlsx": str(excel_file)}
    if month_report["unbillable_ranges"]:
        _send(config, alerts.unbillable_alert(meta["billing_month"], month_report["unbillable_ranges"]))
    if month_report["suspense_accounts"]:
        _send(config, alerts.suspense_alert(meta["billing_month"], month_report["suspense_accounts"]))
    _work_file(meta, "report.json").write_text(json.dumps(month_report, indent=1), encoding="utf-8")
    text = report.render_text(month_report)
    _work_file(meta, "report.txt").write_text(text + "\n", encoding="utf-8")
    log.info("month report\n%s", text)
    subject = (
        f"[CDR billing] Month report {meta['billing_month']}: {len(loaded)} billing lines (batch {meta['batch']['batch_id']})"
    )
    _send(config, alerts.Alert("month_report", subject, html_body=report.render_html(month_report)))
    return {**meta, "report": str(_work_file(meta, "report.json"))}
