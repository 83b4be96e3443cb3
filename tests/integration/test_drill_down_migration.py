"""Migration 0007 on batches loaded before it: their non-billed rows get their group key and
their groups' sums (seconds unknown: those loads did not record them), their billed calls'
partitions the index of a user's calls; loads after it record the seconds."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from alembic import command
from sqlalchemy import create_engine, select, text

from cdr_billing import migrations, not_billed
from cdr_billing.load import LINE_COLUMNS, Batch, load_month
from cdr_billing.schema import billing_exception, not_billed_group

OLD_ROWS = [  # batch, kind, reason, detail as loads before 0007 wrote it
    (1, "unbillable", "NO_TARIFF_PREFIX", {"user_id": "a1", "number_range": "+8821"}),
    (1, "unbillable", "NO_TARIFF_PREFIX", {"user_id": "a2", "number_range": "+8821"}),
    (1, "unbillable", "NO_RATE_AT_CALL_TIME", {"user_id": "a2", "number_range": "+4412"}),
    (1, "unbillable", "NO_TARIFF_PREFIX", {"user_id": "a3", "number_range": float("nan")}),
    (1, "suspense", "UNKNOWN_ACCOUNT", {"user_id": "+46709999999", "number_range": "+4670"}),
    (1, "suspense", "UNKNOWN_ACCOUNT", {"user_id": "+46709999999", "number_range": "+4670"}),
    (1, "duplicate", "DUPLICATE_TRANSACTION", {"user_id": "a1"}),
    (2, "suspense", "NOT_ENTITLED", {"user_id": "ghost", "number_range": "+4670"}),
]


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request, postgres, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'billing.sqlite'}"
    else:
        url = postgres.url_of(
            postgres.create_database(f"drill_{tmp_path.name.lower().replace('-', '_')}")
        )
    engine = create_engine(url)
    yield engine
    engine.dispose()


def _load_before_0007(engine) -> None:
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), "0006")
        for batch_id, status in ((1, "current"), (2, "superseded")):
            conn.execute(
                text(
                    "INSERT INTO billing_batch (batch_id, billing_month, run_id, status, counts) "
                    "VALUES (:b, '2026-07', :run, :status, '{}')"
                ),
                {"b": batch_id, "run": f"run_{batch_id}", "status": status},
            )
            if engine.dialect.name == "postgresql":
                conn.execute(
                    text(
                        f"CREATE TABLE billed_call_batch_id_{batch_id} "
                        f"PARTITION OF billed_call FOR VALUES IN ({batch_id})"
                    )
                )
        for n, (batch_id, kind, reason, detail) in enumerate(OLD_ROWS):
            conn.execute(
                text(
                    "INSERT INTO billing_exception (batch_id, kind, reason_code, source_file, "
                    "source_row, transaction_id, detail) "
                    "VALUES (:b, :kind, :reason, 'f.csv', :row, :t, :detail)"
                ),
                {
                    "b": batch_id,
                    "kind": kind,
                    "reason": reason,
                    "row": n + 1,
                    "t": f"t{n}",
                    "detail": json.dumps(detail),  # NaN as Python writes it
                },
            )


def test_the_upgrade_sums_the_groups_of_batches_loaded_before_it(engine):
    _load_before_0007(engine)
    assert migrations.upgrade(engine) == migrations.head()
    with engine.connect() as conn:
        groups = {
            (r.batch_id, r.kind, r.reason_code, r.group_key): (r.calls, r.seconds)
            for r in conn.execute(select(not_billed_group))
        }
        keys = conn.execute(
            select(billing_exception.c.source_row, billing_exception.c.group_key).order_by(
                billing_exception.c.source_row
            )
        ).all()
    assert groups == {
        (1, "unbillable", "NO_TARIFF_PREFIX", "+8821"): (2, None),
        (1, "unbillable", "NO_RATE_AT_CALL_TIME", "+4412"): (1, None),
        (1, "unbillable", "NO_TARIFF_PREFIX", ""): (1, None),  # a missing range
        (1, "suspense", "UNKNOWN_ACCOUNT", "+46709999999"): (2, None),
        (2, "suspense", "NOT_ENTITLED", "ghost"): (1, None),
    }
    assert [key for _, key in keys] == [
        "+8821",
        "+8821",
        "+4412",
        "",
        "+46709999999",
        "+46709999999",
        "",  # a duplicate is not grouped
        "ghost",
    ]


def _indexes_of_billed_calls(conn) -> dict[str, str]:
    """Per table holding billed calls (PostgreSQL: each partition), its indexes' definitions."""
    if conn.dialect.name == "postgresql":
        query = (
            "SELECT indexname, tablename || ': ' || indexdef FROM pg_indexes "
            "WHERE tablename LIKE 'billed_call%'"
        )
    else:
        query = (
            "SELECT name, tbl_name || ': ' || sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'billed_call'"
        )
    return dict(conn.execute(text(query)).all())


def test_the_billed_calls_of_earlier_batches_get_the_user_calls_index(engine):
    _load_before_0007(engine)
    migrations.upgrade(engine)
    with engine.connect() as conn:
        indexes = _indexes_of_billed_calls(conn)
    columns = "line_user_key, source_file, source_row"  # at head: migration 0011's key
    wide = [d for d in indexes.values() if columns.replace(" ", "") in d.replace(" ", "")]
    tables = {d.split(":")[0] for d in wide}
    if engine.dialect.name == "postgresql":
        partitions = {"billed_call_default", "billed_call_batch_id_1", "billed_call_batch_id_2"}
        assert tables == {"billed_call", *partitions}
    else:
        assert tables == {"billed_call"}
    narrow = "(batch_id,customer_id,sequence_number,currency)"  # the index it replaces
    assert not any(d.replace(" ", "").endswith(narrow) for d in indexes.values())


def test_a_load_after_the_upgrade_records_the_groups_seconds(engine):
    migrations.upgrade(engine)
    unbillable = pd.DataFrame(
        {
            "reason_code": ["NO_TARIFF_PREFIX"] * 3,
            "source_file": ["f.csv"] * 3,
            "source_row": [1, 2, 3],
            "transaction_id": ["t1", "t2", "t3"],
            "user_id": ["a", "b", "c"],
            "number_range": ["+8821", "+8821", "+4412"],
            "session_id": ["", "", ""],
            "duration_seconds": [61, 29, 600],
        }
    )
    exceptions = not_billed.rows_not_billed(
        lambda name: unbillable if name == "unbillable" else pd.DataFrame()
    )
    empty = pd.DataFrame()
    lines = pd.DataFrame(columns=LINE_COLUMNS)
    load_month(engine, "2026-08", "run_after", Batch(lines, lines, empty, [], exceptions), {})
    with engine.connect() as conn:
        groups = {
            r.group_key: (r.calls, r.seconds)
            for r in conn.execute(select(not_billed_group).where(not_billed_group.c.kind != ""))
        }
    assert groups == {"+8821": (2, 90), "+4412": (1, 600)}
