"""Versioned migrations of the billing database, on a real PostgreSQL and on SQLite."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, select, text

from cdr_billing import migrations
from cdr_billing.schema import billing_batch, metadata


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request, postgres, tmp_path):
    """The URL of an empty billing database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'billing.sqlite'}"
    return postgres.url_of(postgres.create_database(f"migrations_{tmp_path.name.lower().replace('-', '_')}"))


def _differences(engine) -> list:
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    return [d for d in differences if not (d[0] == "remove_table" and d[1].name == migrations.VERSION_TABLE)]


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
        conn.execute(insert(billing_batch).values(billing_month="2025-12", run_id="old", status="current", counts="{}"))
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
            [sys.executable, "-m", "cdr_billing.migrations", action, "--url", url], capture_output=True, text=True, check=True
        )
        return done.stdout

    assert f"at version {migrations.head()} (was empty)" in run("upgrade")
    assert f"at version {migrations.head()}; newest known: {migrations.head()}" in run("current")
