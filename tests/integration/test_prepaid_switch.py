"""The switch learns LOCK and UNLOCK from the outbox: real PostgreSQL, the real local switch
process (cdr_devkit.switch_server) on loopback, the deliverer as the DAG runs it, and a
deliverer process killed between the switch's receipt and the commit of delivered_at."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select, update
from sqlalchemy.engine import Engine

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid.switch import (
    HttpSwitchSender,
    backoff_seconds,
    deliver_pending,
    line_state,
)
from cdr_billing.schema import lock_event, prepaid_account, switch_outbox
from cdr_devkit.services import LocalServices, SwitchServer, connection_env

SECRET = "s3cret-of-the-switch"
DATABASES = itertools.count()
T0 = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)


@pytest.fixture
def engine(postgres) -> Engine:
    database = postgres.create_database(f"prepaid_switch_{next(DATABASES)}")
    engine = create_engine(postgres.url_of(database))
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def local(tmp_path: Path):
    with LocalServices(tmp_path / "services") as services:
        yield services


@pytest.fixture
def switch(local: LocalServices, monkeypatch) -> SwitchServer:
    server = local.start_switch("switch", SECRET)
    for key, value in connection_env({"prepaid_switch": server.connection()}).items():
        monkeypatch.setenv(key, value)
    return server


def add_account(engine: Engine, account_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(prepaid_account).values(
                account_id=account_id,
                currency="EUR",
                low_balance_minor=500,
                topup_minor=2000,
                lock_level_minor=0,
                unlock_level_minor=100,
                payment_method_ref=None,
                max_concurrent_calls=1,
                active=True,
                balance_minor=1000,
                locked=False,
                updated_at=T0,
            )
        )


def add_event(engine: Engine, account_id: str, action: str, balance_minor: int = 0) -> int:
    """A lock event and its outbox row in one transaction, as the credit control writes them."""
    with engine.begin() as conn:
        event_id = conn.execute(
            insert(lock_event)
            .values(
                account_id=account_id,
                state="locked" if action == "LOCK" else "unlocked",
                reason="test",
                balance_minor=balance_minor,
                created_by="test",
                created_at=T0,
            )
            .returning(lock_event.c.event_id)
        ).scalar_one()
        payload = {
            "event_id": event_id,
            "account_id": account_id,
            "action": action,
            "balance_minor": balance_minor,
            "currency": "EUR",
            "reason": "test",
            "occurred_at": T0.isoformat(),
        }
        conn.execute(
            insert(switch_outbox).values(
                event_id=event_id,
                account_id=account_id,
                action=action,
                payload=json.dumps(payload, separators=(",", ":")),
                created_at=T0,
                attempts=0,
                next_attempt_at=T0,
            )
        )
    return event_id


def outbox_rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        query = select(switch_outbox).order_by(switch_outbox.c.outbox_id)
        return [dict(row) for row in conn.execute(query).mappings()]


def received_by_account(switch: SwitchServer) -> dict[str, list[int]]:
    by_account: dict[str, list[int]] = {}
    for event in switch.events():
        by_account.setdefault(event["account_id"], []).append(event["event_id"])
    return by_account


def written_by_account(engine: Engine) -> dict[str, list[int]]:
    by_account: dict[str, list[int]] = {}
    for row in outbox_rows(engine):
        by_account.setdefault(row["account_id"], []).append(row["event_id"])
    return by_account


def test_events_reach_the_switch_in_order_per_account_and_the_view_shows_the_line(engine, switch):
    for account in ("acct-a", "acct-b", "acct-c"):
        add_account(engine, account)
    for account, action in [
        ("acct-a", "LOCK"),
        ("acct-b", "LOCK"),
        ("acct-a", "UNLOCK"),
        ("acct-c", "LOCK"),
        ("acct-a", "LOCK"),
        ("acct-b", "UNLOCK"),
    ]:
        add_event(engine, account, action)

    outcome = deliver_pending(engine, HttpSwitchSender.from_connection(), T0)

    assert (outcome.delivered, outcome.failed, outcome.waiting) == (6, 0, 0)
    assert received_by_account(switch) == written_by_account(engine)
    assert [e["action"] for e in switch.events() if e["account_id"] == "acct-a"] == [
        "LOCK",
        "UNLOCK",
        "LOCK",
    ]
    assert all(row["delivered_at"] == T0 for row in outbox_rows(engine))
    with engine.begin() as conn:
        conn.execute(
            update(prepaid_account)
            .where(prepaid_account.c.account_id == "acct-a")
            .values(locked=True, balance_minor=-3)
        )
        state = line_state(conn, "acct-a")
        assert (state.locked, state.balance_minor, state.currency) == (True, -3, "EUR")
        assert line_state(conn, "acct-unknown") is None


def test_a_switch_down_for_an_hour_gets_the_events_later_in_order_with_growing_backoff(
    engine, switch, local
):
    add_account(engine, "acct-a")
    add_account(engine, "acct-b")
    written = [add_event(engine, "acct-a", action) for action in ("LOCK", "UNLOCK", "LOCK")]
    add_event(engine, "acct-b", "LOCK")
    sender = HttpSwitchSender.from_connection()
    switch.control(mode="down")
    now, waits = T0, []
    while now < T0 + timedelta(hours=1):
        outcome = deliver_pending(engine, sender, now)
        assert (outcome.delivered, outcome.failed, outcome.waiting) == (0, 2, 2)
        assert {f.error for f in outcome.failures} == {"HTTP 503 Service Unavailable"}
        not_yet = deliver_pending(engine, sender, now + timedelta(seconds=29))
        assert (not_yet.delivered, not_yet.failed, not_yet.waiting) == (0, 0, 4)
        head = outbox_rows(engine)[0]
        waits.append((head["next_attempt_at"] - now).total_seconds())
        now = head["next_attempt_at"]
    assert waits == [30, 60, 120, 240, 480, 960, 1800]  # the last capped at 30 min
    assert waits == [backoff_seconds(n) for n in range(1, 8)]
    assert outbox_rows(engine)[0]["attempts"] == 7
    assert switch.events() == []

    # the switch stopped: connections refused, a failure like any other
    port = switch.port
    switch.stop()
    refused = deliver_pending(engine, sender, now)
    assert refused.failed == 2
    assert all("ConnectionRefusedError" in f.error for f in refused.failures)

    back = local.start_switch("switch", SECRET, port=port)
    outcome = deliver_pending(engine, sender, now + timedelta(minutes=30))
    assert (outcome.delivered, outcome.failed, outcome.waiting) == (4, 0, 0)
    assert received_by_account(back)["acct-a"] == written
    assert received_by_account(back) == written_by_account(engine)


def test_a_wrong_secret_is_refused_401_and_counted_as_a_failure_with_the_number_masked(
    engine, switch
):
    phone_account = "46701234567"
    add_account(engine, phone_account)
    event_id = add_event(engine, phone_account, "LOCK")
    wrong = HttpSwitchSender("http", "127.0.0.1", switch.port, secret="not-the-secret")

    outcome = deliver_pending(engine, wrong, T0)

    assert (outcome.delivered, outcome.failed, outcome.waiting) == (0, 1, 0)
    failure = outcome.failures[0]
    assert (failure.event_id, failure.attempts) == (event_id, 1)
    assert failure.error == "HTTP 401 Unauthorized"
    assert phone_account not in failure.alert_line()
    assert "46701****67" in failure.alert_line()
    assert "not-the-secret" not in repr(wrong)
    assert switch.events() == []
    assert [d["status"] for d in switch.deliveries()] == [401]
    row = outbox_rows(engine)[0]
    assert row["delivered_at"] is None
    assert row["last_error"] == "HTTP 401 Unauthorized"
    assert row["next_attempt_at"] == T0 + timedelta(seconds=30)


DELIVERER = """
import sys
from datetime import datetime
from sqlalchemy import create_engine
from cdr_billing.prepaid.switch import HttpSwitchSender, deliver_pending

