"""The entitlement snapshot: who pays for each account, captured once per month, with history.

A snapshot comes from a file fetched with the CDRs or from a SQL query on an Airflow
connection. Every snapshot is stored with the moment it describes (`taken_at`: the date in
the file name at midnight in the billing timezone, else the capture time); a billing month
pins the snapshot it was billed with, so a re-run is reproducible, unless the run asks for a
fresh one (`refresh_entitlements`). Concurrent runs of a month take turns on its pin (a lock
held from reading it to writing it), so a month's first billing pins one snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from cdr_billing import database
from cdr_billing.acquire import DATE_IN_NAME
from cdr_billing.schema import entitlement, entitlement_snapshot, month_entitlement

COLUMNS = (
    "account_id",
    "user_principal_name",
    "customer_id",
    "sequence_number",
    "default_sequence_number",
    "entitled",
    "last_login",
)
TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}


class EntitlementError(ValueError):
    """The entitlement snapshot is unusable; the message names the source and rows."""


@dataclass(frozen=True)
class Snapshot:
    """A checked snapshot, ready to store."""

    rows: pd.DataFrame
    source_name: str
    sha256: str
    taken_at: datetime


def check_rows(raw: pd.DataFrame, source_name: str) -> pd.DataFrame:
    """Reject missing columns, bad entitled flags and accounts listed more than once."""
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise EntitlementError(f"{source_name}: missing columns {missing}")
    rows = raw[list(COLUMNS)].fillna("").astype(str).apply(lambda column: column.str.strip())
    lines = pd.Series(range(2, len(rows) + 2), index=rows.index)
    flag = rows["entitled"].str.lower()
    bad_flag = ~flag.isin(TRUE_WORDS | FALSE_WORDS)
    if bad_flag.any():
        raise EntitlementError(
            f"{source_name}: 'entitled' is not true/false on lines {lines[bad_flag].tolist()[:10]}"
        )
    repeated = rows["account_id"].duplicated(keep=False)
    if repeated.any():
        raise EntitlementError(
            f"{source_name}: account ids listed more than once "
            f"on lines {lines[repeated].tolist()[:10]}"
        )
    return rows.assign(entitled=flag.isin(TRUE_WORDS))


def from_file(path: Path, captured_at: datetime, timezone: str) -> Snapshot:
    """A snapshot from a CSV or Excel file; it describes the date in its name, if any: that
    day's midnight in the billing timezone, where the tariff's dates and the months begin."""
    from cdr_billing.reference_table import read_table

    raw = read_table(path, EntitlementError)
    dated = DATE_IN_NAME.search(path.name)
    taken_at = local_midnight(dated.group(), timezone) if dated else captured_at
    return Snapshot(
        check_rows(raw, path.name),
        path.name,
        hashlib.sha256(path.read_bytes()).hexdigest(),
        taken_at,
    )


def local_midnight(day: str, timezone: str) -> datetime:
    """The UTC moment a date (YYYY-MM-DD) begins in a timezone."""
    return datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def from_query(conn_id: str, query: str, captured_at: datetime) -> Snapshot:
    """A snapshot from a SQL query on an Airflow connection (e.g. the portal's user profiles)."""
    from airflow.sdk import BaseHook

    raw = BaseHook.get_connection(conn_id).get_hook().get_df(query, df_type="pandas")
    rows = check_rows(raw.astype(object).where(raw.notna(), ""), f"query on {conn_id}")
    digest = hashlib.sha256(rows.sort_values("account_id").to_csv(index=False).encode()).hexdigest()
    return Snapshot(rows, f"query on {conn_id}", digest, captured_at)


def store(engine: Engine, snapshot: Snapshot) -> int:
    """Store a snapshot (the same content again: its existing id)."""
    with engine.begin() as conn:
        return _store(conn, snapshot)


def _store(conn: Connection, snapshot: Snapshot) -> int:
    """Store a snapshot in the connection's transaction, under a lock: concurrent stores of the
    same content would both find it missing and the second insert would break its uniqueness."""
    database.hold_lock(conn, "entitlement_snapshot")
    known = conn.execute(
        select(entitlement_snapshot.c.snapshot_id).where(
            entitlement_snapshot.c.sha256 == snapshot.sha256
        )
    ).scalar()
    if known is not None:
        return known
    snapshot_id = conn.execute(
        insert(entitlement_snapshot).values(
            taken_at=snapshot.taken_at,
            source_name=snapshot.source_name,
            sha256=snapshot.sha256,
            row_count=len(snapshot.rows),
        )
    ).inserted_primary_key[0]
    database.insert_frame(conn, entitlement, snapshot.rows, snapshot_id=snapshot_id)
    return snapshot_id


def pin_lock(billing_month: str) -> str:
    """The name of the lock held from reading a month's pin to writing it."""
    return f"month_entitlement {billing_month}"


def snapshot_for_month(
    engine: Engine, billing_month: str, capture: Callable[[], Snapshot], refresh: bool
) -> int:
    """The month's pinned snapshot; capture, store and pin one when there is none or on refresh,
    in one transaction under the month's pin lock, so concurrent runs pin once (a run that
    waited finds the pin) and the snapshot and its pin commit together."""
    with engine.begin() as conn:
        database.hold_lock(conn, pin_lock(billing_month))
        this_month = month_entitlement.c.billing_month == billing_month
        pinned = conn.execute(select(month_entitlement.c.snapshot_id).where(this_month)).scalar()
        if pinned is not None and not refresh:
            return pinned
        snapshot_id = _store(conn, capture())
        if pinned is None:
            conn.execute(
                insert(month_entitlement).values(
                    billing_month=billing_month, snapshot_id=snapshot_id
                )
            )
        else:
            conn.execute(
                update(month_entitlement).where(this_month).values(snapshot_id=snapshot_id)
            )
    return snapshot_id


def history(engine: Engine, snapshot_id: int) -> pd.DataFrame:
    """Every snapshot's rows up to and including `snapshot_id`'s moment, with taken_at. The
    rows come as the driver gives them: SQLAlchemy's row objects took 3x as long (50k accounts)."""
    taken_at = entitlement_snapshot.c.taken_at
    with engine.connect() as conn:
        limit = conn.execute(
            select(taken_at).where(entitlement_snapshot.c.snapshot_id == snapshot_id)
        ).scalar()
        snapshots = pd.DataFrame(
            conn.execute(
                select(entitlement_snapshot.c.snapshot_id, taken_at).where(taken_at <= limit)
            ).all(),
            columns=["snapshot_id", "taken_at"],
        )
        result = conn.execute(
            select(entitlement).where(
                entitlement.c.snapshot_id.in_(snapshots["snapshot_id"].tolist())
            )
        )
        rows = pd.DataFrame.from_records(result.cursor.fetchall(), columns=list(result.keys()))
    snapshots = snapshots.assign(taken_at=pd.to_datetime(snapshots["taken_at"], utc=True))
    return rows.astype({"entitled": bool}).merge(snapshots, on="snapshot_id")
