"""Rated calls debited to prepaid balances (invariant 7) on a real PostgreSQL, and on SQLite
(the demo's billing database): each call debited once whatever is replayed, re-rating as a
reversal and a new debit, refused and non-prepaid calls left alone, concurrent runs
serialised, a settled month reversing what vanished, the cache equal to the entries."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import Connection, Engine

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid import accounts
from cdr_billing.prepaid.balances import LedgerError, debit_calls, ledger_balance, settle_calls
from cdr_billing.schema import balance_entry, call_debit, prepaid_account

OCTOBER = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
LEVELS = accounts.AccountSettings(
    currency="EUR",
    low_balance_minor=500,
    topup_minor=2000,
    lock_level_minor=0,
    unlock_level_minor=100,
)


@dataclass(frozen=True)
class Call:
    """One rated call as a run hands it over."""

    key: str
    account: str | None
    cost: int
    currency: str = "EUR"
    start: str = "2026-10-05 10:00:00"


def frame(calls: Sequence[Call]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "call_key": [c.key for c in calls],
            "account_id": [c.account for c in calls],
            "cost_minor": pd.array([c.cost for c in calls], dtype="int64"),
            "currency": [c.currency for c in calls],
            "call_start": pd.to_datetime([c.start for c in calls], utc=True),
            "billed_seconds": pd.array([60 + n for n in range(len(calls))], dtype="int64"),
            "tariff_version": pd.array([None if n % 3 else 7 for n in range(len(calls))], "Int64"),
            "source_file": ["carrier_20261005_1000.csv"] * len(calls),
            "source_row": pd.array(range(len(calls)), dtype="int64"),
        }
    )


@pytest.fixture(scope="module")
def pg(postgres) -> Engine:
    engine = create_engine(postgres.url_of(postgres.create_database("prepaid_debits")))
    upgrade(engine)
    return engine


@pytest.fixture
def sqlite(tmp_path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'billing.sqlite'}")
    upgrade(engine)
    return engine


def new_accounts(engine: Engine, count: int, currency: str = "EUR", **levels) -> list[str]:
    """Fresh prepaid accounts of their own (the tests share one database)."""
    prefix = uuid.uuid4().hex[:8]
    ids = [f"{prefix}-{n}" for n in range(count)]
    settings = accounts.AccountSettings(**{**LEVELS.__dict__, "currency": currency, **levels})
    with engine.begin() as conn:
        for account in ids:
            accounts.add(conn, account, settings, "test")
    return ids


def debit(engine: Engine, calls: Sequence[Call], run_id: str = "run"):
    with engine.begin() as conn:
        return debit_calls(conn, frame(calls), run_id)


def entries(engine: Engine, call_key: str) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(
                    balance_entry.c.kind,
                    balance_entry.c.amount_minor,
                    balance_entry.c.idempotency_key,
                    balance_entry.c.account_id,
                )
                .where(balance_entry.c.call_key == call_key)
                .order_by(balance_entry.c.entry_id)
            )
        ]


def balance(engine: Engine, account: str) -> int:
    """The cached balance, after checking it against the sum of the entries."""
    with engine.connect() as conn:
        cached = conn.execute(
            select(prepaid_account.c.balance_minor).where(prepaid_account.c.account_id == account)
        ).scalar_one()
        assert cached == ledger_balance(conn, account), account
    return cached


def counts(summary) -> dict[str, int]:
    names = ("debited", "rerated", "unchanged", "redelivered", "reversed", "not_prepaid", "refused")
    return {name: getattr(summary, name) for name in names if getattr(summary, name)}


def test_a_replayed_frame_and_overlapping_frames_debit_each_call_once(pg):
    (a, b) = new_accounts(pg, 2)
    calls = [Call(f"{a}:t{n}", (a, b)[n % 2], 10 + n) for n in range(10)]
    assert counts(debit(pg, calls[:6], "run-1")) == {"debited": 6}
    assert counts(debit(pg, calls[:6], "run-1")) == {"unchanged": 6}  # a retried task
    overlapping = debit(pg, calls[3:], "run-2")
    assert counts(overlapping) == {"unchanged": 3, "debited": 4}
    assert overlapping.balances == {a: -(10 + 12 + 14 + 16 + 18), b: -(11 + 13 + 15 + 17 + 19)}
    assert all(len(entries(pg, c.key)) == 1 for c in calls)
    assert entries(pg, calls[4].key) == [("debit", -14, f"debit:{calls[4].key}:1", a)]
    assert (balance(pg, a), balance(pg, b)) == (-70, -75)


def test_a_debit_records_the_call_and_the_run(pg):
    (a,) = new_accounts(pg, 1)
    debit(pg, [Call(f"{a}:t1", a, 42, start="2026-10-07 08:30:00")], "run-7")
    with pg.connect() as conn:
        row = conn.execute(select(balance_entry).where(balance_entry.c.call_key == f"{a}:t1")).one()
        current = conn.execute(select(call_debit).where(call_debit.c.call_key == f"{a}:t1")).one()
    assert (row.run_id, row.created_by, row.tariff_version, row.billed_seconds) == (
        "run-7",
        "pipeline",
        7,
        60,
    )
    assert (row.source_file, row.source_row, row.currency) == (
        "carrier_20261005_1000.csv",
        0,
        "EUR",
    )
    assert row.call_start == datetime(2026, 10, 7, 8, 30, tzinfo=UTC)
    assert (current.entry_id, current.cost_minor, current.revision) == (row.entry_id, 42, 1)


def test_re_rating_reverses_then_debits_again_and_back(pg):
    (a,) = new_accounts(pg, 1)
    key = f"{a}:t1"
    debit(pg, [Call(key, a, 100)])
    assert counts(debit(pg, [Call(key, a, 80)], "after-fix")) == {"rerated": 1}
    assert counts(debit(pg, [Call(key, a, 80)], "after-fix")) == {"unchanged": 1}
    assert counts(debit(pg, [Call(key, a, 100)], "fix-undone")) == {"rerated": 1}
    assert entries(pg, key) == [
        ("debit", -100, f"debit:{key}:1", a),
        ("reversal", 100, f"reversal:{key}:1", a),
        ("debit", -80, f"debit:{key}:2", a),
        ("reversal", 80, f"reversal:{key}:2", a),
        ("debit", -100, f"debit:{key}:3", a),
    ]
    with pg.connect() as conn:
        reversals = conn.execute(
            select(balance_entry.c.reverses_entry_id, balance_entry.c.reason)
            .where(balance_entry.c.call_key == key, balance_entry.c.kind == "reversal")
            .order_by(balance_entry.c.entry_id)
        ).all()
        debits = conn.execute(
            select(balance_entry.c.entry_id)
            .where(balance_entry.c.call_key == key, balance_entry.c.kind == "debit")
            .order_by(balance_entry.c.entry_id)
        ).scalars()
        first, second, third = debits
        assert reversals == [(first, "re-rated"), (second, "re-rated")]
        current = conn.execute(select(call_debit).where(call_debit.c.call_key == key)).one()
    assert (current.entry_id, current.cost_minor, current.revision) == (third, 100, 3)
    assert balance(pg, a) == -100


def test_a_prepaid_run_keeps_the_first_delivery_of_a_call_delivered_again(pg):
    """A prepaid run reads each file once: a call it meets again at another cost or account is
    a re-delivery in a later file (the month's first delivery wins), not a re-rating."""
    (a, b) = new_accounts(pg, 2)
    key = f"{a}:t1"
    with pg.begin() as conn:
        debit_calls(conn, frame([Call(key, a, 100)]), "increment-1", new_calls_only=True)
    with pg.begin() as conn:
        again = debit_calls(
            conn,
            frame([Call(key, a, 130), Call(f"{a}:t2", b, 5), Call(key.replace("t1", "t3"), a, 7)]),
            "increment-2",
            new_calls_only=True,
        )
    assert counts(again) == {"redelivered": 1, "debited": 2}
    assert entries(pg, key) == [("debit", -100, f"debit:{key}:1", a)]
    assert (balance(pg, a), balance(pg, b)) == (-107, -5)
    assert counts(debit(pg, [Call(key, a, 130)], "monthly")) == {"rerated": 1}  # the month's


def test_a_call_now_of_another_account_moves_its_debit(pg):
    (a, b) = new_accounts(pg, 2)
    debit(pg, [Call(f"{a}:t1", a, 30)])
    moved = debit(pg, [Call(f"{a}:t1", b, 30)])
    assert counts(moved) == {"rerated": 1}
    assert moved.balances == {a: 0, b: -30}
    assert [e[0] + "@" + e[3] for e in entries(pg, f"{a}:t1")] == [
        f"debit@{a}",
        f"reversal@{a}",
        f"debit@{b}",
    ]


def test_a_call_in_another_currency_is_refused_listed_and_not_debited(pg):
    (a,) = new_accounts(pg, 1)
    summary = debit(pg, [Call(f"{a}:usd", a, 50, "USD"), Call(f"{a}:eur", a, 5)])
    assert counts(summary) == {"debited": 1, "refused": 1}
    (refused,) = summary.refused_calls
    assert (refused.call_key, refused.account_id) == (f"{a}:usd", a)
    assert refused.reason == "currency USD is not the account's EUR"
    assert entries(pg, f"{a}:usd") == []
    assert balance(pg, a) == -5
    outcome = summary.outcomes.set_index("call_key")["outcome"].to_dict()
    assert outcome == {f"{a}:usd": "refused", f"{a}:eur": "debited"}


def test_calls_of_other_and_inactive_accounts_are_left_untouched(pg):
    (a, gone) = new_accounts(pg, 2)
    with pg.begin() as conn:
        accounts.deactivate(conn, gone, "test")
    calls = [Call(f"{a}:post", f"{a}-postpaid", 70), Call(f"{a}:gone", gone, 20)]
    calls.append(Call(f"{a}:nobody", None, 9))
    summary = debit(pg, calls)
    assert counts(summary) == {"not_prepaid": 3}
    assert set(summary.outcomes["outcome"]) == {"not_prepaid"}
    with pg.connect() as conn:
        touched = conn.execute(
            select(func.count())
            .select_from(call_debit)
            .where(call_debit.c.call_key.in_([c.key for c in calls]))
        ).scalar_one()
    assert touched == 0 and all(entries(pg, c.key) == [] for c in calls)
    assert balance(pg, gone) == 0


def test_a_frame_that_names_a_call_twice_or_lacks_a_column_is_refused(pg):
    (a,) = new_accounts(pg, 1)
    with pg.begin() as conn, pytest.raises(LedgerError, match="appears twice"):
        debit_calls(conn, frame([Call(f"{a}:1", a, 1), Call(f"{a}:1", a, 2)]), "r")
    with pg.begin() as conn, pytest.raises(LedgerError, match=r"\['currency'\]"):
        debit_calls(conn, frame([Call(f"{a}:1", a, 1)]).drop(columns="currency"), "r")
    assert entries(pg, f"{a}:1") == []


def test_twenty_concurrent_runs_on_overlapping_frames_debit_each_call_once(postgres, pg):
    engine = create_engine(pg.url, pool_size=20)
    ids = new_accounts(engine, 6)
    calls = [Call(f"{ids[0]}:c{n}", ids[n % 6], 1 + n % 17) for n in range(600)]
    # run k: calls [25k, 25k + 200): each call in up to eight frames, every account in all
    frames = [calls[25 * k : 25 * k + 200] for k in range(20)]
    start = threading.Barrier(20)
    failures: list[BaseException] = []

    def run(k: int) -> None:
        try:
            start.wait()
            debit(engine, frames[k], f"run-{k}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    debited = {c.key for c in calls}
    with engine.connect() as conn:
        per_call = dict(
            conn.execute(
                select(balance_entry.c.call_key, func.count())
                .where(balance_entry.c.account_id.in_(ids))
                .group_by(balance_entry.c.call_key)
            ).all()
        )
    assert per_call == dict.fromkeys(debited, 1)
    for account in ids:
        assert balance(engine, account) == -sum(
            c.cost for c in calls if c.key in debited and c.account == account
        )
    engine.dispose()


def test_a_settled_month_reverses_the_calls_that_vanished(pg):
    (a, b, outside) = new_accounts(pg, 3)
    kept, vanished = Call(f"{a}:1", a, 10), Call(f"{a}:2", a, 20)
    november = Call(f"{a}:3", a, 5, start="2026-11-01 00:00:00")
    other = Call(f"{a}:4", outside, 7)
    debit(pg, [kept, vanished, november, other])
    with pg.begin() as conn:
        settled = settle_calls(conn, frame([kept]), "month", *OCTOBER, accounts=[a, b])
    assert counts(settled) == {"unchanged": 1, "reversed": 1}
    assert entries(pg, vanished.key)[1] == ("reversal", 20, f"reversal:{vanished.key}:1", a)
    assert len(entries(pg, november.key)) == 1 and len(entries(pg, other.key)) == 1
    with pg.connect() as conn:
        current = conn.execute(
            select(call_debit).where(call_debit.c.call_key == vanished.key)
        ).one()
        reversal = conn.execute(
            select(balance_entry.c.entry_id, balance_entry.c.reason).where(
                balance_entry.c.idempotency_key == f"reversal:{vanished.key}:1"
            )
        ).one()
    assert (current.cost_minor, current.revision, current.entry_id) == (0, 1, reversal.entry_id)
    assert reversal.reason == "not billed in the settled period"
    assert (balance(pg, a), balance(pg, outside)) == (-15, -7)
    # the month settled again: nothing more; the call billed again later: revision 2
    with pg.begin() as conn:
        again = settle_calls(conn, frame([kept]), "month", *OCTOBER, accounts=[a, b])
    assert counts(again) == {"unchanged": 1}
    assert counts(debit(pg, [vanished], "late")) == {"debited": 1}
    assert entries(pg, vanished.key)[2] == ("debit", -20, f"debit:{vanished.key}:2", a)
    assert balance(pg, a) == -35


def test_a_settlement_reverses_a_call_that_is_no_longer_prepaid(pg):
    (a,) = new_accounts(pg, 1)
    call = Call(f"{a}:1", a, 12)
    debit(pg, [call])
    postpaid = Call(call.key, f"{a}-postpaid", 12)
    with pg.begin() as conn:
        settled = settle_calls(conn, frame([postpaid]), "month", *OCTOBER, accounts=[a])
    assert counts(settled) == {"not_prepaid": 1, "reversed": 1}
    assert settled.balances == {a: 0}


def test_sqlite_debits_re_rates_refuses_and_settles_the_same_way(sqlite):
    (a, b) = new_accounts(sqlite, 2)
    (sek,) = new_accounts(sqlite, 1, currency="SEK")
    calls = [Call(f"{a}:1", a, 10), Call(f"{a}:2", b, 20), Call(f"{a}:3", sek, 30)]
    calls.append(Call(f"{a}:4", "postpaid", 40))
    assert counts(debit(sqlite, calls)) == {"debited": 2, "refused": 1, "not_prepaid": 1}
    assert counts(debit(sqlite, calls)) == {"unchanged": 2, "refused": 1, "not_prepaid": 1}
    assert counts(debit(sqlite, [Call(f"{a}:1", a, 15)])) == {"rerated": 1}
    with sqlite.begin() as conn:
        settled = settle_calls(conn, frame([Call(f"{a}:1", a, 15)]), "m", *OCTOBER, [a, b])
    assert counts(settled) == {"unchanged": 1, "reversed": 1}
    assert (balance(sqlite, a), balance(sqlite, b), balance(sqlite, sek)) == (-15, 0, 0)
    assert [e[2] for e in entries(sqlite, f"{a}:1")] == [
        f"debit:{a}:1:1",
        f"reversal:{a}:1:1",
        f"debit:{a}:1:2",
    ]
    with sqlite.begin() as conn:  # the scratch tables are gone: a second run in one transaction
        debit_calls(conn, frame([Call(f"{a}:5", a, 1)]), "r1")
        debit_calls(conn, frame([Call(f"{a}:6", a, 1)]), "r2")
    assert balance(sqlite, a) == -17


def test_a_settlement_without_accounts_settles_every_account_deactivated_ones_too(sqlite):
    """An account deactivated mid-month: the month bills its calls post-paid (or holds them in
    suspense), so the debits of its calls are reversed, never charged twice."""
    (a, b, gone) = new_accounts(sqlite, 3)
    debit(sqlite, [Call("s:1", a, 1), Call("s:2", b, 2), Call("s:3", gone, 3)])
    with sqlite.begin() as conn:
        accounts.deactivate(conn, gone, "test")
    with sqlite.begin() as conn:
        settled = settle_calls(conn, frame([Call("s:1", a, 1)]), "month", *OCTOBER)
    assert counts(settled) == {"unchanged": 1, "reversed": 2}
    assert (balance(sqlite, a), balance(sqlite, b), balance(sqlite, gone)) == (-1, 0, 0)


def test_two_runs_in_one_transaction_on_postgres(pg):
    (a,) = new_accounts(pg, 1)
    with pg.begin() as conn:
        first = debit_calls(conn, frame([Call(f"{a}:1", a, 4)]), "r1")
        second = debit_calls(conn, frame([Call(f"{a}:1", a, 4), Call(f"{a}:2", a, 5)]), "r2")
    assert (counts(first), counts(second)) == ({"debited": 1}, {"unchanged": 1, "debited": 1})
    assert balance(pg, a) == -9


# --- the property: balances against an oracle of their own ----------------------------------

ACCOUNTS = 3
CALL_KEYS = 6
steps = st.lists(
    st.tuples(
        st.booleans(),  # a settlement of the month instead of a debit run
        st.lists(
            st.tuples(
                st.integers(0, CALL_KEYS - 1),
                st.integers(0, ACCOUNTS),  # ACCOUNTS: a post-paid user
                st.sampled_from([0, 1, 7, 7, 250, 1001]),
            ),
            max_size=CALL_KEYS,
            unique_by=lambda call: call[0],
        ),
    ),
    min_size=1,
    max_size=6,
)


def oracle_balances(run: list, ids: list[str]) -> dict[str, int]:
    """Minus the sum of each call's last cost, on its last prepaid account: a debit run
    leaves a call now post-paid as it was, a settlement keeps only the prepaid calls it names
    (plain dicts, nothing from the engine)."""
    last: dict[int, tuple[int, int]] = {}
    for settles, calls in run:
        named = {n: (account, cost) for n, account, cost in calls if account < ACCOUNTS}
        last = named if settles else {**last, **named}
    totals = dict.fromkeys(ids, 0)
    for account, cost in last.values():
        totals[ids[account]] -= cost
    return totals


def replay(engine: Engine, run: list, ids: list[str]) -> None:
    """Each step in its transaction, every other step retried (nothing may change)."""
    for step, (settles, calls) in enumerate(run):
        users = [*ids, f"{ids[0]}-postpaid"]
        rows = frame([Call(f"{ids[0]}:{n}", users[account], cost) for n, account, cost in calls])
        for _attempt in range(1 + step % 2):
            with engine.begin() as conn:
                if settles:
                    settle_calls(conn, rows, f"month-{step}", *OCTOBER, accounts=ids)
                else:
                    debit_calls(conn, rows, f"run-{step}")


def check_against_oracle(engine: Engine, run: list) -> None:
    ids = new_accounts(engine, ACCOUNTS)
    replay(engine, run, ids)
    expected = oracle_balances(run, ids)
    assert {account: balance(engine, account) for account in ids} == expected
    with engine.connect() as conn:
        net = conn.execute(
            text(
                "SELECT call_key, SUM(CASE kind WHEN 'debit' THEN 1 ELSE -1 END) "
                "FROM balance_entry WHERE account_id IN (:a, :b, :c) GROUP BY call_key"
            ),
            dict(zip("abc", ids, strict=True)),
        ).all()
    assert all(count in (0, 1) for _, count in net)  # never two live debits of one call


@settings(max_examples=40)
@given(run=steps)
def test_balances_equal_minus_each_call_s_last_cost_on_postgres(pg, run):
    check_against_oracle(pg, run)


@pytest.fixture(scope="module")
def sqlite_shared(tmp_path_factory) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'billing.sqlite'}")
    upgrade(engine)
    return engine


@settings(max_examples=20)
@given(run=steps)
def test_balances_equal_minus_each_call_s_last_cost_on_sqlite(sqlite_shared, run):
    check_against_oracle(sqlite_shared, run)


# --- the measurement ------------------------------------------------------------------------


def _bulk_accounts(conn: Connection, ids: list[str]) -> None:
    now = datetime.now(UTC)
    conn.execute(
        insert(prepaid_account),
        [
            {
                "account_id": account,
                **LEVELS.__dict__,
                "balance_minor": 0,
                "locked": False,
                "updated_at": now,
            }
            for account in ids
        ],
    )


def test_debiting_20000_calls_over_5000_accounts_on_postgres(pg, capsys):
    prefix = uuid.uuid4().hex[:8]
    ids = [f"{prefix}-{n:05d}" for n in range(5000)]
    with pg.begin() as conn:
        _bulk_accounts(conn, ids)
    costs = itertools.cycle(range(1, 500))
    calls = [Call(f"{prefix}:{n}", ids[n % 5000], next(costs)) for n in range(20_000)]
    rows = frame(calls)
    timings = {}
    for label, batch in [
        ("new", rows),
        ("replayed", rows),
        ("re-rated", rows.assign(cost_minor=rows["cost_minor"] + 1)),
    ]:
        started = time.perf_counter()
        with pg.begin() as conn:
            summary = debit_calls(conn, batch, label)
        timings[label] = time.perf_counter() - started
        assert len(summary.balances) == 5000
    with capsys.disabled():
        print(
            "\ndebit_calls, 20,000 calls over 5,000 accounts (PostgreSQL): "
            + ", ".join(f"{label} {seconds:.2f} s" for label, seconds in timings.items())
        )
    assert counts(summary) == {"rerated": 20_000}
    expected = sum(c.cost + 1 for c in calls if c.account == ids[0])
    assert balance(pg, ids[0]) == -expected