engine = create_engine(sys.argv[1])
now = datetime.fromisoformat(sys.argv[2])
print(deliver_pending(engine, HttpSwitchSender.from_connection(), now))
"""


def _wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_deliverer_killed_after_the_switch_received_sends_again_and_the_switch_dedupes(
    engine, switch, postgres
):
    add_account(engine, "acct-a")
    written = [add_event(engine, "acct-a", action) for action in ("LOCK", "UNLOCK")]
    switch.control(delay_seconds=60)  # the event is recorded, the answer comes a minute later
    slow_connection = {**switch.connection(), "extra": {"timeout_seconds": 120}}
    env = {**os.environ, **connection_env({"prepaid_switch": slow_connection})}
    deliverer = subprocess.Popen(
        [sys.executable, "-c", DELIVERER, str(engine.url.render_as_string(False)), T0.isoformat()],
        env=env,
    )
    try:
        _wait_for(lambda: len(switch.events()) == 1)
    finally:
        deliverer.send_signal(signal.SIGKILL)
        deliverer.wait()
    assert deliverer.returncode == -signal.SIGKILL
    assert [row["delivered_at"] for row in outbox_rows(engine)] == [None, None]

    switch.control(delay_seconds=0)
    outcome = deliver_pending(engine, HttpSwitchSender.from_connection(), T0)

    assert (outcome.delivered, outcome.failed, outcome.waiting) == (2, 0, 0)
    assert [e["event_id"] for e in switch.events()] == written  # none lost, none invented
    assert [(d["event_id"], d["duplicate"]) for d in switch.deliveries()] == [
        (str(written[0]), False),
        (str(written[0]), True),
        (str(written[1]), False),
    ]


def test_two_deliverers_at_once_keep_each_accounts_order(engine, switch):
    accounts = [f"acct-{n}" for n in range(4)]
    for account in accounts:
        add_account(engine, account)
    for _ in range(4):
        for account in accounts:
            add_event(engine, account, "LOCK")
    switch.control(delay_seconds=0.05)
    totals: list[int] = []

    def deliverer() -> None:
        own = create_engine(engine.url)
        sender = HttpSwitchSender.from_connection()
        delivered = 0
        for _ in range(200):
            outcome = deliver_pending(own, sender, T0, max_events=3)
            delivered += outcome.delivered
            if outcome.waiting == 0 and outcome.delivered == 0:
                break
        own.dispose()
        totals.append(delivered)

    threads = [threading.Thread(target=deliverer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(totals) == 16 and min(totals) > 0  # both delivered, nothing twice
    assert received_by_account(switch) == written_by_account(engine)
    assert not any(d["duplicate"] for d in switch.deliveries())
