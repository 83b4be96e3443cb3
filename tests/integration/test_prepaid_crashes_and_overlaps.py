"""Invariants 7 and 8 under crashes and overlapping runs, on a real PostgreSQL and a real switch:
a process killed with SIGKILL inside the ledger's transaction leaves nothing (no entry, no lock
event, no webhook); killed after the commit, before the delivery, its events reach the switch
once, in order, with the next delivery; two prepaid runs and the month's settlement at once
leave each call debited once, at the month's cost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid import accounts
from cdr_billing.prepaid.balances import debit_calls, settle_calls
from cdr_billing.prepaid.switch import HttpSwitchSender, deliver_pending
from cdr_devkit.services import connection_env

LEVELS = accounts.AccountSettings(
    currency="EUR",
    low_balance_minor=0,
    topup_minor=1000,
    lock_level_minor=0,
    unlock_level_minor=100,
)
NOVEMBER = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))

# Debits a call of the account and applies the lock rules in one transaction, telling the test
# where it is by a file: "posted" (inside the transaction) or "committed" (before a delivery
# that never comes), then waits to be killed.
CRASHING_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import pandas as pd
    from sqlalchemy import create_engine
    from cdr_billing.prepaid.balances import debit_calls
    from cdr_billing.prepaid.locks import apply_lock_rules

    url, account, cost, stage, where = sys.argv[1:6]
    calls = pd.DataFrame({
        "call_key": [f"{account}:{stage}"], "account_id": [account],
        "cost_minor": pd.array([int(cost)], dtype="int64"), "currency": ["EUR"],
        "call_start": pd.to_datetime(["2026-11-05 10:00:00"], utc=True),
        "billed_seconds": pd.array([60], dtype="int64"),
        "tariff_version": pd.array([1], dtype="Int64"), "source_file": ["f.csv"],
        "source_row": pd.array([2], dtype="int64"),
    })
    engine = create_engine(url)
    with engine.begin() as conn:
        debit_calls(conn, calls, "crashing-run", new_calls_only=True)
        apply_lock_rules(conn, [account], "credit control")
        if stage == "posted":
            Path(where).write_text("posted")
            time.sleep(600)
    Path(where).write_text("committed")
    time.sleep(600)
    """
)


@pytest.fixture(scope="module")
def database(postgres) -> str:
    url = postgres.url_of(postgres.create_database("prepaid_crashes"))
    upgrade(create_engine(url))
    return url


@pytest.fixture(scope="module")
def switch(services):
    return services.local.start_switch("crash_switch", secret="crash-secret")


def _account(engine, **levels) -> str:
    account = f"acc-{uuid.uuid4().hex[:8]}"
    settings = accounts.AccountSettings(**{**LEVELS.__dict__, **levels})
    with engine.begin() as conn:
        accounts.add(conn, account, settings, "test")
        accounts.post_manual(conn, account, "credit", 50, "start", "test")
    return account


def _killed_at(url: str, account: str, cost: int, stage: str, tmp_path: Path) -> None:
    """Run CRASHING_RUN until it reaches `stage`, then SIGKILL it."""
    where = tmp_path / f"{stage}.txt"
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, url, account, str(cost), stage, str(where)],
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 120
    while not where.exists():
        assert process.poll() is None, "the run ended before it reached its stage"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _rows(engine, sql: str, **params) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def test_killed_inside_the_transaction_leaves_no_entry_no_event_no_webhook(
    database, switch, tmp_path
):
    engine = create_engine(database)
    account = _account(engine)
    _killed_at(database, account, 80, "posted", tmp_path)
    assert _rows(engine, "SELECT kind FROM balance_entry WHERE account_id = :a", a=account) == [
        ("credit",)
    ]
    assert _rows(engine, "SELECT * FROM lock_event WHERE account_id = :a", a=account) == []
    assert _rows(engine, "SELECT * FROM switch_outbox WHERE account_id = :a", a=account) == []
    assert _rows(
        engine, "SELECT balance_minor FROM prepaid_account WHERE account_id = :a", a=account
    ) == [(50,)]


