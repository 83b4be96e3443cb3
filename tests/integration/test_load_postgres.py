"""Loading batches into a real PostgreSQL billing database."""

import threading
from dataclasses import replace

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from cdr_billing.database import lock_key
from cdr_billing.lineage import BILLED_CALL_COLUMNS
from cdr_billing.load import Batch, current_lines, load_month, month_lock
from cdr_billing.migrations import upgrade
from cdr_billing.schema import line_user_keys

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


def _batch(lines: pd.DataFrame = LINES) -> Batch:
    user_lines = lines.assign(user_id="u1")
    shares = pd.DataFrame(
        {
            "service_provider": ["P"],
            "currency": ["EUR"],
            "share_basis_points": [1250],
            "call_count": [4],
            "billed_minor": [1333],
            "share_minor": [167],
        }
    )
    return Batch(lines, user_lines, shares, [pd.DataFrame(columns=BILLED_CALL_COLUMNS)], EXCEPTIONS)


@pytest.fixture(scope="module")
def engine(postgres):
    engine = create_engine(postgres.url)
    upgrade(engine)
    return engine


def _batches(engine, month):
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT batch_id, status FROM billing_batch "
                "WHERE billing_month = :m ORDER BY batch_id"
            ),
            {"m": month},
        ).all()


def test_rerun_supersedes_and_never_doubles(engine):
    first = load_month(engine, "2026-01", "run-a", _batch(), {"read": 5})
    second = load_month(engine, "2026-01", "run-b", _batch(), {"read": 5})
    assert second.superseded_batch_id == first.batch_id
    assert [status for _, status in _batches(engine, "2026-01")] == ["superseded", "current"]
    assert current_lines(engine, "2026-01").to_dict("records") == LINES.to_dict("records")


def test_a_retried_load_of_the_same_run_changes_nothing(engine):
    first = load_month(engine, "2026-02", "run-c", _batch(), {"read": 5})
    again = load_month(engine, "2026-02", "run-c", _batch(LINES.assign(total_minor=1)), {"read": 5})
    assert again.already_loaded and again.batch_id == first.batch_id
    assert current_lines(engine, "2026-02")["total_minor"].tolist() == [1234, 99]


def test_a_failed_load_leaves_the_old_batch_current(engine):
    load_month(engine, "2026-03", "run-d", _batch(), {"read": 5})
    broken = LINES.assign(customer_id=None)  # NOT NULL violation in the middle of the load
    with pytest.raises(Exception, match="null"):
        load_month(engine, "2026-03", "run-e", _batch(broken), {"read": 5})
    assert [status for _, status in _batches(engine, "2026-03")] == ["current"]
    assert current_lines(engine, "2026-03")["total_minor"].tolist() == [1234, 99]


def _load_in_thread(engine, month: str, run_id: str) -> threading.Thread:
    thread = threading.Thread(
        target=load_month, args=(engine, month, run_id, _batch(), {"read": 5})
    )
    thread.start()
    return thread


def test_two_concurrent_loads_of_a_month_serialise(engine):
    """While one load holds the month's lock, a second waits; then it supersedes the first."""
    load_month(engine, "2026-04", "run-f", _batch(), {"read": 5})
    holder = engine.connect()
    holder.begin()
    # a load in progress
    holder.execute(
        text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(month_lock("2026-04"))}
    )
    waiting = _load_in_thread(engine, "2026-04", "run-g")
    waiting.join(timeout=2)
    assert waiting.is_alive(), "the second load must wait for the month's lock"
    assert [status for _, status in _batches(engine, "2026-04")] == ["current"]
    holder.rollback()
    holder.close()
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    assert [status for _, status in _batches(engine, "2026-04")] == ["superseded", "current"]


