"""Top-ups against the real local HTTPS payment gateway (its own process) and a real
PostgreSQL: approval, decline and hold-off, timeouts with and without a charge, a gateway not
trusted or refusing the token, and concurrent runs on one account."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import Engine

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid.balances import ledger_balance, lock_accounts, post
from cdr_billing.prepaid.credit_control import apply_lock_rules, run_credit_control
from cdr_billing.prepaid.gateway import GatewayConfigError, GatewaySettings, HttpsGateway
from cdr_billing.prepaid.topups import TopupSettings, open_request, request_topups
from cdr_billing.schema import (
    balance_entry,
    prepaid_account,
    topup_request,
)
from cdr_devkit.payment_gateway import certificate_authority
from cdr_devkit.services import LocalServices, connection_env

NOW = datetime(2026, 10, 5, 12, 0, tzinfo=UTC)
HANG_SECONDS = 3.0  # the gateway's hang: longer than the client's read timeout
SETTINGS = GatewaySettings(connect_timeout_seconds=2.0, read_timeout_seconds=1.0)
TOPUPS = TopupSettings(holdoff_minutes=60)
DATABASES = itertools.count()


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory):
    with LocalServices(tmp_path_factory.mktemp("payment_gateway")) as local:
        yield local.start_payment_gateway(hang_seconds=HANG_SECONDS)


@pytest.fixture
def gateway(gateway_server, monkeypatch) -> HttpsGateway:
    """The client, built from the `payment_gateway` Airflow connection."""
    for key, value in connection_env({"payment_gateway": gateway_server.connection()}).items():
        monkeypatch.setenv(key, value)
    return HttpsGateway.from_connection(SETTINGS)


@pytest.fixture
def engine(postgres) -> Engine:
    engine = create_engine(
        postgres.url_of(postgres.create_database(f"prepaid_topups_{next(DATABASES)}")),
        pool_size=12,
    )
    upgrade(engine)
    return engine


def add_account(engine: Engine, account_id: str, method: str, balance: int) -> None:
    """A prepaid account (low 5.00, top-up 20.00, lock at 0.00, unlock above 1.00) with an
    opening balance, locked when that balance asks for it."""
    with engine.begin() as conn:
        conn.execute(
            insert(prepaid_account).values(
                account_id=account_id,
                currency="EUR",
                low_balance_minor=500,
                topup_minor=2000,
                lock_level_minor=0,
                unlock_level_minor=100,
                payment_method_ref=method,
                max_concurrent_calls=2,
                active=True,
                balance_minor=0,
                locked=False,
                updated_at=NOW,
            )
        )
        account = lock_accounts(conn, [account_id])[account_id]
        post(conn, account, "adjustment", balance, f"opening:{account_id}", created_by="test")


def lock_now(engine: Engine, account_id: str) -> None:
    with engine.begin() as conn:
        assert apply_lock_rules(conn, [account_id], "opening balance", now=NOW)


def account_row(engine: Engine, account_id: str) -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(select(prepaid_account).where(prepaid_account.c.account_id == account_id))
            .mappings()
            .one()
        )


def requests_of(engine: Engine, account_id: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(topup_request)
            .where(topup_request.c.account_id == account_id)
            .order_by(topup_request.c.request_id)
        ).mappings()
        return [dict(row) for row in rows]


def topup_entries(engine: Engine, account_id: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(balance_entry).where(
                balance_entry.c.account_id == account_id, balance_entry.c.kind == "topup"
            )
        ).mappings()
        return [dict(row) for row in rows]


def events_of(engine: Engine, account_id: str) -> list[dict]:
    """The account's lock events with their outbox rows and the transaction that wrote each."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT e.event_id, e.state, e.balance_minor, e.cause_entry_id, e.reason,"
                " e.xmin::text AS event_xid, o.action, o.payload, o.attempts,"
                " o.next_attempt_at, o.xmin::text AS outbox_xid"
                " FROM lock_event e LEFT JOIN switch_outbox o USING (event_id)"
                " WHERE e.account_id = :account ORDER BY e.event_id"
            ),
            {"account": account_id},
        ).mappings()
        return [dict(row) for row in rows]


def xid_of_request(engine: Engine, request_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT xmin::text FROM topup_request WHERE request_id = :id"), {"id": request_id}
        ).scalar_one()


def charged(gateway_server, account_id: str) -> list:
    return [c for c in gateway_server.charges() if c.account_id == account_id and c.charged]


