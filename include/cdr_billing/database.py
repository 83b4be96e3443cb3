"""The billing database: its engine from an Airflow connection, or from a URL on the command
line."""

from __future__ import annotations

import argparse
import io
import zlib
from collections.abc import Iterable
from contextlib import closing
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import Column, MetaData, Table, create_engine, insert, text
from sqlalchemy.engine import Connection, Engine

from cdr_billing.schema import to_records


def billing_engine(conn_id: str) -> Engine:
    """Return a SQLAlchemy engine for the billing database's Airflow connection."""
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id).get_hook().get_sqlalchemy_engine()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options a command uses to find the billing database."""
    parser.add_argument(
        "--conn",
        help="Airflow connection id of the billing database (default: the pipeline config's)",
    )
    parser.add_argument("--url", help="SQLAlchemy URL instead of an Airflow connection")


def engine_from_arguments(args: argparse.Namespace) -> Engine:
    """The engine the command-line options name."""
    if args.url:
        return create_engine(args.url)
    from cdr_billing.config import load_config

    return billing_engine(args.conn or load_config().billing.connection)


def in_utc(moment: datetime | None) -> datetime | None:
    """A stored moment as an aware UTC datetime: SQLite gives back the naive UTC it stored."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock id of a named critical section."""
    return zlib.crc32(name.encode())


def hold_lock(conn: Connection, name: str) -> None:
    """Hold a named lock until the transaction ends, so concurrent runs (months backfilled in
    parallel, a manual run next to a scheduled one) take turns. PostgreSQL: an advisory lock;
    SQLite locks the whole file on write."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


# rows formatted and sent at a time: memory stays flat, the server works meanwhile
INSERT_BATCH_ROWS = 100_000


def insert_frame(conn: Connection, table: Table, frame: pd.DataFrame, **constants: object) -> None:
    """Insert a frame's rows (a month has millions of billed calls): on PostgreSQL by COPY, on
    SQLite by the driver's executemany, in batches. Rows with missing values go through
    SQLAlchemy's INSERT, so the database names the violated constraint."""
    if frame.empty:
        return
    rows = frame.assign(**constants)[[column.name for column in table.columns]]
    if rows.isna().any().any() or conn.dialect.name not in ("postgresql", "sqlite"):
        conn.execute(insert(table), to_records(rows))
        return
    batches = [
        rows.iloc[start : start + INSERT_BATCH_ROWS]
        for start in range(0, len(rows), INSERT_BATCH_ROWS)
    ]
    if conn.dialect.name == "sqlite":
        _insert_sqlite(conn, table.name, batches)
    else:
        _copy_postgres(conn, table.name, batches)


# the memory a batch partition's index is sorted in (PostgreSQL's default 64 MB spills 10
# million index entries to disk), for this transaction only
INDEX_BUILD_MEMORY = "512MB"


def insert_partition(
    conn: Connection, table: Table, key_column: str, key: int, frames: Iterable[pd.DataFrame]
) -> None:
    """Insert rows that share one value of a table's partition key. PostgreSQL (the table
    partitioned by LIST of key_column): COPY into a new table without index or foreign key,
    index it in bulk, then attach it as the key's partition, where PostgreSQL adopts the index,
    checks the foreign keys in one join and, the table's CHECK (key_column = key) implying the
    partition constraint, scans nothing else. Elsewhere: insert_frame."""
    if conn.dialect.name != "postgresql":
        for frame in frames:
            insert_frame(conn, table, frame, **{key_column: key})
        return
    name = f"{table.name}_{key_column}_{int(key)}"
    conn.execute(
        text(
            f"CREATE TABLE {name} (LIKE {table.name} INCLUDING DEFAULTS, "
            f"CONSTRAINT {name}_key CHECK ({key_column} = {int(key)}))"
        )
    )
    partition = Table(
        name, MetaData(), *(Column(column.name, column.type) for column in table.columns)
    )
    for frame in frames:
        insert_frame(conn, partition, frame, **{key_column: key})
    conn.execute(text(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'"))
    for index in sorted(table.indexes, key=lambda index: index.name or ""):
        columns = ", ".join(column.name for column in index.columns)
        unique = "UNIQUE " if index.unique else ""
        conn.execute(text(f"CREATE {unique}INDEX ON {name} ({columns})"))
    conn.execute(
        text(f"ALTER TABLE {table.name} ATTACH PARTITION {name} FOR VALUES IN ({int(key)})")
    )


def _insert_sqlite(conn: Connection, table_name: str, batches: list[pd.DataFrame]) -> None:
    """executemany on the driver (2.3x faster than SQLAlchemy's INSERT of dicts), storing the same
    values."""
    columns = list(batches[0].columns)
    statement = (
        f"INSERT INTO {table_name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    )
    with closing(conn.connection.driver_connection.cursor()) as cursor:
        for batch in batches:
            cursor.executemany(
                statement, zip(*(_driver_values(batch[name]) for name in columns), strict=True)
            )


def _copy_postgres(conn: Connection, table_name: str, batches: list[pd.DataFrame]) -> None:
    """COPY in CSV, each batch formatted by Arrow while the server takes in the one before."""
    copy = f"COPY {table_name} ({', '.join(batches[0].columns)}) FROM STDIN WITH (FORMAT csv)"
    chunks = map(csv_bytes, batches)
    with conn.connection.driver_connection.cursor() as cursor:
        if conn.dialect.driver == "psycopg2":
            cursor.copy_expert(copy, _ChunkFile(chunks))
        else:  # psycopg 3, which Airflow's PostgresHook uses
            with cursor.copy(copy) as stream:
                for chunk in chunks:
                    stream.write(chunk)


def _timestamp_text(values: pd.Series, utc: bool) -> pa.Array:
    """Timestamps as text "YYYY-MM-DD HH:MM:SS.ffffff" (Arrow's cast, some 50x faster than
    pandas' CSV writer): zoned ones in UTC with "+00:00" (`utc`), else their wall time, the
    text SQLAlchemy stores for a datetime in SQLite."""
    zoned = isinstance(values.dtype, pd.DatetimeTZDtype)
    if zoned:
        values = (values.dt.tz_convert("UTC") if utc else values).dt.tz_localize(None)
    text = pc.cast(pa.array(values.astype("datetime64[us]")), pa.string())
    return pc.binary_join_element_wise(text, "+00:00", "") if zoned and utc else text


def _driver_values(values: pd.Series) -> list:
    """A column without missing values as Python values for SQLite; timestamps as text."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _timestamp_text(values, utc=False).to_pylist()
    return values.tolist()


def csv_bytes(rows: pd.DataFrame) -> bytes:
    """Rows as PostgreSQL COPY CSV: every value quoted (a quoted "" is an empty string, not
    NULL)."""
    table = pa.table(
        {
            name: _timestamp_text(rows[name], utc=True)
            if pd.api.types.is_datetime64_any_dtype(rows[name].dtype)
            else rows[name]
            for name in rows.columns
        }
    )
    sink = io.BytesIO()
    pacsv.write_csv(
        table, sink, pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    )
    return sink.getvalue()


class _ChunkFile:
    """A file to read the chunks of an iterable from, one per read(), as psycopg2's copy_expert
    does."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")