def test_concurrent_loads_leave_exactly_one_current_batch(engine):
    threads = [_load_in_thread(engine, "2026-05", f"run-h{n}") for n in range(4)]
    for thread in threads:
        thread.join(timeout=60)
    statuses = [status for _, status in _batches(engine, "2026-05")]
    assert sorted(statuses) == ["current"] + ["superseded"] * 3
    with engine.connect() as conn:
        lines = conn.execute(
            text(
                "SELECT count(*) FROM billing_line l JOIN billing_batch b USING (batch_id) "
                "WHERE b.billing_month = '2026-05'"
            )
        ).scalar()
    assert lines == 4 * len(LINES)  # every batch complete, none doubled
    assert current_lines(engine, "2026-05").to_dict("records") == LINES.to_dict("records")


def _billed_calls(count: int, customer_id: str | None = "C1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [customer_id] * count,
            "sequence_number": "100",
            "currency": "EUR",
            "user_id": "u1",
            "transaction_id": [f"t{n}" for n in range(count)],
            "start_utc": pd.Timestamp("2026-06-03 10:00", tz="UTC"),
            "billed_seconds": 60,
            "cost_minor": 25,
            "pricing": "tariff",
            "source": "carrier",
            "source_file": "f.csv",
            "source_row": range(2, count + 2),
            "combined_rows": "",
        }
    )[BILLED_CALL_COLUMNS]


def _partitions(engine) -> dict[str, int]:
    """Each partition of billed_call with its number of indexes."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid) "
                "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'billed_call'::regclass"
            )
        ).all()
    return dict(rows)


def test_each_batch_s_billed_calls_are_a_partition_of_their_own_indexed_and_checked(engine):
    batches = [
        load_month(
            engine,
            "2026-06",
            run,
            replace(_batch(), billed_calls=[_billed_calls(calls), _billed_calls(1)]),
            {},
        )
        for run, calls in (("run-i", 3), ("run-j", 2))
    ]
    partitions = _partitions(engine)
    assert {f"billed_call_batch_id_{b.batch_id}" for b in batches} <= partitions.keys()
    # the line index, built on attach
    assert all(partitions[f"billed_call_batch_id_{b.batch_id}"] == 1 for b in batches)
    with engine.connect() as conn:
        counts = conn.execute(
            text("SELECT batch_id, count(*) FROM billed_call GROUP BY batch_id")
        ).all()
        stored = pd.read_sql(
            text(f"SELECT * FROM billed_call WHERE batch_id = {batches[0].batch_id}"), conn
        )
    assert {batch: calls for batch, calls in counts if batch in {b.batch_id for b in batches}} == {
        batches[0].batch_id: 4,
        batches[1].batch_id: 3,
    }
    expected = pd.concat([_billed_calls(3), _billed_calls(1)], ignore_index=True)
    expected["line_user_key"] = line_user_keys(expected)  # the load's own key of each call
    assert stored.drop(columns="batch_id").sort_values(["transaction_id", "source_row"]).to_dict(
        "records"
    ) == (expected.sort_values(["transaction_id", "source_row"]).to_dict("records"))
    with pytest.raises(IntegrityError, match="foreign key"), engine.begin() as conn:
        conn.execute(text(f"DELETE FROM billing_batch WHERE batch_id = {batches[0].batch_id}"))


def test_a_failed_load_leaves_no_partition_behind(engine):
    before = _partitions(engine)
    with pytest.raises(IntegrityError, match="null"):
        load_month(
            engine,
            "2026-07",
            "run-k",
            replace(_batch(), billed_calls=[_billed_calls(2, customer_id=None)]),
            {},
        )
    assert _partitions(engine) == before
    assert _batches(engine, "2026-07") == []


def _tables_like(engine, prefix: str) -> set[str]:
    """Every table whose name starts with prefix, partition or not (an orphan too)."""
    with engine.connect() as conn:
        return set(
            conn.execute(
                text("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE :p"),
                {"p": prefix + "%"},
            ).scalars()
        )


def test_a_copy_failing_mid_batch_leaves_no_table_and_no_batch(engine, monkeypatch):
    """The COPY fails after some batches went in (a value too long for its column): the
    standalone table, its rows and the batch all vanish with the transaction."""
    monkeypatch.setattr("cdr_billing.database.INSERT_BATCH_ROWS", 2)
    before = _tables_like(engine, "billed_call_batch_id_")
    broken = _billed_calls(5).assign(currency=["EUR", "EUR", "EUR", "EUR", "EURO"])
    with pytest.raises(Exception, match="too long"):
        load_month(engine, "2026-08", "run-l", replace(_batch(), billed_calls=[broken]), {})
    assert _tables_like(engine, "billed_call_batch_id_") == before
    assert _batches(engine, "2026-08") == []


def _partition_facts(engine, batch_id: int) -> dict:
    """The partition's CHECK constraints, foreign keys, indexes and bound, from the catalog."""
    name = f"billed_call_batch_id_{batch_id}"
    with engine.connect() as conn:
        constraints = conn.execute(
            text(
                "SELECT contype, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = CAST(:t AS regclass) ORDER BY contype"
            ),
            {"t": name},
        ).all()
        indexes = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE tablename = :t"), {"t": name}
        ).scalars()
        bound = conn.execute(
            text("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = :t"),
            {"t": name},
        ).scalar()
        return {
            "checks": [d for kind, d in constraints if kind == "c"],
            "foreign_keys": [d for kind, d in constraints if kind == "f"],
            "indexes": list(indexes),
            "bound": bound,
        }