def test_an_approval_posts_one_topup_and_unlocks_the_line(engine, gateway, gateway_server):
    add_account(engine, "4930555000101", "approve", -100)
    lock_now(engine, "4930555000101")

    summary = run_credit_control(engine, gateway, TOPUPS, NOW)

    [request] = requests_of(engine, "4930555000101")
    assert (request["status"], request["attempts"]) == ("approved", 1)
    [entry] = topup_entries(engine, "4930555000101")
    assert entry["amount_minor"] == 2000
    assert entry["idempotency_key"] == f"topup:{request['idempotency_key']}"
    assert request["entry_id"] == entry["entry_id"]
    account = account_row(engine, "4930555000101")
    with engine.connect() as conn:
        assert account["balance_minor"] == 1900 == ledger_balance(conn, "4930555000101")
    assert account["locked"] is False
    lock, unlock = events_of(engine, "4930555000101")
    assert (lock["state"], unlock["state"]) == ("locked", "unlocked")
    assert unlock["cause_entry_id"] == entry["entry_id"]
    # the top-up, its request's answer, the unlock and its outbox row: one transaction
    assert (
        unlock["event_xid"] == unlock["outbox_xid"] == xid_of_request(engine, request["request_id"])
    )
    assert [r.status for r in summary.topups.approved] == ["approved"]
    assert [c.action for c in summary.unlocked] == ["UNLOCK"] and not summary.locked
    assert len(charged(gateway_server, "4930555000101")) == 1

    # the balance is above the low level now: the next run asks for nothing
    run_credit_control(engine, gateway, TOPUPS, NOW + timedelta(minutes=30))
    assert len(requests_of(engine, "4930555000101")) == 1


def test_a_decline_locks_holds_off_then_retries(engine, gateway, gateway_server):
    add_account(engine, "4930555000102", "decline", -250)

    summary = run_credit_control(engine, gateway, TOPUPS, NOW)

    [request] = requests_of(engine, "4930555000102")
    assert (request["status"], request["detail"]) == ("declined", "insufficient funds")
    assert [(r.account_id, r.detail) for r in summary.topups.declined] == [
        ("4930555000102", "insufficient funds")
    ]
    assert account_row(engine, "4930555000102")["locked"] is True
    [event] = events_of(engine, "4930555000102")
    assert (event["state"], event["action"], event["attempts"]) == ("locked", "LOCK", 0)
    assert event["next_attempt_at"] == NOW
    assert (
        event["event_xid"] == event["outbox_xid"] == xid_of_request(engine, request["request_id"])
    )
    reason = (
        "balance EUR -2.50 at or below the lock level EUR 0.00: "
        f"top-up {request['idempotency_key']} declined (insufficient funds)"
    )
    assert event["reason"] == reason
    assert event["payload"] == (
        f'{{"event_id":{event["event_id"]},"account_id":"4930555000102","action":"LOCK",'
        f'"balance_minor":-250,"currency":"EUR","reason":{json.dumps(reason)},'
        '"occurred_at":"2026-10-05T12:00:00.000000Z"}'
    )

    held = request_topups(engine, gateway, TOPUPS, NOW + timedelta(minutes=59))
    assert not held.results
    assert [s.reason for s in held.skipped if s.account_id == "4930555000102"] == [
        "hold-off after the decline at 2026-10-05T12:00:00.000000Z"
    ]
    assert len(requests_of(engine, "4930555000102")) == 1

    retried = request_topups(engine, gateway, TOPUPS, NOW + timedelta(minutes=61))
    first, second = requests_of(engine, "4930555000102")
    assert second["status"] == "declined" and second["idempotency_key"] != first["idempotency_key"]
    assert [r.resent for r in retried.declined] == [False]
    # still locked: no second lock event
    assert len(events_of(engine, "4930555000102")) == 1
    assert gateway_server.requests()[second["idempotency_key"]] == 1


def test_a_timeout_stays_unknown_and_is_sent_again_with_its_key(engine, gateway, gateway_server):
    add_account(engine, "4930555000103", "timeout", 200)

    first = request_topups(engine, gateway, TOPUPS, NOW)
    [request] = requests_of(engine, "4930555000103")
    assert (request["status"], request["attempts"]) == ("unknown", 1)
    assert "no answer from the gateway" in request["detail"]
    assert [r.idempotency_key for r in first.unknown] == [request["idempotency_key"]]

    second = request_topups(engine, gateway, TOPUPS, NOW + timedelta(minutes=30))
    [request] = requests_of(engine, "4930555000103")  # no second request while in flight
    assert (request["status"], request["attempts"]) == ("unknown", 2)
    assert [r.resent for r in second.unknown] == [True]
    assert gateway_server.requests()[request["idempotency_key"]] == 2
    assert not charged(gateway_server, "4930555000103")
    assert not topup_entries(engine, "4930555000103")