def test_killed_after_the_commit_its_lock_reaches_the_switch_once_with_the_next_delivery(
    database, switch, tmp_path, monkeypatch
):
    engine = create_engine(database)
    account = _account(engine)
    _killed_at(database, account, 80, "committed", tmp_path)
    assert _rows(
        engine, "SELECT state, balance_minor FROM lock_event WHERE account_id = :a", a=account
    ) == [("locked", -30)]
    pending = _rows(
        engine, "SELECT event_id, action FROM switch_outbox WHERE account_id = :a", a=account
    )
    assert [action for _, action in pending] == ["LOCK"]
    for key, value in connection_env({"prepaid_switch": switch.connection()}).items():
        monkeypatch.setenv(key, value)
    sender = HttpSwitchSender.from_connection("prepaid_switch")
    deliver_pending(engine, sender, datetime.now(UTC))
    deliver_pending(engine, sender, datetime.now(UTC))  # a second deliverer: nothing more
    received = [e for e in switch.events() if e["account_id"] == account]
    assert [(e["event_id"], e["action"]) for e in received] == pending
    assert received[0]["balance_minor"] == -30
    event_id = str(pending[0][0])
    assert [d["status"] for d in switch.deliveries() if str(d["event_id"]) == event_id] == [200]


def _calls(account_costs: list[tuple[str, str, int]], source_file: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "call_key": [key for key, _, _ in account_costs],
            "account_id": [account for _, account, _ in account_costs],
            "cost_minor": pd.array([cost for _, _, cost in account_costs], dtype="int64"),
            "currency": "EUR",
            "call_start": pd.to_datetime(["2026-11-05 10:00:00"] * len(account_costs), utc=True),
            "billed_seconds": pd.array([60] * len(account_costs), dtype="int64"),
            "tariff_version": pd.array([1] * len(account_costs), dtype="Int64"),
            "source_file": source_file,
            "source_row": pd.array(range(len(account_costs)), dtype="int64"),
        }
    )


def test_two_prepaid_runs_and_the_months_settlement_at_once_debit_each_call_once(database):
    """The month's settlement has the complete rating (its costs win); the prepaid runs saw
    the calls in increments, some at other costs (a partial call's first part alone)."""
    engine = create_engine(database)
    owners = [_account(engine) for _ in range(6)]
    month = [(f"call-{n}", owners[n % 6], 10 + n % 7) for n in range(600)]
    first = [(key, owner, cost + (n % 5 == 0)) for n, (key, owner, cost) in enumerate(month[:400])]
    second = [(key, owner, cost) for key, owner, cost in month[200:]]
    failures: list[BaseException] = []

    def run(work) -> None:
        try:
            for attempt in range(5):  # a deadlock or key race fails a try; its retry succeeds
                try:
                    with engine.begin() as conn:
                        work(conn)
                    return
                except Exception:
                    if attempt == 4:
                        raise
                    time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    works = [
        lambda conn: debit_calls(conn, _calls(first, "f1.csv"), "prepaid-1", new_calls_only=True),
        lambda conn: debit_calls(conn, _calls(second, "f2.csv"), "prepaid-2", new_calls_only=True),
        lambda conn: settle_calls(conn, _calls(month, "month"), "monthly", *NOVEMBER, owners),
    ]
    threads = [threading.Thread(target=run, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    # whatever the order, the month's settlement once more brings every call to its cost
    with engine.begin() as conn:
        settle_calls(conn, _calls(month, "month"), "monthly-again", *NOVEMBER, owners)
    current = dict(
        _rows(engine, "SELECT call_key, cost_minor FROM call_debit WHERE call_key LIKE 'call-%'")
    )
    assert current == {key: cost for key, _, cost in month}
    net = Counter()
    for key, kind in _rows(
        engine, "SELECT call_key, kind FROM balance_entry WHERE call_key LIKE 'call-%'"
    ):
        net[key] += 1 if kind == "debit" else -1
    assert set(net.values()) == {1}  # exactly one debit standing per call
    for owner in owners:
        cached, summed = _rows(
            engine,
            "SELECT a.balance_minor, (SELECT sum(amount_minor) FROM balance_entry e "
            "WHERE e.account_id = a.account_id) FROM prepaid_account a WHERE account_id = :a",
            a=owner,
        )[0]
        expected = 50 - sum(cost for _, account, cost in month if account == owner)
        assert cached == summed == expected, owner
