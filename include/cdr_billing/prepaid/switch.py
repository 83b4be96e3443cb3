"""The switch learns each LOCK and UNLOCK from the outbox, as a signed webhook.

Delivery is at least once and in order per account: an account's oldest undelivered row is its
only candidate, and a later row waits until it is delivered. A failed attempt is retried after
a backoff that doubles from 30 s up to 30 min (`backoff_seconds`), and the account's later rows
wait behind it.

Concurrency: the head row is claimed with `SELECT ... FOR UPDATE SKIP LOCKED` (PostgreSQL) in a
short transaction that sends and marks, so a second deliverer skips an account being delivered
instead of sending its next event out of order. The head is chosen before it is locked (a
`SKIP LOCKED` query for "the oldest row" would skip a locked head and return the one after it)
and re-checked as undelivered under the lock. SQLite serialises writers on its own.

At least once: a crash (or a lost connection to the database) after the switch accepted an
event and before the commit of `delivered_at` leaves the row undelivered, so the event is sent
again on the next run; the switch deduplicates by the event id (`X-Event-Id`). Nothing else is
ever invented: only rows written with their lock_event are sent.

The webhook: `POST {base_url}/events`, the row's payload bytes verbatim as the body, headers
`Content-Type: application/json`, `X-Event-Id`, `X-Timestamp` (unix seconds) and
`X-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Connection, Engine

from cdr_billing import database
from cdr_billing.privacy import shown_id
from cdr_billing.schema import switch_outbox

DEFAULT_CONN_ID = "prepaid_switch"
BACKOFF_FIRST_SECONDS = 30
BACKOFF_MAX_SECONDS = 30 * 60
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_EVENTS = 1000
ERROR_CHARACTERS = 500  # kept in last_error


class SwitchConfigError(ValueError):
    """The switch's Airflow connection cannot be used (scheme, host or secret missing)."""


@dataclass(frozen=True)
class SendResult:
    """The switch's answer to one delivery: accepted (2xx) or why not."""

    accepted: bool
    error: str = ""


class SwitchSender(Protocol):
    def send(self, event_id: int, body: bytes) -> SendResult: ...


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Signature value: the secret's HMAC-SHA256 of "timestamp.body", as hex."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def webhook_headers(secret: str, event_id: int, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers of one signed delivery."""
    stamp = str(timestamp)
    return {
        "Content-Type": "application/json",
        "X-Event-Id": str(event_id),
        "X-Timestamp": stamp,
        "X-Signature": signature(secret, stamp, body),
    }


