"""Versioned migrations of the billing database, on a real PostgreSQL and on SQLite."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, Table, create_engine, insert, inspect, select, text

from cdr_billing import migrations
from cdr_billing.schema import (
    billed_call,
    billing_batch,
    line_key_range,
    line_user_key,
    metadata,
)


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request, postgres, tmp_path):
    """The URL of an empty billing database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'billing.sqlite'}"
    return postgres.url_of(
        postgres.create_database(f"migrations_{tmp_path.name.lower().replace('-', '_')}")
    )


def _differences(engine) -> list:
    with engine.connect() as conn:
        differences = compare_metadata(
            MigrationContext.configure(conn, opts={"include_name": migrations.include_name}),
            metadata,
        )
    return [
        d
        for d in differences
        if not (d[0] == "remove_table" and d[1].name == migrations.VERSION_TABLE)
    ]


def test_an_empty_database_is_upgraded_to_exactly_the_tables_the_code_uses(empty_database):
    engine = create_engine(empty_database)
    assert migrations.current(engine) is None
    assert migrations.upgrade(engine) == migrations.head()
    assert _differences(engine) == []
    assert migrations.upgrade(engine) == migrations.head()  # a second upgrade is a no-op


def test_a_database_from_before_migrations_is_adopted_with_its_data(empty_database):
    engine = create_engine(empty_database)
    with engine.begin() as conn:  # the first release's schema, without a version table
        command.upgrade(migrations._config(conn), migrations.BASELINE)
        conn.execute(text(f"DROP TABLE {migrations.VERSION_TABLE}"))
        conn.execute(text("DROP TABLE month_entitlement"))  # an early database lacked later tables
        conn.execute(
            insert(billing_batch).values(
                billing_month="2025-12", run_id="old", status="current", counts="{}"
            )
        )
    assert migrations.upgrade(engine) == migrations.head()
    assert {"billed_call", "month_entitlement"} <= set(inspect(engine).get_table_names())
    assert _differences(engine) == []
    with engine.connect() as conn:
        assert conn.execute(select(billing_batch.c.run_id)).scalars().all() == ["old"]


