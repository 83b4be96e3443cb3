"""wait_for_cdr_files, fetch_cdr_files and list_cdr_files: the month's files, from the first SFTP
server that delivers them, recorded in the ledger."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.engine import Engine

from cdr_billing import acquire, alerts, database, ledger
from cdr_billing.acquire import FetchedFile
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import FetchedMonth, FileCounts, Run
from cdr_billing.months import BillingMonth
from cdr_billing.tasks.run import send

log = logging.getLogger(__name__)


class MissingFilesError(RuntimeError):
    """A source delivered no usable file for the billing month."""


class FilesNotArrivedError(AirflowFailException):
    """The deadline passed and a source has still delivered nothing for the month: final (a retry
    would only wait and mail again); its files_not_arrived alert is the one mail."""

    alert_mailed = True


def cdr_requests(config: PipelineConfig, month: str) -> list[acquire.FileRequest]:
    """What to fetch of each CDR source for the month."""
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


def reference_requests(config: PipelineConfig, month: str) -> list[acquire.FileRequest]:
    """The month's tariff and, from files, its entitlement snapshots: the one in force on the
    1st and every later one (a mid-month change bills each call as of its time)."""
    tariff = config.tariff
    requests = [
        acquire.FileRequest("tariff", "tariff", tariff.remote_dir, tariff.pattern_for(month), True)
    ]
    if config.entitlement_source.source == "file":
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
    run: Run, config: PipelineConfig | None = None, now: datetime | None = None
) -> bool:
    """True once every CDR source has a stable file for the month (on a server or archived):
    a source whose only files are still being written has not arrived.

    Past the deadline (month end + files_deadline_days) a missing source fails the run.
    """
    config = config or load_config()
    month = BillingMonth.parse(run.billing_month)
    missing = acquire.find_missing_sources(
        list(config.sftp_connections),
        cdr_requests(config, str(month)),
        config.connect_timeout_seconds,
        config.stable_seconds,
    )
    if missing:
        engine = database.billing_engine(config.billing.connection)
        archived = ledger.archived_month_files(engine, str(month), set(missing), present=set())
        missing = [source for source in missing if source not in {f.source for f in archived}]
    if not missing:
        return True
    deadline = month.bounds(config.billing.timezone)[1] + timedelta(days=config.files_deadline_days)
    by = f"{deadline:%Y-%m-%d %H:%M %Z}"
    if (now or datetime.now(UTC)) >= deadline:
        send(config, alerts.files_not_arrived_alert(str(month), missing, by))
        raise FilesNotArrivedError(
            f"files for month {month} have not arrived: nothing from {missing} by the deadline {by}"
        )
    log.info(
        "files for %s not there yet from %s; checking again later (deadline %s)",
        month,
        missing,
        deadline,
    )
    return False


def fetch_cdr_files(
    run: Run, config: PipelineConfig | None = None, every_source: bool = True
) -> FetchedMonth:
    """Fetch the month's CDR files, tariff and entitlement snapshots; record them in the ledger;
    mail each failover and each held file. Without `every_source` (the prepaid runs during the
    month) a CDR source with no file yet is not an error; the tariff still is."""
    config = config or load_config()
    month = run.billing_month
    engine = database.billing_engine(config.billing.connection)
    requests = cdr_requests(config, month) + reference_requests(config, month)
    result = acquire.fetch_with_failover(
        list(config.sftp_connections),
        requests,
        config.archive_root / "incoming" / Path(run.work_dir).name,  # archived from here
        config.connect_timeout_seconds,
        reuse=ledger.archived_copy_finder(engine),
        stable_seconds=config.stable_seconds,
    )
    for failed in result.failovers:
        send(config, alerts.failover_alert(month, failed, result.server))
    fetched = [ledger.archive(f, config.archive_root) if f.downloaded else f for f in result.files]
    entries = _release(engine, run, ledger.record(engine, month, fetched))
    for entry in entries:
        if entry.status == ledger.HELD:
            reason = entry.reason or "held earlier"
            send(config, alerts.held_file_alert(month, entry.file.source, entry.file.name, reason))
    usable = [e.file for e in entries if e.status == ledger.ACCEPTED]
    _move_to_processed(config, result.server, usable)
    # Billed files of the month that the servers no longer list, or list with held content.
    usable += ledger.archived_month_files(
        engine, month, {s.name for s in config.sources}, {(f.source, f.name) for f in usable}
    )
    required = [r for r in requests if every_source or r.role != "cdr"]
    missing = [r.source for r in required if r.source not in {f.source for f in usable}]
    if missing:
        unstable = sorted(r.name for r in result.not_yet_stable)
        raise MissingFilesError(
            f"no usable files for month {month} from sources {missing} (not yet stable: {unstable})"
        )
    counts = Counter(e.status for e in entries)
    file_counts = FileCounts(
        downloaded=sum(f.downloaded for f in result.files),
        reused=sum(not f.downloaded for f in usable),
        held=counts[ledger.HELD],
        duplicate_content=counts[ledger.DUPLICATE_CONTENT],
        ignored=result.ignored,
        not_yet_stable=len(result.not_yet_stable),
    )
    log.info(
        "%d files usable (%d from the archive), %d downloaded, %d held, %d duplicate deliveries, "
        "%d other files ignored, %d failovers, %d not yet stable (left for a later run)",
        len(usable),
        file_counts.reused,
        file_counts.downloaded,
        file_counts.held,
        file_counts.duplicate_content,
        file_counts.ignored,
        len(result.failovers),
        file_counts.not_yet_stable,
    )
    return FetchedMonth(run, tuple(usable), result.server, tuple(result.failovers), file_counts)


def _move_to_processed(config: PipelineConfig, server: str, usable: list[FetchedFile]) -> None:
    """Move the downloaded files of the sources that ask for it to their processed folder."""
    processed_dirs = {s.name: s.processed_dir for s in config.sources if s.processed_dir}
    moves = [
        (f.remote_path, processed_dirs[f.source])
        for f in usable
        if f.downloaded and f.source in processed_dirs
    ]
    acquire.move_to_processed(server, moves, config.connect_timeout_seconds)


def _release(
    engine: Engine, run: Run, entries: list[ledger.LedgerEntry]
) -> list[ledger.LedgerEntry]:
    """Release the held files the run names (`release_held_files`): their content is billed."""
    changed = [ledger.release_held(engine, name) for name in run.release_held_files]
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


def cdr_files(fetched: FetchedMonth) -> list[FetchedFile]:
    """The month's CDR files: validate_cdr_file is mapped over them, one task per file."""
    return fetched.of_role("cdr")
