"""The file ledger: every fetched file, its content hash and what became of it.

A file is archived under <archive_root>/<source>/<sha256>/<name> and recorded once per
(source, name, content). Same name and content again: the archived copy serves, nothing is
billed twice. Same name, new content: the new content is *held* (never billed, never
silently replacing the old) and alerted, until an operator who has checked it releases it
(`python -m cdr_billing.ledger release NAME`, or the DAG param `release_held_files`): the
released content is then the file's accepted one and the content billed before is
`replaced`, so the month's next run bills the new content. A CDR file's content under a new
name: a duplicate delivery, not billed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from cdr_billing import database
from cdr_billing.acquire import FetchedFile, RemoteFile
from cdr_billing.schema import cdr_file

ACCEPTED, HELD, DUPLICATE_CONTENT, REPLACED = "accepted", "held", "duplicate_content", "replaced"


class LedgerError(ValueError):
    """A ledger request names no file, or more than one."""


class Verdict(NamedTuple):
    """The ledger status of a file's content, and why (empty when it is accepted)."""

    status: str
    reason: str = ""


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
        role,
        row.source,
        row.name,
        row.archive_path,
        row.size,
        row.remote_mtime,
        row.sha256,
        row.server,
        downloaded=False,
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
    conditions = [
        cdr_file.c.source == source,
        *(cdr_file.c[name] == value for name, value in equal.items()),
    ]
    return conn.execute(select(column).where(*conditions)).scalar()


def _status_of_new_content(conn, fetched: FetchedFile) -> Verdict:
    """Status of content the ledger has not seen under this name."""
    other_content = _ledger_value(
        conn, cdr_file.c.sha256, fetched.source, name=fetched.name, status=ACCEPTED
    )
    if other_content is not None:
        return Verdict(
            HELD, f"name already billed with other content (sha256 {other_content[:12]}...)"
        )
    if fetched.role != "cdr":  # a tariff or snapshot republished unchanged under a new name is fine
        return Verdict(ACCEPTED)
    same_content = _ledger_value(
        conn, cdr_file.c.name, fetched.source, sha256=fetched.sha256, status=ACCEPTED
    )
    if same_content is not None:
        return Verdict(DUPLICATE_CONTENT, f"same content as {same_content}")
    return Verdict(ACCEPTED)


def record(engine: Engine, billing_month: str, files: list[FetchedFile]) -> list[LedgerEntry]:
    """Record fetched files in the ledger (idempotent) and return each file's status."""
    entries = []
    with engine.begin() as conn:
        database.hold_lock(conn, "cdr_file")
        for fetched in files:
            known = _ledger_value(
                conn, cdr_file.c.status, fetched.source, name=fetched.name, sha256=fetched.sha256
            )
            if known is not None:
                entries.append(LedgerEntry(fetched, known))
                continue
            verdict = _status_of_new_content(conn, fetched)
            conn.execute(
                insert(cdr_file).values(
                    source=fetched.source,
                    name=fetched.name,
                    size=fetched.size,
                    remote_mtime=fetched.remote_mtime,
                    sha256=fetched.sha256,
                    server=fetched.server,
                    billing_month=billing_month,
                    status=verdict.status,
                    archive_path=fetched.local_path,
                )
            )
            entries.append(LedgerEntry(fetched, verdict.status, verdict.reason))
    return entries


def archived_month_files(
    engine: Engine, billing_month: str, sources: set[str], present: set[tuple[str, str]]
) -> list[FetchedFile]:
    """Accepted CDR files of the month that the servers no longer list (moved or removed):
    served from the archive so a re-run bills the same files."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(cdr_file).where(
                cdr_file.c.billing_month == billing_month,
                cdr_file.c.status == ACCEPTED,
                cdr_file.c.source.in_(sources),
            )
        ).all()
    return [
        _fetched_from_row(r, "cdr")
        for r in rows
        if (r.source, r.name) not in present and Path(r.archive_path).is_file()
    ]


def record_reconciliation(
    engine: Engine, source: str, name: str, sha256: str, counts: dict[str, int]
) -> None:
    """Store a file's row reconciliation (rows_read, rows_billable, ...) on its ledger row."""
    with engine.begin() as conn:
        conn.execute(
            update(cdr_file)
            .where(
                cdr_file.c.source == source, cdr_file.c.name == name, cdr_file.c.sha256 == sha256
            )
            .values(**counts)
        )


