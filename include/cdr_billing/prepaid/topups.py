"""Top-ups: charge the payment method of accounts whose balance fell below their low level.

A request is recorded (pending, a fresh idempotency key) and committed before it is sent, so a
request in flight is counted by every other run and a crash after sending leaves a row to send
again. Requests still pending or unknown are sent again first, with their own key: the gateway
answers a key once, so a timeout after charging ends as one charge. The answer is applied in
one transaction under the account's lock: the top-up entry (key `topup:<request key>`), the
request's status and any lock or unlock it causes. After a decline, an account waits out a
hold-off before the next request. Nothing is sent inside a database transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from cdr_billing import database
from cdr_billing.prepaid.balances import PIPELINE, lock_accounts, post
from cdr_billing.prepaid.gateway import ChargeRequest, ChargeResult, PaymentGateway
from cdr_billing.prepaid.locks import LockChange, apply_lock_rules, iso_utc
from cdr_billing.schema import prepaid_account, topup_request

IN_FLIGHT = ("pending", "unknown")
DEFAULT_HOLDOFF_MINUTES = 60


@dataclass(frozen=True)
class TopupSettings:
    """How top-ups are requested: the wait after a decline, and who the requests are by."""

    holdoff_minutes: int = DEFAULT_HOLDOFF_MINUTES
    requested_by: str = PIPELINE
    entry_reason: str = "automatic top-up"  # the start of an approved top-up entry's reason

    @property
    def holdoff(self) -> timedelta:
        return timedelta(minutes=self.holdoff_minutes)


@dataclass(frozen=True)
class TopupDecision:
    """Whether to request a top-up now, and why (not)."""

    request: bool
    reason: str


@dataclass(frozen=True)
class TopupResult:
    """A request this run settled or left unknown: what the alert mails report."""

    account_id: str
    idempotency_key: str
    amount_minor: int
    currency: str
    status: str  # approved | declined | unknown
    detail: str  # the decline reason or the error; "" when approved
    gateway_reference: str | None
    entry_id: int | None  # approved: the top-up entry
    resent: bool  # sent before (pending or unknown at the start of the run)


@dataclass(frozen=True)
class Skipped:
    """A low account not topped up this run, and why."""

    account_id: str
    reason: str


@dataclass(frozen=True)
class TopupOutcome:
    """What one round of top-ups did."""

    results: tuple[TopupResult, ...]
    skipped: tuple[Skipped, ...]
    lock_changes: tuple[LockChange, ...]

    def with_status(self, status: str) -> tuple[TopupResult, ...]:
        return tuple(r for r in self.results if r.status == status)

    @property
    def approved(self) -> tuple[TopupResult, ...]:
        return self.with_status("approved")

    @property
    def declined(self) -> tuple[TopupResult, ...]:
        return self.with_status("declined")

    @property
    def unknown(self) -> tuple[TopupResult, ...]:
        return self.with_status("unknown")


@dataclass(frozen=True)
class Settled:
    """The answer applied to a request (None: another run had settled it) and its locks."""

    result: TopupResult | None
    lock_changes: tuple[LockChange, ...]


def topup_decision(
    account: Mapping,
    in_flight_minor: int,
    last_decline_at: datetime | None,
    now: datetime,
    holdoff: timedelta,
) -> TopupDecision:
    """Whether a low account gets a new top-up request: one at a time, none while those in
    flight cover the gap, none during the hold-off after a decline."""
    if not account["active"] or not account["payment_method_ref"]:
        return TopupDecision(False, "no automatic top-up (inactive or no payment method)")
    if account["balance_minor"] >= account["low_balance_minor"]:
        return TopupDecision(False, "balance not below the low level")
    if account["balance_minor"] + in_flight_minor >= account["low_balance_minor"]:
        return TopupDecision(False, "top-ups in flight cover the low level")
    if in_flight_minor:
        return TopupDecision(False, "a top-up is in flight")
    if last_decline_at is not None and now - last_decline_at < holdoff:
        return TopupDecision(False, f"hold-off after the decline at {iso_utc(last_decline_at)}")
    return TopupDecision(True, "balance below the low level")


def _in_flight_minor(conn: Connection, account_id: str) -> int:
    return int(
        conn.execute(
            select(func.coalesce(func.sum(topup_request.c.amount_minor), 0)).where(
                topup_request.c.account_id == account_id,
                topup_request.c.status.in_(IN_FLIGHT),
            )
        ).scalar_one()
    )


def _last_decline_at(conn: Connection, account_id: str) -> datetime | None:
    return database.in_utc(
        conn.execute(
            select(func.max(topup_request.c.resolved_at)).where(
                topup_request.c.account_id == account_id, topup_request.c.status == "declined"
            )
        ).scalar()
    )


def in_flight_requests(engine: Engine) -> list[dict]:
    """Requests sent (or about to be) whose answer is not known: to send again, same key."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(topup_request)
            .where(topup_request.c.status.in_(IN_FLIGHT))
            .order_by(topup_request.c.request_id)
        ).mappings()
        return [dict(row) for row in rows]