@dataclass(frozen=True)
class HttpSwitchSender:
    """Posts events to the switch's webhook over HTTP or HTTPS (a pinned CA, if given)."""

    scheme: str
    host: str
    port: int
    secret: str = field(repr=False)
    ca_cert: str | None = field(default=None, repr=False)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_connection(cls, conn_id: str = DEFAULT_CONN_ID) -> HttpSwitchSender:
        """The sender an Airflow connection describes: schema http|https, host, port, password
        (the HMAC secret), extra {"ca_cert": PEM, "timeout_seconds": N} optional."""
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(conn_id)
        scheme = (connection.schema or "").lower()
        if scheme not in ("http", "https"):
            raise SwitchConfigError(f"connection {conn_id}: schema must be http or https")
        if not connection.host:
            raise SwitchConfigError(f"connection {conn_id}: no host")
        if not connection.password:
            raise SwitchConfigError(f"connection {conn_id}: no secret (password)")
        extra = connection.extra_dejson
        return cls(
            scheme=scheme,
            host=connection.host,
            port=int(connection.port or (443 if scheme == "https" else 80)),
            secret=connection.password,
            ca_cert=extra.get("ca_cert"),
            timeout_seconds=float(extra.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)),
        )

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "http":
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_seconds)
        context = ssl.create_default_context(cadata=self.ca_cert)
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout_seconds, context=context
        )

    def send(self, event_id: int, body: bytes) -> SendResult:
        """POST one event; a 2xx is accepted, anything else (status, timeout, refused) is not.
        The error names the status or the exception's type and message, never the secret."""
        headers = webhook_headers(self.secret, event_id, body, int(time.time()))
        connection = self._connection()
        try:
            connection.request("POST", "/events", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            return SendResult(False, f"{type(exc).__name__}: {exc}"[:ERROR_CHARACTERS])
        finally:
            connection.close()
        if 200 <= response.status < 300:
            return SendResult(True)
        return SendResult(False, f"HTTP {response.status} {response.reason}"[:ERROR_CHARACTERS])


def backoff_seconds(attempts: int) -> int:
    """Seconds before the next attempt after `attempts` failed ones: 30, 60, 120, ... 1800."""
    doublings = min(max(attempts - 1, 0), 16)  # 30 x 2^16 is far beyond the cap
    return min(BACKOFF_FIRST_SECONDS * 2**doublings, BACKOFF_MAX_SECONDS)


@dataclass(frozen=True)
class FailedDelivery:
    """An account whose head event the switch did not accept in this call."""

    account_id: str
    event_id: int
    attempts: int
    error: str
    next_attempt_at: datetime

    def alert_line(self) -> str:
        """One line of the "webhook deliveries failing" mail (account masked if a number)."""
        return (
            f"{shown_id(self.account_id)}: event {self.event_id}, attempt {self.attempts}, "
            f"{self.error}; next attempt at {self.next_attempt_at.isoformat()}"
        )


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one delivery call did: events accepted, attempts failed, and rows left waiting
    (not yet due, behind an undelivered event, claimed by another deliverer or beyond
    max_events), counted after the call."""

    delivered: int
    failed: int
    waiting: int
    failures: tuple[FailedDelivery, ...]


class _Head:
    """The outcome of one attempt at an account's head row."""

    DELIVERED, FAILED, WAIT = "delivered", "failed", "wait"


@dataclass(frozen=True)
class _Attempt:
    result: str
    failure: FailedDelivery | None = None


def _accounts_with_pending(conn: Connection) -> list[str]:
    """Accounts with undelivered rows, the oldest row first (each account gets its turn)."""
    oldest = func.min(switch_outbox.c.outbox_id)
    rows = conn.execute(
        select(switch_outbox.c.account_id)
        .where(switch_outbox.c.delivered_at.is_(None))
        .group_by(switch_outbox.c.account_id)
        .order_by(oldest)
    )
    return list(rows.scalars())


def _head_id(conn: Connection, account_id: str) -> int | None:
    return conn.execute(
        select(func.min(switch_outbox.c.outbox_id)).where(
            switch_outbox.c.account_id == account_id, switch_outbox.c.delivered_at.is_(None)
        )
    ).scalar()


def _claim(conn: Connection, outbox_id: int) -> dict | None:
    """Lock a head row still undelivered, or None when another deliverer holds or sent it."""
    query = select(switch_outbox).where(
        switch_outbox.c.outbox_id == outbox_id, switch_outbox.c.delivered_at.is_(None)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    row = conn.execute(query).mappings().first()
    return dict(row) if row else None


def _due(row: dict, now: datetime) -> bool:
    return database.in_utc(row["next_attempt_at"]) <= now


def _attempt_head(engine: Engine, sender: SwitchSender, account_id: str, now: datetime) -> _Attempt:
    """Send an account's head row if due, and mark the outcome, in one short transaction."""
    with engine.begin() as conn:
        head = _head_id(conn, account_id)
        row = _claim(conn, head) if head is not None else None
        if row is None or not _due(row, now):
            return _Attempt(_Head.WAIT)
        result = sender.send(row["event_id"], row["payload"].encode())
        where = switch_outbox.c.outbox_id == row["outbox_id"]
        if result.accepted:
            conn.execute(update(switch_outbox).where(where).values(delivered_at=now))
            return _Attempt(_Head.DELIVERED)
        attempts = row["attempts"] + 1
        retry_at = now + timedelta(seconds=backoff_seconds(attempts))
        conn.execute(
            update(switch_outbox)
            .where(where)
            .values(attempts=attempts, last_error=result.error, next_attempt_at=retry_at)
        )
        failure = FailedDelivery(account_id, row["event_id"], attempts, result.error, retry_at)
        return _Attempt(_Head.FAILED, failure)


def _undelivered(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(switch_outbox.c.delivered_at.is_(None))
        ).scalar_one()


class _AccountRun(NamedTuple):
    """One account's part of a delivery call: events accepted, and the failure that stopped it."""

    delivered: int
    failure: FailedDelivery | None


def _deliver_account(
    engine: Engine, sender: SwitchSender, account_id: str, now: datetime, budget: int
) -> _AccountRun:
    """Deliver one account's due rows in order, sending at most `budget`."""
    delivered = 0
    while delivered < budget:
        attempt = _attempt_head(engine, sender, account_id, now)
        if attempt.result != _Head.DELIVERED:
            return _AccountRun(delivered, attempt.failure)
        delivered += 1
    return _AccountRun(delivered, None)


def deliver_pending(
    engine: Engine, sender: SwitchSender, now: datetime, max_events: int = DEFAULT_MAX_EVENTS
) -> DeliveryOutcome:
    """Deliver the due outbox rows, each account's in order, sending at most `max_events`;
    an account stops at its first failure (its later events wait for it)."""
    with engine.connect() as conn:
        accounts = _accounts_with_pending(conn)
    delivered, failures = 0, []
    for account_id in accounts:
        budget = max_events - delivered - len(failures)
        if budget <= 0:
            break
        sent, failure = _deliver_account(engine, sender, account_id, now, budget)
        delivered += sent
        failures += [failure] if failure is not None else []
    return DeliveryOutcome(
        delivered=delivered,
        failed=len(failures),
        waiting=_undelivered(engine) - len(failures),
        failures=tuple(failures),
    )


@dataclass(frozen=True)
class LineState:
    """What a dialplan's pre-dial check reads: may the line call out, and from what balance."""

    account_id: str
    locked: bool
    balance_minor: int
    currency: str
    updated_at: datetime


def line_state(conn: Connection, account_id: str) -> LineState | None:
    """The line state of an active prepaid account (view prepaid_line_state), else None."""
    row = (
        conn.execute(
            text(
                "SELECT account_id, locked, balance_minor, currency, updated_at "
                "FROM prepaid_line_state WHERE account_id = :account_id"
            ),
            {"account_id": account_id},
        )
        .mappings()
        .first()
    )
    return LineState(**{**row, "locked": bool(row["locked"])}) if row else None
