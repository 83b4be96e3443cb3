"""insert_frame's fast paths (PostgreSQL COPY, SQLite executemany) store exactly what
SQLAlchemy's INSERT stores, on a real PostgreSQL and a SQLite file."""

import uuid
from datetime import UTC, datetime

import pandas as pd
import pytest
from sqlalchemy import create_engine, insert, select

from cdr_billing import database
from cdr_billing.lineage import BILLED_CALL_COLUMNS
from cdr_billing.migrations import upgrade
from cdr_billing.schema import (
    billed_call,
    billing_batch,
    entitlement,
    entitlement_snapshot,
    to_records,
)

AWKWARD_TEXTS = [
    "plain",
    "",
    'a "quoted", comma',
    "line\nbreak\r\nand\ttab",
    "back\\slash 'single' åäö €",
]


def _billed_calls() -> pd.DataFrame:
    rows = len(AWKWARD_TEXTS)
    return pd.DataFrame(
        {
            "customer_id": [f"C{n}" for n in range(rows)],
            "sequence_number": ["1001", "", "1002", "NULL", "\\N"],
            "currency": ["SEK", "EUR", "JPY", "SEK", "KWD"],
            "user_id": AWKWARD_TEXTS,
            "transaction_id": AWKWARD_TEXTS[::-1],
            "start_utc": pd.Series(
                pd.to_datetime(
                    [
                        "2026-10-01 00:00:00",
                        "2026-10-31 22:59:59.999999",
                        "1970-01-01 00:00:00.000001",
                        "2026-03-29 01:00:00.5",
                        "2099-12-31 23:59:59",
                    ],
                    format="ISO8601",
                    utc=True,
                )
            ).astype("datetime64[us, UTC]"),
            "billed_seconds": [0, 60, 86_400, 1, 7],
            "cost_minor": [0, -15, 2**62, 1, -(2**62)],
            "pricing": ["tariff", "provider", "tariff", "tariff", "provider"],
            "source": ["carrier"] * rows,
            "source_file": ["carrier_cdr_202610.csv"] * rows,
            "source_row": [2, 3, 5, 6, 10**12],
            "combined_rows": ["", "7,8", "other.csv:9", "", ""],
        }
    )


def _entitlements() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "account_id": [f"acc-{n}" for n in range(len(AWKWARD_TEXTS))],
            "user_principal_name": AWKWARD_TEXTS,
            "customer_id": ["C1", "C2", "C3", "C4", "C5"],
            "sequence_number": ["", "1", "2", "", "3"],
            "default_sequence_number": ["9", "", "", "9", ""],
            "entitled": [True, False, True, True, False],
            "last_login": ["2026-10-01T08:00:00Z", "", "never", "", ""],
        }
    )


# psycopg (3): the driver of Airflow's PostgresHook
@pytest.fixture(params=["sqlite", "psycopg2", "psycopg"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'billing.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").url.replace("+psycopg2:", f"+{request.param}:")
    # a session zone other than UTC, so text without its offset would be read as the wrong moment
    engine = create_engine(
        url,
        connect_args={}
        if request.param == "sqlite"
        else {"options": "-c TimeZone=America/New_York"},
    )
    upgrade(engine)
    yield engine
    engine.dispose()


def _stored(conn, table, key_column, key) -> list[tuple]:
    """The rows as the database keeps them: through the driver, without SQLAlchemy's types."""
    columns = [c.name for c in table.columns if c.name != key_column]
    order = "source_row" if table is billed_call else "account_id"
    result = conn.exec_driver_sql(
        f"SELECT {', '.join(columns)} FROM {table.name} "
        f"WHERE {key_column} = {int(key)} ORDER BY {order}"
    )
    return [tuple(row) for row in result]


def _new_batches(conn, count: int) -> list[int]:
    return [
        conn.execute(
            insert(billing_batch).values(
                billing_month="1999-01",
                run_id=f"test-{uuid.uuid4()}",
                status="superseded",
                counts="{}",
            )
        ).inserted_primary_key[0]
        for _ in range(count)
    ]


def _new_snapshots(conn, count: int) -> list[int]:
    return [
        conn.execute(
            insert(entitlement_snapshot).values(
                taken_at=datetime(2026, 11, 2, tzinfo=UTC),
                source_name="test",
                sha256=uuid.uuid4().hex,
                row_count=5,
            )
        ).inserted_primary_key[0]
        for _ in range(count)
    ]


def _insert_both_ways(engine, table, frame: pd.DataFrame, key_column: str, new_keys) -> int:
    """Insert the frame by SQLAlchemy's INSERT and by insert_frame under two new keys; assert the
    database keeps the same rows for both; return insert_frame's key."""
    with engine.begin() as conn:
        reference, fast = new_keys(conn, 2)
        conn.execute(insert(table), to_records(frame, **{key_column: reference}))
        database.insert_frame(conn, table, frame, **{key_column: fast})
    with engine.connect() as conn:
        assert _stored(conn, table, key_column, fast) == _stored(conn, table, key_column, reference)
    return fast


@pytest.mark.parametrize("batch_rows", [100_000, 2])
def test_billed_calls_are_stored_as_sqlalchemy_stores_them(engine, monkeypatch, batch_rows):
    # 2: several COPY chunks / executemany calls
    monkeypatch.setattr(database, "INSERT_BATCH_ROWS", batch_rows)
    calls = _billed_calls()
    fast = _insert_both_ways(engine, billed_call, calls, "batch_id", _new_batches)
    with engine.connect() as conn:
        back = pd.DataFrame(
            conn.execute(select(billed_call).where(billed_call.c.batch_id == fast)).mappings().all()
        )
    back = back.sort_values("source_row").reset_index(drop=True)
    assert back["user_id"].tolist() == AWKWARD_TEXTS
    assert back["cost_minor"].tolist() == calls["cost_minor"].tolist()
    starts = pd.to_datetime(back["start_utc"], utc=True)  # SQLite gives naive UTC datetimes back
    assert starts.dt.tz_convert("UTC").tolist() == calls["start_utc"].tolist()
    assert list(back.columns[1:]) == [*BILLED_CALL_COLUMNS, "line_user_key"]


def test_booleans_are_stored_as_sqlalchemy_stores_them(engine):
    fast = _insert_both_ways(engine, entitlement, _entitlements(), "snapshot_id", _new_snapshots)
    with engine.connect() as conn:
        back = conn.execute(
            select(entitlement.c.entitled)
            .where(entitlement.c.snapshot_id == fast)
            .order_by("account_id")
        )
        assert [row[0] for row in back] == [True, False, True, True, False]


def test_a_missing_value_is_refused_by_the_database_naming_the_column(engine):
    calls = _billed_calls().astype({"customer_id": object})
    calls.loc[2, "customer_id"] = None
    with pytest.raises(Exception, match="customer_id"), engine.begin() as conn:
        (batch,) = _new_batches(conn, 1)
        database.insert_frame(conn, billed_call, calls, batch_id=batch)