def low_accounts(engine: Engine) -> list[str]:
    """Active accounts with a payment method whose balance is below their low level."""
    account = prepaid_account.c
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(account.account_id)
                .where(
                    account.active,
                    account.payment_method_ref.is_not(None),
                    account.balance_minor < account.low_balance_minor,
                )
                .order_by(account.account_id)
            ).scalars()
        )


def open_request(
    engine: Engine, account_id: str, settings: TopupSettings, now: datetime
) -> dict | Skipped:
    """Decide under the account's lock and record a pending request (committed on return, so
    concurrent runs see it before it is sent)."""
    with engine.begin() as conn:
        account = lock_accounts(conn, [account_id]).get(account_id)
        if account is None:
            return Skipped(account_id, "no such account")
        decision = topup_decision(
            account,
            _in_flight_minor(conn, account_id),
            _last_decline_at(conn, account_id),
            now,
            settings.holdoff,
        )
        if not decision.request:
            return Skipped(account_id, decision.reason)
        values = {
            "account_id": account_id,
            "idempotency_key": uuid.uuid4().hex,
            "amount_minor": account["topup_minor"],
            "currency": account["currency"],
            "payment_method_ref": account["payment_method_ref"],
            "status": "pending",
            "attempts": 0,
            "requested_by": settings.requested_by,
            "requested_at": now,
        }
        request_id = conn.execute(
            insert(topup_request).values(**values).returning(topup_request.c.request_id)
        ).scalar_one()
        return {**values, "request_id": request_id}


def open_user_request(
    engine: Engine,
    account_id: str,
    amount_minor: int,
    idempotency_key: str,
    requested_by: str,
    now: datetime,
) -> dict | Skipped:
    """Record a top-up a user asked for (the portal), pending like the DAG's and sent the same
    way, with the key of the user's form: a form sent twice is one request (returned again,
    whatever its status). Refused for an account that is inactive or has no payment method,
    or while another request of the account is in flight (one at a time, as the DAG does)."""
    with engine.begin() as conn:
        account = lock_accounts(conn, [account_id]).get(account_id)
        if account is None:
            return Skipped(account_id, "no such account")
        existing = (
            conn.execute(
                select(topup_request).where(topup_request.c.idempotency_key == idempotency_key)
            )
            .mappings()
            .first()
        )
        if existing is not None:
            if existing["account_id"] != account_id:
                return Skipped(account_id, "the form's key belongs to another account")
            return dict(existing)
        if not account["active"] or not account["payment_method_ref"]:
            return Skipped(account_id, "no payment method to charge")
        if _in_flight_minor(conn, account_id):
            return Skipped(account_id, "a top-up is in flight")
        values = {
            "account_id": account_id,
            "idempotency_key": idempotency_key,
            "amount_minor": amount_minor,
            "currency": account["currency"],
            "payment_method_ref": account["payment_method_ref"],
            "status": "pending",
            "attempts": 0,
            "requested_by": requested_by,
            "requested_at": now,
        }
        request_id = conn.execute(
            insert(topup_request).values(**values).returning(topup_request.c.request_id)
        ).scalar_one()
        return {**values, "request_id": request_id}


