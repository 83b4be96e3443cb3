"""The billing database: its engine from an Airflow connection, or from a URL on the command line."""

from __future__ import annotations

import argparse
import csv
import io
import zlib

import pandas as pd
from sqlalchemy import Table, create_engine, insert, text
from sqlalchemy.engine import Connection, Engine

from cdr_billing.schema import to_records


def billing_engine(conn_id: str) -> Engine:
    """Return a SQLAlchemy engine for the billing database's Airflow connection."""
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id).get_hook().get_sqlalchemy_engine()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options a command uses to find the billing database."""
    parser.add_argument("--conn", help="Airflow connection id of the billing database (default: the pipeline config's)")
    parser.add_argument("--url", help="SQLAlchemy URL instead of an Airflow connection")


def engine_from_arguments(args: argparse.Namespace) -> Engine:
    """The engine the command-line options name."""
    if args.url:
        return create_engine(args.url)
    from cdr_billing.config import load_config

    return billing_engine(args.conn or load_config().billing.connection)


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock id of a named critical section."""
    return zlib.crc32(name.encode())


def hold_lock(conn: Connection, name: str) -> None:
    """Hold a named lock until the transaction ends, so concurrent runs (months backfilled in
    parallel, a manual run next to a scheduled one) take turns. PostgreSQL: an advisory lock;
    SQLite locks the whole file on write."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


def insert_frame(conn: Connection, table: Table, frame: pd.DataFrame, **constants: object) -> None:
    """Insert a frame's rows; on PostgreSQL with COPY (a month has millions of billed calls).
    Rows with missing values go through INSERT, so the database names the violated constraint."""
    if frame.empty:
        return
    rows = frame.assign(**constants)[[column.name for column in table.columns]]
    if conn.dialect.name != "postgresql" or rows.isna().any().any():
        conn.execute(insert(table), to_records(rows))
        return
    buffer = io.StringIO()
    rows.to_csv(buffer, index=False, header=False, quoting=csv.QUOTE_NONNUMERIC)  # quoted "" is an empty string, not NULL
    buffer.seek(0)
    copy = f"COPY {table.name} ({', '.join(rows.columns)}) FROM STDIN WITH (FORMAT csv)"
    with conn.connection.driver_connection.cursor() as cursor:
        if conn.dialect.driver == "psycopg2":
            cursor.copy_expert(copy, buffer)
        else:  # psycopg 3, which Airflow's PostgresHook uses
            with cursor.copy(copy) as stream:
                stream.write(buffer.getvalue())