def test_concurrent_upgrades_of_postgresql_run_once(postgres):
    url = postgres.url_of(postgres.create_database("migrations_concurrent"))
    engines = [create_engine(url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(migrations.upgrade, engines))
    assert versions == [migrations.head()] * 4
    assert _differences(engines[0]) == []


def test_the_documented_command_upgrades_and_reports_the_version(tmp_path):
    url = f"sqlite:///{tmp_path / 'billing.sqlite'}"

    def run(action: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cdr_billing.migrations", action, "--url", url],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    assert f"at version {migrations.head()} (was empty)" in run("upgrade")
    assert f"at version {migrations.head()}; newest known: {migrations.head()}" in run("current")


def _billed_call_before_0011() -> Table:
    """billed_call without line_user_key (and its INSERT default), as before 0011."""
    return Table(
        "billed_call",
        MetaData(),
        *(Column(c.name, c.type) for c in billed_call.columns if c.name != "line_user_key"),
    )


def test_billed_calls_from_before_partitions_move_to_their_batch_s_partition(postgres):
    engine = create_engine(postgres.url_of(postgres.create_database("migrations_partitions")))
    calls = {
        "customer_id": "C1",
        "sequence_number": "1",
        "currency": "EUR",
        "user_id": "u",
        "start_utc": "2026-05-01 10:00+00",
        "billed_seconds": 60,
        "cost_minor": 5,
        "pricing": "tariff",
        "source": "carrier",
        "source_file": "f.csv",
        "combined_rows": "",
    }
    # a database at 0002, with two batches' billed calls in the plain table
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0002")
        batches = [
            conn.execute(
                insert(billing_batch).values(
                    billing_month=m, run_id=m, status="current", counts="{}"
                )
            ).inserted_primary_key[0]
            for m in ("2026-04", "2026-05")
        ]
        rows = [
            {**calls, "batch_id": batch, "transaction_id": f"t{n}", "source_row": n}
            for n, batch in enumerate([batches[0]] * 3 + [batches[1]])
        ]
        conn.execute(insert(_billed_call_before_0011()), rows)
    assert migrations.upgrade(engine) == migrations.head()
    assert _differences(engine) == []
    with engine.connect() as conn:
        moved = conn.execute(
            text(
                "SELECT tableoid::regclass::text, batch_id, transaction_id FROM billed_call "
                "ORDER BY source_row"
            )
        ).all()
        kind = conn.execute(
            text("SELECT relkind FROM pg_class WHERE relname = 'billed_call'")
        ).scalar()
    assert kind == "p"  # partitioned
    assert [tuple(row) for row in moved] == [
        (f"billed_call_batch_id_{batch}", batch, f"t{n}")
        for n, batch in enumerate([batches[0]] * 3 + [batches[1]])
    ]


STATEMENT_TABLES = {
    "statement",
    "statement_call",
    "statement_subtotal",
    "statement_document",
    "statement_delivery",
}


def test_statements_migration_goes_up_and_down_and_keeps_the_batches(empty_database):
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0008")
        conn.execute(
            insert(billing_batch).values(
                billing_month="2026-05", run_id="r", status="current", counts="{}"
            )
        )
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0009")
    assert STATEMENT_TABLES <= set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO statement (statement_id, batch_id, customer_id, user_id, currency, "
                "timezone, mask_digits, deliver, total_minor, call_count, billed_seconds, "
                "prepaid) VALUES ('s1', 1, 'C1', 'u', 'EUR', 'UTC', 3, 'pdf', 5, 1, 60, false)"
            )
        )
    with engine.begin() as conn:
        command.downgrade(migrations._config(conn), "0008")
    assert not STATEMENT_TABLES & set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(select(billing_batch.c.run_id)).scalars().all() == ["r"]
    assert migrations.upgrade(engine) == migrations.head()
    assert _differences(engine) == []


PORTAL_TABLES = {"portal_sign_in_token", "portal_session", "portal_rate_event", "portal_audit"}


def test_portal_migration_goes_up_and_down_and_keeps_the_statements(empty_database):
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0009")
    assert not PORTAL_TABLES & set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0010")
    assert PORTAL_TABLES <= set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO portal_audit (at, event, detail) "
                "VALUES ('2026-05-01 10:00+00', 'sign_in', 'one-time link')"
            )
        )
        assert conn.execute(text("SELECT event_id FROM portal_audit")).scalar() == 1
    with engine.begin() as conn:
        command.downgrade(migrations._config(conn), "0009")
    tables = set(inspect(engine).get_table_names())
    assert not PORTAL_TABLES & tables and STATEMENT_TABLES <= tables
    assert migrations.upgrade(engine) == migrations.head()
    assert _differences(engine) == []


def test_billed_call_key_migration_keys_the_loaded_calls_and_indexes_them(empty_database):
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0010")
        batch = conn.execute(
            insert(billing_batch).values(
                billing_month="2026-05", run_id="r", status="current", counts="{}"
            )
        ).inserted_primary_key[0]
        lines = [("C1", "1", "EUR", "u"), ("C1", "1", "SEK", "u"), ("C2", "7", "EUR", "v")]
        rows = [
            {
                "batch_id": batch,
                "customer_id": customer,
                "sequence_number": sequence,
                "currency": currency,
                "user_id": user,
                "transaction_id": f"t{n}",
                "start_utc": datetime(2026, 5, 1, 10, tzinfo=UTC),
                "billed_seconds": 60,
                "cost_minor": 5,
                "pricing": "tariff",
                "source": "carrier",
                "source_file": "f.csv",
                "source_row": n,
                "combined_rows": "",
            }
            for n, (customer, sequence, currency, user) in enumerate(lines * 2)
        ]
        conn.execute(insert(_billed_call_before_0011()), rows)
    assert migrations.upgrade(engine) == migrations.head()
    assert _differences(engine) == []
    with engine.connect() as conn:
        keys = conn.execute(
            select(
                billed_call.c.customer_id,
                billed_call.c.sequence_number,
                billed_call.c.currency,
                billed_call.c.user_id,
                billed_call.c.line_user_key,
            )
        ).all()
    assert len(keys) == 6
    for customer, sequence, currency, user, key in keys:
        assert key == line_user_key(customer, sequence, currency, user)
        low, high = line_key_range(customer, sequence)
        assert low <= key <= high
    assert len({key for *_, key in keys}) == 3
    index = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("billed_call")}
    assert index["billed_call_of_user"] == ["line_user_key", "source_file", "source_row"]
