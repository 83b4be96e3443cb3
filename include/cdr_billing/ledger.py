"""The file ledger: every fetched file, its content hash and what became of it.

A file is archived under <archive_root>/<source>/<sha256>/<name> and recorded once per
(source, name, content). Same name and content again: the archived copy serves, nothing is
billed twice. Same name, new content: the new content is *held* (never billed, never
silently replacing the old) and alerted. A CDR file's content under a new name: a
duplicate delivery, not billed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from cdr_billing import database
from cdr_billing.acquire import FetchedFile, RemoteFile
from cdr_billing.schema import cdr_file

ACCEPTED, HELD, DUPLICATE_CONTENT = "accepted", "held", "duplicate_content"


@dataclass(frozen=True)
class LedgerEntry:
    """A fetched file and its ledger status."""

    file: FetchedFile
    status: str
    reason: str = ""


def archive(fetched: FetchedFile, archive_root: Path) -> FetchedFile:
    """Move a downloaded file into the content-addressed archive (atomic rename)."""
    target_dir = archive_root / fetched.source / fetched.sha256
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / fetched.name
    if target.exists():
        Path(fetched.local_path).unlink()
    else:
        os.replace(fetched.local_path, target)
    return fetched.moved_to(target)


def _fetched_from_row(row, role: str) -> FetchedFile:
    return FetchedFile(
        role, row.source, row.name, row.archive_path, row.size, row.remote_mtime, row.sha256, row.server, downloaded=False
    )


def archived_copy_finder(engine: Engine):
    """Return reuse(remote) -> the archived copy of an accepted file with the same name,
    size and modification time, or None (then it is downloaded)."""
    with engine.connect() as conn:
        rows = conn.execute(select(cdr_file).where(cdr_file.c.status == ACCEPTED)).all()
    by_remote = {(r.source, r.name, r.size, r.remote_mtime): r for r in rows}

    def reuse(remote: RemoteFile) -> FetchedFile | None:
        row = by_remote.get((remote.source, remote.name, remote.size, remote.mtime))
        if row is None or not Path(row.archive_path).is_file():
            return None
        return _fetched_from_row(row, remote.role)

    return reuse


def _ledger_value(conn, column, source: str, **equal: str):
    """`column` of the source's first ledger row whose columns equal `equal`, or None."""
    conditions = [cdr_file.c.source == source, *(cdr_file.c[name] == value for name, value in equal.items())]
    return conn.execute(select(column).where(*conditions)).scalar()


def _status_of_new_content(conn, fetched: FetchedFile) -> tuple[str, str]:
    """Status of content the ledger has not seen under this name."""
    other_content = _ledger_value(conn, cdr_file.c.sha256, fetched.source, name=fetched.name, status=ACCEPTED)
    if other_content is not None:
        return HELD, f"name already billed with other content (sha256 {other_content[:12]}...)"
    if fetched.role != "cdr":  # a tariff or snapshot republished unchanged under a new name is fine
        return ACCEPTED, ""
    same_content = _ledger_value(conn, cdr_file.c.name, fetched.source, sha256=fetched.sha256, status=ACCEPTED)
    if same_content is not None:
        return DUPLICATE_CONTENT, f"same content as {same_content}"
    return ACCEPTED, ""


def record(engine: Engine, billing_month: str, files: list[FetchedFile]) -> list[LedgerEntry]:
    """Record fetched files in the ledger (idempotent) and return each file's status."""
    entries = []
    with engine.begin() as conn:
        database.hold_lock(conn, "cdr_file")
        for fetched in files:
            known = _ledger_value(conn, cdr_file.c.status, fetched.source, name=fetched.name, sha256=fetched.sha256)
            if known is not None:
                entries.append(LedgerEntry(fetched, known))
                continue
            status, reason = _status_of_new_content(conn, fetched)
            conn.execute(
                insert(cdr_file).values(
                    source=fetched.source,
                    name=fetched.name,
                    size=fetched.size,
                    remote_mtime=fetched.remote_mtime,
                    sha256=fetched.sha256,
                    server=fetched.server,
                    billing_month=billing_month,
                    status=status,
                    archive_path=fetched.local_path,
                )
            )
            entries.append(LedgerEntry(fetched, status, reason))
    return entries


def archived_month_files(
    engine: Engine, billing_month: str, sources: set[str], present: set[tuple[str, str]]
) -> list[FetchedFile]:
    """Accepted CDR files of the month that the servers no longer list (moved or removed):
    served from the archive so a re-run bills the same files."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(cdr_file).where(
                cdr_file.c.billing_month == billing_month, cdr_file.c.status == ACCEPTED, cdr_file.c.source.in_(sources)
            )
        ).all()
    return [_fetched_from_row(r, "cdr") for r in rows if (r.source, r.name) not in present and Path(r.archive_path).is_file()]


def record_reconciliation(engine: Engine, source: str, name: str, sha256: str, counts: dict[str, int]) -> None:
    """Store a file's row reconciliation (rows_read, rows_billable, ...) on its ledger row."""
    with engine.begin() as conn:
        conn.execute(
            update(cdr_file)
            .where(cdr_file.c.source == source, cdr_file.c.name == name, cdr_file.c.sha256 == sha256)
            .values(**counts)
        )


def delivery_order(engine: Engine, files: list[dict]) -> list[dict]:
    """CDR files (dicts with source, name, sha256) in the order their calls were delivered: the
    ledger's first-seen time, then source and name. It is the same whether a file comes from a
    server or the archive, and whatever order the servers list files in: first delivery wins by it."""
    with engine.connect() as conn:
        rows = conn.execute(select(cdr_file.c.source, cdr_file.c.name, cdr_file.c.sha256, cdr_file.c.first_seen)).all()
    first_seen = {(r.source, r.name, r.sha256): r.first_seen for r in rows}
    return sorted(files, key=lambda f: (first_seen[(f["source"], f["name"], f["sha256"])], f["source"], f["name"]))
