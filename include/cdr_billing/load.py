"""Load a month's billing lines into the billing database as one atomic batch.

A batch per run: the new batch becomes the month's current one and the previous one is
kept as superseded, in one transaction, under a per-month lock; the new batch stores which
one it superseded. A retried load of the same run (its first attempt committed, then died)
finds its batch, changes nothing and returns the same result, superseded batch included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from cdr_billing import database
from cdr_billing.schema import (
    CURRENT,
    SUPERSEDED,
    billed_call,
    billing_batch,
    billing_exception,
    billing_line,
    billing_user_line,
    not_billed_group,
    quarantined_row,
    revenue_share,
    statement,
    statement_call,
    statement_delivery,
    statement_subtotal,
)
from cdr_billing.statements import StatementFrames

# a superseded batch's mails not yet sent are not sent (its statements are no longer true)
CANCELLED, UNSENT = "cancelled", ("pending", "deferred")


@dataclass(frozen=True)
class Batch:
    """What one run loads for a month: its lines, the per-user lines they sum, the revenue
    share, the billed calls (lineage; one frame per CDR file, read one at a time) and the rows
    not billed."""

    lines: pd.DataFrame
    user_lines: pd.DataFrame
    revenue_share: pd.DataFrame
    billed_calls: Iterable[pd.DataFrame]
    exceptions: pd.DataFrame
    # the opted-in customers' statements (cdr_billing.statements), None: none
    statements: StatementFrames | None = None

    def parts(self) -> Iterator[tuple[Table, pd.DataFrame]]:
        """Each table of the batch with its rows, but the billed calls."""
        yield from (
            (billing_line, self.lines),
            (billing_user_line, self.user_lines),
            (revenue_share, self.revenue_share),
        )
        exceptions = with_group_keys(self.exceptions)
        yield billing_exception, exceptions
        yield not_billed_group, group_sums(exceptions)
        if self.statements is not None:  # a statement before its rows
            yield from (
                (statement, self.statements.statements),
                (statement_call, self.statements.calls),
                (statement_subtotal, self.statements.subtotals),
                (statement_delivery, self.statements.deliveries),
            )


# the kinds of non-billed rows summed per group, and the detail field each is grouped by
GROUP_FIELDS = {"unbillable": "number_range", "suspense": "user_id"}
GROUP_COLUMNS = ["kind", "reason_code", "group_key"]


def _text(value: object) -> str:
    """A detail field as a group key: "" when absent."""
    return "" if value is None or value != value else str(value)  # NaN != NaN


def with_group_keys(exceptions: pd.DataFrame) -> pd.DataFrame:
    """The rows not billed with their group key (unbillable: number range, suspense: account,
    other kinds "") and the seconds their detail records (None when absent)."""
    details = [
        json.loads(detail) if kind in GROUP_FIELDS else {}
        for kind, detail in zip(exceptions["kind"], exceptions["detail"], strict=True)
    ]
    return exceptions.assign(
        group_key=pd.Series(
            [
                _text(detail.get(GROUP_FIELDS.get(kind, ""), ""))
                for kind, detail in zip(exceptions["kind"], details, strict=True)
            ],
            index=exceptions.index,
            dtype=object,
        ),
        seconds=pd.array([detail.get("duration_seconds") for detail in details], dtype="Int64"),
    )


def group_sums(exceptions: pd.DataFrame) -> pd.DataFrame:
    """Per kind, reason and group key of the grouped kinds: the calls and their seconds."""
    grouped = exceptions[exceptions["kind"].isin(GROUP_FIELDS)]
    sums = (
        grouped.groupby(GROUP_COLUMNS, sort=True)
        .agg(calls=("kind", "size"), seconds=("seconds", "sum"), recorded=("seconds", "count"))
        .reset_index()
    )
    seconds = sums["seconds"].astype("Int64").where(sums["recorded"] > 0, pd.NA)
    return sums.drop(columns="recorded").assign(seconds=seconds)


@dataclass(frozen=True)
class LoadResult:
    """The batch a load made current, and the one it superseded."""

    batch_id: int
    superseded_batch_id: int | None
    already_loaded: bool


def month_lock(billing_month: str) -> str:
    """The name of the lock a load of the month holds."""
    return f"load {billing_month}"


def load_month(
    engine: Engine, billing_month: str, run_id: str, batch: Batch, counts: dict[str, int]
) -> LoadResult:
    """Make a new current batch for the month, atomically."""
    with engine.begin() as conn:
        database.hold_lock(conn, month_lock(billing_month))
        existing = conn.execute(
            select(billing_batch.c.batch_id, billing_batch.c.supersedes_batch_id).where(
                billing_batch.c.run_id == run_id
            )
        ).first()
        if existing is not None:
            return LoadResult(existing.batch_id, existing.supersedes_batch_id, already_loaded=True)
        previous = conn.execute(
            select(billing_batch.c.batch_id).where(
                billing_batch.c.billing_month == billing_month, billing_batch.c.status == CURRENT
            )
        ).scalar()
        if previous is not None:
            conn.execute(
                update(billing_batch)
                .where(billing_batch.c.batch_id == previous)
                .values(status=SUPERSEDED)
            )
            cancel_unsent_mails(conn, previous)
        batch_id = conn.execute(
            insert(billing_batch).values(
                billing_month=billing_month,
                run_id=run_id,
                status=CURRENT,
                counts=json.dumps(counts, sort_keys=True),
                supersedes_batch_id=previous,
            )
        ).inserted_primary_key[0]
        for table, rows in batch.parts():
            database.insert_frame(conn, table, rows, batch_id=batch_id)
        # PostgreSQL: the batch's own
        database.insert_partition(conn, billed_call, "batch_id", batch_id, batch.billed_calls)
    return LoadResult(batch_id, previous, already_loaded=False)


def cancel_unsent_mails(conn: Connection, batch_id: int) -> None:
    """Cancel the batch's statement mails not yet sent (pending or deferred): the batch is
    superseded, the new one's statements are mailed instead."""
    of_batch = select(statement.c.statement_id).where(statement.c.batch_id == batch_id)
    conn.execute(
        update(statement_delivery)
        .where(
            statement_delivery.c.statement_id.in_(of_batch),
            statement_delivery.c.status.in_(UNSENT),
        )
        .values(status=CANCELLED, next_attempt_at=None, updated_at=datetime.now(UTC))
    )


