"""Which batch a load superseded is stored with the batch (migration 0004), on a real
PostgreSQL and on SQLite: a retried load returns it again, and batches from before 0004 get it."""

from __future__ import annotations

import pandas as pd
import pytest
from alembic import command
from sqlalchemy import create_engine, select, text

from cdr_billing import migrations
from cdr_billing.load import Batch, LoadResult, load_month
from cdr_billing.schema import billing_batch

LINES = pd.DataFrame(
    [("C1", "100", "EUR", 500, 2, 120)],
    columns=[
        "customer_id",
        "sequence_number",
        "currency",
        "total_minor",
        "call_count",
        "billed_seconds",
    ],
)


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request, postgres, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'billing.sqlite'}"
    return postgres.url_of(
        postgres.create_database(f"superseded_{tmp_path.name.lower().replace('-', '_')}")
    )


def _batch() -> Batch:
    shares = pd.DataFrame(
        columns=[
            "service_provider",
            "currency",
            "share_basis_points",
            "call_count",
            "billed_minor",
            "share_minor",
        ]
    )
    exceptions = pd.DataFrame(
        columns=["kind", "reason_code", "source_file", "source_row", "transaction_id", "detail"]
    )
    return Batch(LINES, LINES.assign(user_id="u1"), shares, [], exceptions)


def test_a_retried_load_returns_the_batch_it_superseded(database_url):
    engine = create_engine(database_url)
    migrations.upgrade(engine)
    first = load_month(engine, "2026-10", "run-1", _batch(), {"read": 2})
    second = load_month(engine, "2026-10", "run-2", _batch(), {"read": 2})
    assert (first.superseded_batch_id, second.superseded_batch_id) == (None, first.batch_id)
    assert load_month(engine, "2026-10", "run-2", _batch(), {"read": 2}) == LoadResult(
        second.batch_id, first.batch_id, already_loaded=True
    )
    assert load_month(engine, "2026-10", "run-1", _batch(), {"read": 2}) == LoadResult(
        first.batch_id, None, already_loaded=True
    )


def test_batches_from_before_0004_get_the_batch_each_superseded(database_url):
    engine = create_engine(database_url)
    with engine.begin() as conn:  # a database at 0003: two months, the first loaded three times
        command.upgrade(migrations._config(conn), "0003")
        conn.execute(
            text(
                "INSERT INTO billing_batch (billing_month, run_id, status, counts) "
                "VALUES (:month, :run_id, :status, '{}')"
            ),
            [
                {"month": month, "run_id": run_id, "status": status}
                for month, run_id, status in [
                    ("2026-09", "a", "superseded"),
                    ("2026-10", "b", "current"),
                    ("2026-09", "c", "superseded"),
                    ("2026-09", "d", "current"),
                ]
            ],
        )
    assert migrations.upgrade(engine) == migrations.head()
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                billing_batch.c.run_id,
                billing_batch.c.batch_id,
                billing_batch.c.supersedes_batch_id,
            )
        ).all()
    ids = {run_id: batch_id for run_id, batch_id, _ in rows}
    assert {run_id: supersedes for run_id, _, supersedes in rows} == {
        "a": None,
        "b": None,
        "c": ids["a"],
        "d": ids["c"],
    }