def delivery_order(engine: Engine, files: list[dict]) -> list[dict]:
    """CDR files (dicts with source, name, sha256) in the order their calls were delivered: the
    ledger's first-seen time, then source and name. It is the same whether a file comes from a
    server or the archive, and whatever order the servers list files in: first delivery wins by
    it."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(cdr_file.c.source, cdr_file.c.name, cdr_file.c.sha256, cdr_file.c.first_seen)
        ).all()
    first_seen = {(r.source, r.name, r.sha256): r.first_seen for r in rows}
    return sorted(
        files,
        key=lambda f: (first_seen[(f["source"], f["name"], f["sha256"])], f["source"], f["name"]),
    )


@dataclass(frozen=True)
class ChangedFile:
    """A file whose held content an operator released: the content billed before and now."""

    source: str
    name: str
    billed_sha256: str
    released_sha256: str

    def as_dict(self) -> dict[str, str]:
        return {
            "source": self.source,
            "name": self.name,
            "billed_sha256": self.billed_sha256,
            "released_sha256": self.released_sha256,
        }


def _named(conn, name: str, source: str | None, status: str):
    conditions = [cdr_file.c.name == name, cdr_file.c.status == status]
    return conn.execute(
        select(cdr_file).where(*conditions, *([cdr_file.c.source == source] if source else []))
    ).all()


def release_held(
    engine: Engine, name: str, source: str | None = None, sha256_prefix: str = ""
) -> ChangedFile:
    """Make a held file's content the accepted one (the content billed before becomes
    `replaced`); the month's next run bills it. Releasing it again returns the same change."""
    with engine.begin() as conn:
        database.hold_lock(conn, "cdr_file")
        held = [r for r in _named(conn, name, source, HELD) if r.sha256.startswith(sha256_prefix)]
        if not held:
            released = [
                r
                for r in _named(conn, name, source, ACCEPTED)
                if r.sha256.startswith(sha256_prefix)
            ]
            replaced = _named(conn, name, source, REPLACED)
            if len(released) == 1 and replaced:  # released before (a retried task): the same change
                return ChangedFile(
                    released[0].source, name, replaced[-1].sha256, released[0].sha256
                )
            raise LedgerError(
                f"no held file named {name!r}" + (f" from {source}" if source else "")
            )
        if len(held) > 1:
            contents = ", ".join(f"{r.source} {r.sha256[:12]}" for r in held)
            raise LedgerError(
                f"{name!r} is held with several contents ({contents}): name one with --sha256"
            )
        (chosen,) = held
        billed = _named(conn, name, chosen.source, ACCEPTED)
        conn.execute(
            update(cdr_file)
            .where(cdr_file.c.file_id.in_([r.file_id for r in billed]))
            .values(status=REPLACED)
        )
        conn.execute(
            update(cdr_file).where(cdr_file.c.file_id == chosen.file_id).values(status=ACCEPTED)
        )
    return ChangedFile(chosen.source, name, billed[0].sha256 if billed else "", chosen.sha256)


def _month_rows(engine: Engine, billing_month: str, status: str):
    with engine.connect() as conn:
        query = select(cdr_file).where(
            cdr_file.c.billing_month == billing_month, cdr_file.c.status == status
        )
        return conn.execute(
            query.order_by(cdr_file.c.source, cdr_file.c.name, cdr_file.c.first_seen)
        ).all()


def held_files(engine: Engine, billing_month: str) -> list[dict[str, str]]:
    """The month's files held with changed content, for the report and the Billing page."""
    return [
        {"source": r.source, "name": r.name, "sha256": r.sha256, "first_seen": str(r.first_seen)}
        for r in _month_rows(engine, billing_month, HELD)
    ]


def changed_files(engine: Engine, billing_month: str) -> list[dict[str, str]]:
    """The month's files whose released content replaced the content billed before."""
    accepted = {(r.source, r.name): r.sha256 for r in _month_rows(engine, billing_month, ACCEPTED)}
    replaced = {(r.source, r.name): r.sha256 for r in _month_rows(engine, billing_month, REPLACED)}
    return [
        ChangedFile(source, name, old, accepted[(source, name)]).as_dict()
        for (source, name), old in replaced.items()
        if (source, name) in accepted
    ]


def main(argv: list[str] | None = None) -> int:
    """`python -m cdr_billing.ledger held|release`: list the held files, or release one."""
    from cdr_billing.config import load_config
    from cdr_billing.migrations import upgrade

    parser = argparse.ArgumentParser(description="The file ledger: held files and their release.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("held", help="list the held files").add_argument(
        "--month", help="YYYY-MM (default: all)"
    )
    release = commands.add_parser(
        "release", help="bill a held file's new content from the month's next run"
    )
    release.add_argument("name")
    release.add_argument("--source", help="the CDR source, when several hold that name")
    release.add_argument(
        "--sha256", default="", help="the start of the content's hash, when held twice"
    )
    args = parser.parse_args(argv)
    engine = database.billing_engine(load_config().billing.connection)
    upgrade(engine)
    if args.command == "held":
        with engine.connect() as conn:
            rows = conn.execute(
                select(cdr_file).where(
                    cdr_file.c.status == HELD,
                    *([cdr_file.c.billing_month == args.month] if args.month else []),
                )
            ).all()
        for r in rows:
            print(
                f"{r.billing_month}  {r.source:<14} {r.name:<40} "
                f"sha256 {r.sha256[:12]}  first seen {r.first_seen}"
            )
        return 0
    try:
        changed = release_held(engine, args.name, args.source, args.sha256)
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{changed.source} {changed.name}: content {changed.released_sha256[:12]} released "
        f"(billed before: {changed.billed_sha256[:12] or 'none'}); re-run its month to bill it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
