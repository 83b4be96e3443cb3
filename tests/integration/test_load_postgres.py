"""Loading batches into a real PostgreSQL billing database."""

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from cdr_billing.load import current_lines, load_month
from cdr_billing.schema import ensure_schema

LINES = pd.DataFrame(
    {
        "customer_id": ["C1", "C2"],
        "sequence_number": ["100", "200"],
        "currency": ["EUR", "EUR"],
        "total_minor": [1234, 99],
        "call_count": [3, 1],
        "billed_seconds": [180, 60],
    }
)
EXCEPTIONS = pd.DataFrame(
    {
        "kind": ["suspense"],
        "reason_code": ["UNKNOWN_ACCOUNT"],
        "source_file": ["f.csv"],
        "source_row": [7],
        "transaction_id": ["t9"],
        "detail": ['{"user_id": "x"}'],
    }
)


@pytest.fixture(scope="module")
def engine(postgres):
    engine = create_engine(postgres.url)
    ensure_schema(engine)
    return engine


def _batches(engine, month):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT batch_id, status FROM billing_batch WHERE billing_month = :m ORDER BY batch_id"), {"m": month}
        ).all()


def test_rerun_supersedes_and_never_doubles(engine):
    first = load_month(engine, "2026-01", "run-a", LINES, EXCEPTIONS, {"read": 5})
    second = load_month(engine, "2026-01", "run-b", LINES, EXCEPTIONS, {"read": 5})
    assert second.superseded_batch_id == first.batch_id
    assert [status for _, status in _batches(engine, "2026-01")] == ["superseded", "current"]
    assert current_lines(engine, "2026-01").to_dict("records") == LINES.to_dict("records")


def test_a_retried_load_of_the_same_run_changes_nothing(engine):
    first = load_month(engine, "2026-02", "run-c", LINES, EXCEPTIONS, {"read": 5})
    again = load_month(engine, "2026-02", "run-c", LINES.assign(total_minor=1), EXCEPTIONS, {"read": 5})
    assert again.already_loaded and again.batch_id == first.batch_id
    assert current_lines(engine, "2026-02")["total_minor"].tolist() == [1234, 99]


def test_a_failed_load_leaves_the_old_batch_current(engine):
    load_month(engine, "2026-03", "run-d", LINES, EXCEPTIONS, {"read": 5})
    broken = LINES.assign(customer_id=None)  # NOT NULL violation in the middle of the load
    with pytest.raises(Exception, match="null"):
        load_month(engine, "2026-03", "run-e", broken, EXCEPTIONS, {"read": 5})
    assert [status for _, status in _batches(engine, "2026-03")] == ["current"]
    assert current_lines(engine, "2026-03")["total_minor"].tolist() == [1234, 99]
