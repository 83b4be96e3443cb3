"""Statements are stored with their batch, in its transaction (real PostgreSQL): a re-run
supersedes them with the batch and cancels its unsent mails; a failed load leaves none."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import create_engine, func, select, update
from statement_seed import FULL_NUMBERS, batch

from cdr_billing import load
from cdr_billing.migrations import upgrade
from cdr_billing.schema import billing_batch, statement, statement_call, statement_delivery

MONTH = "2026-05"


@pytest.fixture
def engine(postgres, request):
    name = f"statements_load_{request.node.name[:30].lower()}"
    engine = create_engine(postgres.url_of(postgres.create_database(name)))
    upgrade(engine)
    return engine


def _count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_statements_are_loaded_with_their_batch_and_a_rerun_supersedes_them(engine):
    first = load.load_month(engine, MONTH, "run-1", batch("run-1"), {})
    assert _count(engine, statement, statement.c.batch_id == first.batch_id) == 3
    assert _count(engine, statement_call) == 4
    with engine.connect() as conn:
        shown = conn.execute(select(statement_call.c.called_number_shown)).scalars().all()
    assert not set(shown) & set(FULL_NUMBERS[1:])  # C1 masks; C2 shows in full by policy
    with engine.begin() as conn:  # one mail of the first batch went, the others wait
        conn.execute(
            update(statement_delivery)
            .where(statement_delivery.c.method == "link")
            .values(status="sent")
        )
    second = load.load_month(engine, MONTH, "run-2", batch("run-2"), {})
    assert second.superseded_batch_id == first.batch_id
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                select(statement.c.batch_id, func.count())
                .join(billing_batch, billing_batch.c.batch_id == statement.c.batch_id)
                .where(billing_batch.c.status == "current")
                .group_by(statement.c.batch_id)
            ).all()
        )
        old_mails = (
            conn.execute(
                select(statement_delivery.c.status)
                .join(statement, statement.c.statement_id == statement_delivery.c.statement_id)
                .where(statement.c.batch_id == first.batch_id)
                .order_by(statement_delivery.c.status)
            )
            .scalars()
            .all()
        )
    assert statuses == {second.batch_id: 3}
    assert old_mails == ["cancelled", "cancelled", "sent"]  # a sent mail stays sent
    assert _count(engine, statement_delivery, statement_delivery.c.status == "pending") == 3


def test_a_load_that_fails_leaves_neither_batch_nor_statements(engine):
    good = batch("run-1")
    frames = good.statements
    broken = frames._replace(calls=frames.calls.assign(call_no=1))  # duplicate keys: refused
    with pytest.raises(Exception, match="statement_call_pkey"):
        load.load_month(engine, MONTH, "run-1", dataclasses.replace(good, statements=broken), {})
    assert _count(engine, billing_batch) == 0
    assert _count(engine, statement) == 0
    assert load.load_month(engine, MONTH, "run-1", good, {}).already_loaded is False