def test_the_attached_partition_has_its_check_index_and_foreign_key(engine, monkeypatch):
    monkeypatch.setattr("cdr_billing.database.INSERT_BATCH_ROWS", 2)  # several COPY batches
    loaded = load_month(
        engine,
        "2026-09",
        "run-m",
        replace(_batch(), billed_calls=[_billed_calls(5), _billed_calls(3)]),
        {},
    )
    facts = _partition_facts(engine, loaded.batch_id)
    assert facts["bound"] == f"FOR VALUES IN ({loaded.batch_id})"
    assert facts["checks"] == [f"CHECK ((batch_id = {loaded.batch_id}))"]
    assert facts["foreign_keys"] == ["FOREIGN KEY (batch_id) REFERENCES billing_batch(batch_id)"]
    (index,) = facts["indexes"]  # built before the attach and adopted, not built twice
    assert '(line_user_key, source_file COLLATE "C", source_row)' in index or (
        "(line_user_key, source_file, source_row)" in index
    )
    with engine.connect() as conn:
        parent_index = conn.execute(
            text(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'billed_call_of_user'::regclass "
                "AND c.relname = :n"
            ),
            {"n": index.split()[2]},
        ).scalar()
        stored = conn.execute(
            text(
                "SELECT source_row, currency FROM billed_call WHERE batch_id = :b "
                "ORDER BY transaction_id, source_row"
            ),
            {"b": loaded.batch_id},
        ).all()
    assert parent_index == 1, "the partition's index is not the parent index's partition"
    assert [row.source_row for row in stored] == [2, 2, 3, 3, 4, 4, 5, 6]  # every batch, once


def test_a_retried_load_with_billed_calls_adds_no_partition_and_no_row(engine):
    batch = replace(_batch(), billed_calls=[_billed_calls(4)])
    first = load_month(engine, "2026-11", "run-n", batch, {})
    partitions = _tables_like(engine, "billed_call_batch_id_")
    again = load_month(
        engine, "2026-11", "run-n", replace(_batch(), billed_calls=[_billed_calls(9)]), {}
    )
    assert again.already_loaded and again.batch_id == first.batch_id
    assert _tables_like(engine, "billed_call_batch_id_") == partitions
    with engine.connect() as conn:
        calls = conn.execute(
            text("SELECT count(*) FROM billed_call WHERE batch_id = :b"), {"b": first.batch_id}
        ).scalar()
    assert calls == 4
