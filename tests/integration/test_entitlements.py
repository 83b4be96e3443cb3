"""Entitlement snapshots in a real PostgreSQL: capture once per month, history, as-of
attribution, suspense until fixed, stale flags, and a snapshot read by SQL."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from cdr_billing.attribute import attribute_calls
from cdr_billing.entitlements import (
    EntitlementError,
    from_file,
    from_query,
    history,
    snapshot_for_month,
)
from cdr_billing.migrations import upgrade

DATABASES = itertools.count()
HEADER = (
    "account_id,user_principal_name,customer_id,sequence_number,default_sequence_number,"
    "entitled,last_login\n"
)
OCTOBER_1 = HEADER + (
    "0001,a@x,C1,101,100,true,2026-09-30\n"
    "0002,b@x,C1,,100,true,2026-09-30\n"
    "0003,c@x,C2,201,200,false,2026-09-30\n"
)
OCTOBER_15 = OCTOBER_1.replace("0001,a@x,C1,101", "0001,a@x,C1,102")
FIXED = (
    OCTOBER_15.replace("0003,c@x,C2,201,200,false", "0003,c@x,C2,201,200,true")
    + "0404,d@x,C2,,200,true,2026-10-30\n"
)
NOW = datetime(2026, 11, 3, tzinfo=UTC)
TIMEZONE = "Europe/Stockholm"  # the billing timezone of the shipped config


@pytest.fixture
def engine(postgres):
    engine = create_engine(
        postgres.url_of(postgres.create_database(f"entitlements_{next(DATABASES)}"))
    )
    upgrade(engine)
    return engine


def snapshot_file(tmp_path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content)
    return lambda: from_file(path, NOW, TIMEZONE)


def month_calls() -> pd.DataFrame:
    moments = ["2026-10-05", "2026-10-20", "2026-10-20", "2026-10-20", "2026-10-20"]
    return pd.DataFrame(
        {
            "user_id": ["0001", "0001", "0002", "0003", "0404"],
            "cost_minor": [10, 20, 30, 40, 50],
            "start_utc": pd.to_datetime(moments).tz_localize("UTC"),
        }
    )


def test_a_month_captures_once_and_reruns_reuse_its_snapshot(engine, tmp_path):
    first = snapshot_for_month(
        engine,
        "2026-10",
        snapshot_file(tmp_path, "entitlements_2026-10-01.csv", OCTOBER_1),
        refresh=False,
    )

    def must_not_capture():
        raise AssertionError("a re-run must not take a new snapshot")

    assert snapshot_for_month(engine, "2026-10", must_not_capture, refresh=False) == first
    refreshed = snapshot_for_month(
        engine,
        "2026-10",
        snapshot_file(tmp_path, "entitlements_2026-10-15.csv", OCTOBER_15),
        refresh=True,
    )
    assert refreshed != first
    assert snapshot_for_month(engine, "2026-10", must_not_capture, refresh=False) == refreshed


def test_as_of_join_across_a_cost_center_change_default_sequence_and_suspense_until_fixed(
    engine, tmp_path
):
    snapshot_for_month(
        engine,
        "2026-10",
        snapshot_file(tmp_path, "entitlements_2026-10-01.csv", OCTOBER_1),
        refresh=False,
    )
    pinned = snapshot_for_month(
        engine,
        "2026-10",
        snapshot_file(tmp_path, "entitlements_2026-10-15.csv", OCTOBER_15),
        refresh=True,
    )
    attributed, suspense, *_ = attribute_calls(month_calls(), history(engine, pinned), pinned)
    assert attributed[["user_id", "sequence_number", "cost_minor"]].values.tolist() == [
        ["0001", "101", 10],
        ["0001", "102", 20],
        ["0002", "100", 30],
    ]
    assert suspense[["user_id", "reason_code"]].values.tolist() == [
        ["0003", "NOT_ENTITLED"],
        ["0404", "UNKNOWN_ACCOUNT"],
    ]
    fixed = snapshot_for_month(
        engine,
        "2026-10",
        snapshot_file(tmp_path, "entitlements_2026-10-16.csv", FIXED),
        refresh=True,
    )
    attributed, suspense, *_ = attribute_calls(month_calls(), history(engine, fixed), fixed)
    assert suspense.empty
    assert attributed["cost_minor"].sum() == 150  # every call billed once the accounts are fixed


def test_a_file_s_date_is_midnight_in_the_billing_timezone(tmp_path):
    winter = snapshot_file(tmp_path, "entitlements_2026-11-02.csv", OCTOBER_1)()
    summer = snapshot_file(tmp_path, "entitlements_2026-07-01.csv", OCTOBER_1)()
    assert (winter.taken_at, summer.taken_at) == (
        datetime(2026, 11, 1, 23, tzinfo=UTC),
        datetime(2026, 6, 30, 22, tzinfo=UTC),
    )
    # no date in the name: the capture time
    assert snapshot_file(tmp_path, "entitlements.csv", OCTOBER_1)().taken_at == NOW


def test_a_snapshot_with_conflicting_rows_is_rejected_and_nothing_is_pinned(engine, tmp_path):
    conflicting = OCTOBER_1 + "0001,a@x,C2,201,200,true,2026-09-30\n"
    with pytest.raises(
        EntitlementError,
        match=r"entitlements_2026-10-01.csv: account ids listed more than once on lines \[2, 5\]",
    ):
        snapshot_for_month(
            engine,
            "2026-10",
            snapshot_file(tmp_path, "entitlements_2026-10-01.csv", conflicting),
            refresh=False,
        )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM month_entitlement")).scalar() == 0


def test_a_snapshot_from_a_sql_query_on_an_airflow_connection(postgres, monkeypatch):
    portal = postgres.create_database("portal")
    with create_engine(postgres.url_of(portal)).begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE user_profile (account_id text, user_principal_name text, "
                "customer_id text, sequence_number text, default_sequence_number text, "
                "entitled boolean, last_login date)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO user_profile "
                "VALUES ('0001', 'a@x', 'C1', NULL, '100', true, '2026-09-30')"
            )
        )
    monkeypatch.setenv("AIRFLOW_CONN_ENTITLEMENTS_DB", json.dumps(postgres.connection(portal)))
    snapshot = from_query("entitlements_db", "SELECT * FROM user_profile", NOW)
    assert snapshot.rows[
        ["account_id", "sequence_number", "entitled", "last_login"]
    ].values.tolist() == [["0001", "", True, "2026-09-30"]]
    assert snapshot.taken_at == NOW
