"""The pure decisions of credit control: when to request a top-up, when to lock or unlock,
what a gateway's answer says, and the webhook body of a lock change."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cdr_billing.prepaid.gateway import Answer, ChargeRequest, charge_body, read_answer
from cdr_billing.prepaid.locks import LockChange, iso_utc, lock_action, outbox_payload
from cdr_billing.prepaid.topups import topup_decision

NOW = datetime(2026, 10, 5, 12, 0, tzinfo=UTC)
HOLDOFF = timedelta(minutes=60)


def _account(balance: int, **overrides: object) -> dict:
    return {
        "active": True,
        "payment_method_ref": "pm-1",
        "balance_minor": balance,
        "low_balance_minor": 500,
        **overrides,
    }


@pytest.mark.parametrize(
    ("account", "in_flight", "last_decline", "requested", "reason"),
    [
        (_account(499), 0, None, True, "below the low level"),
        (_account(500), 0, None, False, "not below"),
        (_account(100, active=False), 0, None, False, "no automatic top-up"),
        (_account(100, payment_method_ref=None), 0, None, False, "no automatic top-up"),
        (_account(100), 400, None, False, "in flight cover"),
        (_account(-5000), 2000, None, False, "a top-up is in flight"),
        (_account(100), 0, NOW - timedelta(minutes=59), False, "hold-off"),
        (_account(100), 0, NOW - timedelta(minutes=60), True, "below the low level"),
    ],
)
def test_topup_decision(account, in_flight, last_decline, requested, reason):
    decision = topup_decision(account, in_flight, last_decline, NOW, HOLDOFF)
    assert decision.request is requested
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("balance", "locked", "action"),
    [
        (0, False, "LOCK"),  # at the lock level
        (-1, False, "LOCK"),
        (1, False, None),
        (-1, True, None),  # already locked
        (100, True, None),  # at the unlock level: not above it
        (101, True, "UNLOCK"),
        (101, False, None),
    ],
)
def test_lock_action(balance, locked, action):
    assert lock_action(balance, locked, lock_level_minor=0, unlock_level_minor=100) == action


@pytest.mark.parametrize(
    ("answer", "status", "detail"),
    [
        (Answer(201, b'{"id":"ch_1","status":"approved","reason":null}'), "approved", ""),
        (Answer(200, b'{"id":"ch_1","status":"approved"}'), "approved", ""),
        (
            Answer(201, b'{"id":"ch_2","status":"declined","reason":"expired card"}'),
            "declined",
            "expired card",
        ),
        (Answer(201, b'{"id":"ch_2","status":"declined"}'), "declined", "no reason"),
        (Answer(201, b'{"status":"approved"}'), "unknown", "malformed answer"),
        (Answer(201, b'{"id":"ch_3","status":"maybe"}'), "unknown", "malformed answer"),
        (Answer(201, b"<html>ok</html>"), "unknown", "malformed answer (HTTP 201): <html>"),
        (Answer(201, b"[1, 2]"), "unknown", "malformed answer"),
        (Answer(409, b"{}"), "unknown", "HTTP 409"),
        (Answer(401, b"{}"), "unknown", "refused the API token"),
        (Answer(502, b"bad\ngateway"), "unknown", "HTTP 502 from the gateway: bad gateway"),
    ],
)
def test_read_answer(answer, status, detail):
    result = read_answer(answer)
    assert result.status == status
    assert detail in result.detail
    assert (result.reference is not None) == (status != "unknown")


def test_charge_body_is_the_documented_fields_in_one_form():
    request = ChargeRequest("key-1", "4930555000111", "pm-1", 2000, "EUR")
    assert charge_body(request) == (
        b'{"account_id":"4930555000111","payment_method":"pm-1","amount_minor":2000,'
        b'"currency":"EUR"}'
    )


def test_outbox_payload_is_compact_json_with_exactly_the_documented_keys():
    change = LockChange(
        event_id=7,
        account_id="4930555000111",
        action="LOCK",
        balance_minor=-250,
        currency="EUR",
        reason="balance EUR -2.50 at or below the lock level EUR 0.00: top-up k declined",
        occurred_at=datetime(2026, 10, 5, 14, 0, 1, 2500, tzinfo=timezone(timedelta(hours=2))),
    )
    payload = outbox_payload(change)
    assert payload == (
        '{"event_id":7,"account_id":"4930555000111","action":"LOCK","balance_minor":-250,'
        '"currency":"EUR","reason":"balance EUR -2.50 at or below the lock level EUR 0.00: '
        'top-up k declined","occurred_at":"2026-10-05T12:00:01.002500Z"}'
    )
    assert datetime.fromisoformat(json.loads(payload)["occurred_at"]) == change.occurred_at


def test_iso_utc_of_a_utc_instant():
    assert iso_utc(NOW) == "2026-10-05T12:00:00.000000Z"
