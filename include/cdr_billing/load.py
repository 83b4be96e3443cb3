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
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine

CURRENT, SUPERSEDED = "current", "superseded"

metadata = MetaData()

billing_batch = Table(
    "billing_batch",
    metadata,
    Column("batch_id", Integer, primary_key=True, autoincrement=True),
    Column("billing_month", String(7), nullable=False),
    Column("run_id", String(250), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("loaded_at", DateTime(timezone=True), nullable=False, server_default=func.current_timestamp()),
    Column("counts", Text, nullable=False),
    Index(
        "one_current_batch_per_month",
        "billing_month",
        unique=True,
        postgresql_where=text("status = 'current'"),
        sqlite_where=text("status = 'current'"),
    ),
)

billing_line = Table(
    "billing_line",
    metadata,
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), primary_key=True),
    Column("customer_id", String(64), primary_key=True),
    Column("sequence_number", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("total_minor", BigInteger, nullable=False),
    Column("call_count", BigInteger, nullable=False),
    Column("billed_seconds", BigInteger, nullable=False),
)

billing_exception = Table(
    "billing_exception",
    metadata,
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("reason_code", String(64), nullable=False),
    Column("source_file", Text, nullable=False),
    Column("source_row", BigInteger, nullable=False),
    Column("transaction_id", Text, nullable=False),
    Column("detail", Text, nullable=False),
)


@dataclass(frozen=True)
class LoadResult:
    """The batch a load made current, and the one it superseded."""

    batch_id: int
    superseded_batch_id: int | None
    already_loaded: bool


def ensure_schema(engine: Engine) -> None:
    """Create the billing tables where missing."""
    metadata.create_all(engine)


def _lock_month(conn: Connection, billing_month: str) -> None:
    """Serialise loads of one month (PostgreSQL advisory lock; SQLite locks the file)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(billing_month.encode())})


def _records(frame: pd.DataFrame, batch_id: int) -> list[dict]:
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for record in records:
        record["batch_id"] = batch_id
    return records


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
            conn.execute(insert(billing_line), _records(lines, batch_id))
        if len(exceptions):
            conn.execute(insert(billing_exception), _records(exceptions, batch_id))
    return LoadResult(batch_id, previous, already_loaded=False)


def current_lines(engine: Engine, billing_month: str) -> pd.DataFrame:
    """Return the billing lines of the month's current batch."""
    query = (
        select(
            billing_line.c.customer_id,
            billing_line.c.sequence_number,
            billing_line.c.currency,
            billing_line.c.total_minor,
            billing_line.c.call_count,
            billing_line.c.billed_seconds,
        )
        .join(billing_batch, billing_batch.c.batch_id == billing_line.c.batch_id)
        .where(billing_batch.c.billing_month == billing_month, billing_batch.c.status == CURRENT)
        .order_by(billing_line.c.customer_id, billing_line.c.sequence_number, billing_line.c.currency)
    )
    with engine.connect() as conn:
        return pd.DataFrame(
            conn.execute(query).mappings().all(),
            columns=["customer_id", "sequence_number", "currency", "total_minor", "call_count", "billed_seconds"],
        )