def test_a_timeout_after_charging_ends_as_one_charge(engine, gateway, gateway_server):
    add_account(engine, "4930555000104", "timeout-after-charge", 200)

    assert request_topups(engine, gateway, TOPUPS, NOW).unknown
    retried = request_topups(engine, gateway, TOPUPS, NOW + timedelta(minutes=30))
    request_topups(engine, gateway, TOPUPS, NOW + timedelta(minutes=60))

    [request] = requests_of(engine, "4930555000104")
    assert (request["status"], request["attempts"]) == ("approved", 2)
    assert [r.resent for r in retried.approved] == [True]
    assert len(charged(gateway_server, "4930555000104")) == 1
    assert gateway_server.requests()[request["idempotency_key"]] == 2
    [entry] = topup_entries(engine, "4930555000104")
    assert entry["amount_minor"] == 2000
    assert account_row(engine, "4930555000104")["balance_minor"] == 2200


def _gateway_with(monkeypatch, gateway_server, **overrides: object) -> HttpsGateway:
    connection = gateway_server.connection(**overrides)
    for key, value in connection_env({"payment_gateway": connection}).items():
        monkeypatch.setenv(key, value)
    return HttpsGateway.from_connection(SETTINGS)


def _assert_refused(engine, gateway_server, gateway, caplog, account_id, detail) -> None:
    caplog.set_level(logging.DEBUG)
    add_account(engine, account_id, "approve", 200)
    outcome = request_topups(engine, gateway, TOPUPS, NOW)
    [request] = requests_of(engine, account_id)
    assert request["status"] == "unknown" and detail in request["detail"]
    assert [r.detail for r in outcome.unknown] == [request["detail"]]
    assert not charged(gateway_server, account_id)
    assert request["idempotency_key"] in caplog.text  # the gateway's log line was captured
    for secret in (gateway_server.token, gateway.endpoint.token):
        assert secret not in caplog.text and secret not in request["detail"]
        assert secret not in repr(gateway.endpoint)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("cdr_billing")]
    assert ours and not any(account_id in line for line in ours)  # masked


def test_a_gateway_signed_by_another_authority_is_not_trusted(
    engine, gateway_server, monkeypatch, caplog
):
    gateway = _gateway_with(
        monkeypatch, gateway_server, extra={"ca_cert": certificate_authority().cert_pem}
    )
    _assert_refused(
        engine, gateway_server, gateway, caplog, "4930555000105", "certificate is not trusted"
    )


def test_a_wrong_token_is_refused_and_never_logged(engine, gateway_server, monkeypatch, caplog):
    gateway = _gateway_with(monkeypatch, gateway_server, password="not-the-gateway-token-8127")
    _assert_refused(
        engine, gateway_server, gateway, caplog, "4930555000106", "refused the API token (HTTP 401)"
    )


def test_the_gateway_s_own_certificate_may_be_pinned(engine, gateway_server, monkeypatch):
    gateway = _gateway_with(
        monkeypatch, gateway_server, extra={"ca_cert": gateway_server.server_cert}
    )
    add_account(engine, "4930555000108", "approve", 200)
    assert [r.status for r in request_topups(engine, gateway, TOPUPS, NOW).results] == ["approved"]


def test_a_request_recorded_but_never_sent_is_sent_by_the_next_run(engine, gateway, gateway_server):
    add_account(engine, "4930555000109", "approve", 200)
    # a run that crashed between committing its request and sending it
    opened = open_request(engine, "4930555000109", TOPUPS, NOW)
    assert requests_of(engine, "4930555000109")[0]["status"] == "pending"

    outcome = request_topups(engine, gateway, TOPUPS, NOW + timedelta(minutes=30))

    [request] = requests_of(engine, "4930555000109")
    assert request["idempotency_key"] == opened["idempotency_key"]
    assert (request["status"], [r.resent for r in outcome.approved]) == ("approved", [True])
    assert gateway_server.requests()[request["idempotency_key"]] == 1
    assert account_row(engine, "4930555000109")["balance_minor"] == 2200


def test_a_gateway_connection_must_be_https(gateway_server, monkeypatch):
    with pytest.raises(GatewayConfigError, match="conn_type must be https"):
        _gateway_with(monkeypatch, gateway_server, conn_type="http")
    with pytest.raises(GatewayConfigError, match="no API token"):
        _gateway_with(monkeypatch, gateway_server, password=None)


def test_concurrent_runs_on_one_low_account_charge_once(engine, gateway, gateway_server):
    add_account(engine, "4930555000107", "approve", 100)
    start = threading.Barrier(10)
    failures = []

    def run() -> None:
        start.wait()
        try:
            request_topups(engine, gateway, TOPUPS, NOW)
        except Exception as exc:  # reported below: a thread's exception is otherwise lost
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    [request] = requests_of(engine, "4930555000107")
    assert request["status"] == "approved"
    assert len(charged(gateway_server, "4930555000107")) == 1
    assert len(topup_entries(engine, "4930555000107")) == 1
    assert account_row(engine, "4930555000107")["balance_minor"] == 2100
