"""`make demo`'s prepaid part, on a SQLite billing database as the demo's: its accounts are
made prepaid with the accounts command once (a second demo keeps them as they are), and its
prepaid run falls inside the demo month (before the monthly run, which then settles)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select

from cdr_billing.config import load_config
from cdr_billing.months import BillingMonth
from cdr_billing.prepaid import accounts
from cdr_billing.schema import prepaid_account_change
from cdr_devkit import demo


@pytest.fixture
def demo_billing_db(tmp_path, monkeypatch):
    """The demo's billing connection pointed at a fresh SQLite file; its URL."""
    path = tmp_path / "billing.sqlite"
    connection = {"conn_type": "sqlite", "host": str(path)}
    monkeypatch.setenv("AIRFLOW_CONN_BILLING_DB", json.dumps(connection))
    return f"sqlite:///{path}"


def test_the_demo_makes_its_accounts_prepaid_once(demo_billing_db, capsys):
    demo.add_prepaid_accounts()  # migrates the new database first
    first = capsys.readouterr().out
    demo.add_prepaid_accounts()  # a second demo
    again = capsys.readouterr().out

    engine = create_engine(demo_billing_db)
    with engine.connect() as conn:
        rows = {row["account_id"]: row for row in accounts.list_accounts(conn)}
        changes = conn.execute(select(func.count()).select_from(prepaid_account_change))
        audited = changes.scalar_one()
    assert {account: row["payment_method_ref"] for account, row in rows.items()} == {
        "SUB-00060": "approve",
        "SUB-00061": "decline",
        "SUB-00062": "approve",
    }
    for row in rows.values():
        assert (row["currency"], row["balance_minor"], row["locked"]) == ("EUR", 0, False)
        assert (row["low_balance_minor"], row["topup_minor"]) == (500, 4000)
        assert (row["lock_level_minor"], row["unlock_level_minor"]) == (0, 200)
    assert audited == 3  # one `add` each, nothing on the second demo
    assert first.count("added SUB-000") == 3
    assert again.count("kept as it is") == 3 and "added" not in again


@pytest.mark.parametrize("month", ["2026-10", "2026-02", "2026-03", "2027-01"])
def test_the_prepaid_run_falls_inside_the_demo_month(month):
    """The prepaid DAG's run bills the month of its data interval's start: a manual run at
    the demo's date starts one interval earlier, still inside the month."""
    moment = demo.prepaid_run_date(month)
    config = load_config()
    interval_start = moment - timedelta(minutes=config.prepaid.interval_minutes)
    start, end = BillingMonth.parse(month).bounds(config.billing.timezone)
    assert start <= interval_start < moment < end