def store_quarantine(
    engine: Engine, billing_month: str, run_id: str, source_file: str, rows: pd.DataFrame
) -> None:
    """Replace the run's quarantined rows of one file (idempotent when the task is retried), under
    a lock: two attempts at once (a retry beside a stalled first try) would each delete none of
    the other's uncommitted rows and both insert theirs."""
    with engine.begin() as conn:
        database.hold_lock(conn, f"quarantine {run_id} {source_file}")
        conn.execute(
            delete(quarantined_row).where(
                quarantined_row.c.run_id == run_id, quarantined_row.c.source_file == source_file
            )
        )
        database.insert_frame(
            conn, quarantined_row, rows, run_id=run_id, billing_month=billing_month
        )


LINE_COLUMNS = [
    "customer_id",
    "sequence_number",
    "currency",
    "total_minor",
    "call_count",
    "billed_seconds",
]


def _lines(engine: Engine, *conditions) -> pd.DataFrame:
    query = (
        select(*[billing_line.c[name] for name in LINE_COLUMNS])
        .join(billing_batch, billing_batch.c.batch_id == billing_line.c.batch_id)
        .where(*conditions)
        .order_by(
            billing_line.c.customer_id, billing_line.c.sequence_number, billing_line.c.currency
        )
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=LINE_COLUMNS)


def current_lines(engine: Engine, billing_month: str) -> pd.DataFrame:
    """Return the billing lines of the month's current batch."""
    return _lines(
        engine, billing_batch.c.billing_month == billing_month, billing_batch.c.status == CURRENT
    )


def batch_lines(engine: Engine, batch_id: int) -> pd.DataFrame:
    """Return the billing lines of one batch (current or superseded)."""
    return _lines(engine, billing_batch.c.batch_id == batch_id)