def charge_request(request: Mapping) -> ChargeRequest:
    """The gateway request of a recorded top-up (the same on every send)."""
    return ChargeRequest(
        idempotency_key=request["idempotency_key"],
        account_id=request["account_id"],
        payment_method_ref=request["payment_method_ref"],
        amount_minor=int(request["amount_minor"]),
        currency=request["currency"],
    )


def _lock_context(request: Mapping, result: ChargeResult) -> str:
    """What the lock rules name as the cause: the top-up and its answer."""
    answer = f"{result.status} ({result.detail})" if result.detail else result.status
    return f"top-up {request['idempotency_key']} {answer}"


def _record_answer(
    conn: Connection,
    account: dict,
    request: Mapping,
    result: ChargeResult,
    settings: TopupSettings,
    now: datetime,
) -> int | None:
    """The request's new status, and for an approval its top-up entry (returned)."""
    values: dict[str, object] = {
        "status": result.status,
        "attempts": topup_request.c.attempts + 1,
        "gateway_reference": result.reference,
        "detail": result.detail or None,
    }
    entry_id = None
    if result.status == "approved":
        entry_id = post(
            conn,
            account,
            "topup",
            int(request["amount_minor"]),
            f"topup:{request['idempotency_key']}",
            created_by=settings.requested_by,
            reason=f"{settings.entry_reason}, gateway charge {result.reference}",
        ).entry_id
        values |= {"entry_id": entry_id, "resolved_at": now}
    elif result.status == "declined":
        values["resolved_at"] = now
    conn.execute(
        update(topup_request)
        .where(topup_request.c.request_id == request["request_id"])
        .values(**values)
    )
    return entry_id


def settle(
    engine: Engine,
    request: Mapping,
    result: ChargeResult,
    settings: TopupSettings,
    now: datetime,
    resent: bool,
) -> Settled:
    """Apply the gateway's answer in one transaction under the account's lock, with the lock
    or unlock it causes; an answer to a request another run settled meanwhile changes nothing."""
    account_id = request["account_id"]
    with engine.begin() as conn:
        account = lock_accounts(conn, [account_id])[account_id]
        status = conn.execute(
            select(topup_request.c.status).where(
                topup_request.c.request_id == request["request_id"]
            )
        ).scalar_one()
        if status not in IN_FLIGHT:
            return Settled(None, ())
        entry_id = _record_answer(conn, account, request, result, settings, now)
        changes = apply_lock_rules(
            conn,
            [account_id],
            _lock_context(request, result),
            created_by=settings.requested_by,
            now=now,
        )
    settled = TopupResult(
        account_id,
        request["idempotency_key"],
        int(request["amount_minor"]),
        request["currency"],
        result.status,
        result.detail,
        result.reference,
        entry_id,
        resent,
    )
    return Settled(settled, tuple(changes))


def _send_and_settle(
    engine: Engine,
    gateway: PaymentGateway,
    request: Mapping,
    settings: TopupSettings,
    now: datetime,
    resent: bool,
) -> Settled:
    """Send outside any transaction, then settle."""
    result = gateway.charge(charge_request(request))
    return settle(engine, request, result, settings, now, resent)


def request_topups(
    engine: Engine, gateway: PaymentGateway, settings: TopupSettings, now: datetime
) -> TopupOutcome:
    """Send again the requests in flight, then request top-ups for the low accounts."""
    settled = [
        _send_and_settle(engine, gateway, request, settings, now, resent=True)
        for request in in_flight_requests(engine)
    ]
    skipped = []
    for account_id in low_accounts(engine):
        opened = open_request(engine, account_id, settings, now)
        if isinstance(opened, Skipped):
            skipped.append(opened)
        else:
            settled.append(_send_and_settle(engine, gateway, opened, settings, now, resent=False))
    return TopupOutcome(
        results=tuple(s.result for s in settled if s.result is not None),
        skipped=tuple(skipped),
        lock_changes=tuple(change for s in settled for change in s.lock_changes),
    )
