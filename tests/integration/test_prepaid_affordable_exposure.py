"""The longest affordable call and the exposure against a real PostgreSQL billing database: the
tariff stored as versions (band at the call's start, longest prefix, newest version), the
account's balance, and exposure rows written once per run."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pandas as pd
import pytest
from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import Engine

from cdr_billing.config import load_config
from cdr_billing.migrations import upgrade
from cdr_billing.prepaid.affordable import AffordableError, affordable_for
from cdr_billing.prepaid.exposure import ExposureSettings, run_exposure
from cdr_billing.schema import balance_entry, call_debit, prepaid_account, prepaid_exposure
from cdr_billing.tariff import read_tariff_file, store_version

DATABASES = itertools.count()
UPDATED = datetime(2026, 11, 3, 7, 30, tzinfo=UTC)
TARIFF = """prefix,destination,price_per_minute,connection_fee,first_increment,next_increment,\
minimum_charge,currency,band,start_hour,end_hour
+46,Sweden,1.20,0.05,60,60,,EUR,,,
+4670,Sweden mobile day,0.60,,30,6,,EUR,day,8,18
+4670,Sweden mobile night,0.06,,30,6,,EUR,night,18,24
"""


@pytest.fixture
def engine(postgres, tmp_path) -> Engine:
    database = postgres.create_database(f"prepaid_afford_{next(DATABASES)}")
    engine = create_engine(postgres.url_of(database))
    upgrade(engine)
    path = tmp_path / "tariff.csv"
    path.write_text(TARIFF)
    store_version(engine, read_tariff_file(path, load_config().billing), path.name, "sha-1")
    with engine.begin() as conn:
        for account, balance, locked in [("acct-a", 100, False), ("acct-l", 5000, True)]:
            conn.execute(
                insert(prepaid_account).values(
                    account_id=account,
                    currency="EUR",
                    low_balance_minor=500,
                    topup_minor=2000,
                    lock_level_minor=0,
                    unlock_level_minor=100,
                    max_concurrent_calls=1,
                    active=True,
                    balance_minor=balance,
                    locked=locked,
                    updated_at=UPDATED,
                )
            )
    yield engine
    engine.dispose()


def test_the_band_at_the_calls_start_and_the_longest_prefix_price_the_answer(engine):
    rules = load_config().billing  # Europe/Stockholm: UTC+1 in November
    day = affordable_for(
        engine, "acct-a", "070-123 45 67", datetime(2026, 11, 3, 16, 59, tzinfo=UTC), rules
    )
    # 17:59 local, the day band: 1 c a second, 30 s then 6 s steps: 100 c buy 30 + 11 x 6 s
    assert (day.seconds, day.prefix, day.band) == (96, "4670", "day")
    assert (day.balance_minor, day.balance_updated_at) == (100, UPDATED)
    night = affordable_for(
        engine, "acct-a", "+46701234567", datetime(2026, 11, 3, 17, 0, tzinfo=UTC), rules
    )
    # 18:00 local, the night band, 0.1 c a second: 1002 s (30 + 162 x 6) cost 100.2 -> 100 c,
    # 1008 s cost 100.8 -> 101 c
    assert (night.seconds, night.band) == (1002, "night")
    landline = affordable_for(
        engine, "acct-a", "+4687654321", datetime(2026, 11, 3, 12, 0, tzinfo=UTC), rules
    )
    # prefix 46, 60/60: 5 + 120 c a minute is more than 100 c
    assert (landline.seconds, landline.prefix) == (0, "46")
    assert landline.as_json()["balance_updated_at"] == UPDATED.isoformat()


def test_a_locked_line_affords_nothing_and_unknowns_are_refused(engine):
    rules, at = load_config().billing, datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
    locked = affordable_for(engine, "acct-l", "+46701234567", at, rules)
    assert (locked.seconds, locked.locked) == (0, True)
    with pytest.raises(AffordableError, match="no active prepaid account"):
        affordable_for(engine, "nobody", "+46701234567", at, rules)
    with pytest.raises(AffordableError, match="no rate"):
        affordable_for(engine, "acct-a", "+4420123456", at, rules)


def _debit(conn, account: str, call: str, start: datetime, seconds: int, cost: int) -> None:
    entry_id = conn.execute(
        insert(balance_entry)
        .values(
            account_id=account,
            kind="debit",
            amount_minor=-cost,
            currency="EUR",
            idempotency_key=f"debit:{call}",
            call_key=call,
            call_start=start,
            billed_seconds=seconds,
            created_by="test",
            created_at=UPDATED,
        )
        .returning(balance_entry.c.entry_id)
    ).scalar_one()
    conn.execute(
        insert(call_debit).values(
            call_key=call, account_id=account, entry_id=entry_id, cost_minor=cost, revision=1
        )
    )


def test_exposure_rows_are_written_once_per_run(engine):
    with engine.begin() as conn:
        _debit(conn, "acct-a", "c1", datetime(2026, 11, 3, 9, 0, tzinfo=UTC), 600, 120)
        _debit(conn, "acct-a", "c2", datetime(2026, 11, 3, 9, 5, tzinfo=UTC), 300, 90)
        _debit(conn, "acct-a", "c0", datetime(2026, 10, 31, 9, 0, tzinfo=UTC), 6000, 999)
    undebited = pd.DataFrame([("acct-a", 40)], columns=["account_id", "cost_minor"])
    settings = ExposureSettings(limit_minor={"EUR": 500})
    month = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)

    for _ in range(2):  # a retried run replaces its rows
        report = run_exposure(engine, "run-1", *month, undebited, settings, UPDATED)

    with engine.connect() as conn:
        rows = conn.execute(select(prepaid_exposure).order_by("account_id")).mappings().all()
    # acct-a: 2 overlapping calls; 600 s; 210 c over 900 s: 2 x 2 x 600 x 210 / 900 = 560
    # acct-l: no calls, the EUR average over all accounts (the same calls): 2 x 1 x 600 x 210
    # / 900 = 280 (October's call is not of this month)
    assert [(r["account_id"], r["max_concurrent_calls"], r["bound_minor"]) for r in rows] == [
        ("acct-a", 2, 560),
        ("acct-l", 1, 280),
    ]
    assert rows[0]["undebited_minor"] == 40
    assert rows[0]["price_per_minute_micro"] == 140_000  # 210 c x 60 / 900 s = 0.14 EUR
    assert report.totals["EUR"].bound_minor == 840
    assert [e.account_id for e in report.above_limit] == ["acct-a"]  # 600 > 500
