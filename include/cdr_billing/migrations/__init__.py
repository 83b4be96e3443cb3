"""Versioned migrations of the billing database (Alembic), and the command that runs them.

`python -m cdr_billing.migrations upgrade` brings the database of the Airflow connection
`billing_db` (or `--url`) to the newest version; `current` prints its version. The DAG runs the
same upgrade before it touches the database. Upgrades run in one transaction under a
PostgreSQL advisory lock, so concurrent runs upgrade once; a database created before
migrations existed is adopted by the first version, which keeps the tables it finds. Each
file in versions/ is one version, never edited after release: a schema change is a new
file (`alembic revision` with this folder as script_location).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from cdr_billing import database

VERSION_TABLE = "billing_schema_version"
BASELINE = "0001"  # the first release; it keeps the tables a database from before migrations has
# a load's own partition of billed_call (0003)
PARTITIONS = re.compile(r"billed_call_(default|batch_id_\d+)")


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """What Alembic compares with the schema: not the partitions, which loads create."""
    return not (type_ == "table" and name and PARTITIONS.fullmatch(name))


def _config(conn: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    return config


def head() -> str:
    """The newest version the code knows."""
    return ScriptDirectory.from_config(_config(None)).get_current_head()


def current(engine: Engine) -> str | None:
    """The version the database is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def at_head(engine: Engine) -> bool:
    """Whether the database is at the newest version; read without Alembic, which logs, for
    commands that only need to know."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return False
        found = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return found == head()


def upgrade(engine: Engine) -> str:
    """Bring the database to the newest version, once even when called concurrently; return it."""
    with engine.begin() as conn:
        database.hold_lock(conn, "schema upgrade")
        command.upgrade(_config(conn), "head")
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdr_billing.migrations", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["upgrade", "current"])
    database.add_arguments(parser)
    args = parser.parse_args(argv)
    engine = database.engine_from_arguments(args)
    if args.action == "upgrade":
        before = current(engine)
        after = upgrade(engine)
        print(f"billing database at version {after} (was {before or 'empty'})")
    else:
        print(f"billing database at version {current(engine) or 'none'}; newest known: {head()}")
    return 0
