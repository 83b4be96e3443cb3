"""Load a month's billing lines into the billing database as one atomic batch.

A batch per run: the new batch becomes the month's current one and the previous one is
kept as superseded, in one transaction, under a per-month lock. A retried load of the
same run finds its batch and changes nothing.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from cdr_billing.schema import CURRENT, SUPERSEDED, billing_batch, billing_exception, billing_line, quarantined_row, to_records


@dataclass(frozen=True)
class LoadResult:
    """The batch a load made current, and the one it superseded."""

    batch_id: int
    superseded_batch_id: int | None
    already_loaded: bool


def _lock_month(conn: Connection, billing_month: str) -> None:
    """Serialise loads of one month (PostgreSQL advisory lock; SQLite locks the file)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(billing_month.encode())})


def load_month(
    engine: Engine, billing_month: str, run_id: str, lines: pd.DataFrame, exceptions: pd.DataFrame, counts: dict[str, int]
) -> LoadResult:
    """Make a new current batch for the month from lines and exception rows, atomically."""
    with engine.begin() as conn:
        _lock_month(conn, billing_month)
        existing = conn.execute(select(billing_batch.c.batch_id).where(billing_batch.c.run_id == run_id)).scalar()
        if existing is not None:
            return LoadResult(existing, None, already_loaded=True)
        previous = conn.execute(
            select(billing_batch.c.batch_id).where(
                billing_batch.c.billing_month == billing_month, billing_batch.c.status == CURRENT
            )
        ).scalar()
        if previous is not None:
            conn.execute(update(billing_batch).where(billing_batch.c.batch_id == previous).values(status=SUPERSEDED))
        batch_id = conn.execute(
            insert(billing_batch).values(
                billing_month=billing_month, run_id=run_id, status=CURRENT, counts=json.dumps(counts, sort_keys=True)
            )
        ).inserted_primary_key[0]
        if len(lines):
            conn.execute(insert(billing_line), to_records(lines, batch_id=batch_id))
        if len(exceptions):
            conn.execute(insert(billing_exception), to_records(exceptions, batch_id=batch_id))
    return LoadResult(batch_id, previous, already_loaded=False)


def store_quarantine(engine: Engine, billing_month: str, run_id: str, rows: pd.DataFrame) -> None:
    """Replace the run's quarantined rows (idempotent when the task is retried)."""
    with engine.begin() as conn:
        conn.execute(delete(quarantined_row).where(quarantined_row.c.run_id == run_id))
        if len(rows):
            columns = [c.name for c in quarantined_row.columns if c.name not in ("run_id", "billing_month")]
            conn.execute(insert(quarantined_row), to_records(rows[columns], run_id=run_id, billing_month=billing_month))


LINE_COLUMNS = ["customer_id", "sequence_number", "currency", "total_minor", "call_count", "billed_seconds"]


def _lines(engine: Engine, *conditions) -> pd.DataFrame:
    query = (
        select(*[billing_line.c[name] for name in LINE_COLUMNS])
        .join(billing_batch, billing_batch.c.batch_id == billing_line.c.batch_id)
        .where(*conditions)
        .order_by(billing_line.c.customer_id, billing_line.c.sequence_number, billing_line.c.currency)
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=LINE_COLUMNS)


def current_lines(engine: Engine, billing_month: str) -> pd.DataFrame:
    """Return the billing lines of the month's current batch."""
    return _lines(engine, billing_batch.c.billing_month == billing_month, billing_batch.c.status == CURRENT)


def batch_lines(engine: Engine, batch_id: int) -> pd.DataFrame:
    """Return the billing lines of one batch (current or superseded)."""
    return _lines(engine, billing_batch.c.batch_id == batch_id)
