"""What the portal reads for a signed-in user, and only for them.

Every query starts from the session's address: its accounts are the rows of the latest
entitlement snapshot whose user_principal_name is that address, and a statement is theirs
when it was addressed to it (statement.address, from the snapshot of its month: a line that
changed hands shows each holder only their own months). An id in a URL is looked up among
these only, so another user's id is simply not found.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from cdr_billing.schema import (
    balance_entry,
    billing_batch,
    entitlement,
    entitlement_snapshot,
    prepaid_account,
    statement,
    statement_document,
    topup_request,
)

CALLS_SHOWN = 100
TOPUPS_SHOWN = 20


@dataclass(frozen=True)
class Line:
    """A prepaid account of the user: balance, lock and whether the portal can top it up."""

    account_id: str
    ref: str  # the account in URLs (a keyed hash: no phone number in an address bar)
    currency: str
    balance_minor: int
    locked: bool
    can_top_up: bool
    updated_at: datetime


@dataclass(frozen=True)
class MonthCalls:
    """A prepaid account's calls debited this month (call start in the month), newest first."""

    account_id: str
    currency: str
    count: int
    total_minor: int
    shown: tuple[dict, ...]


@dataclass(frozen=True)
class Overview:
    """Everything the home page shows."""

    address: str
    accounts: tuple[str, ...]
    lines: tuple[Line, ...]
    calls: tuple[MonthCalls, ...]
    statements: tuple[dict, ...]
    topups: tuple[dict, ...]

    @property
    def postpaid(self) -> tuple[str, ...]:
        prepaid = {line.account_id for line in self.lines}
        return tuple(a for a in self.accounts if a not in prepaid)


def account_ref(secret: str, account_id: str) -> str:
    return hmac.new(
        secret.encode(), b"portal account\0" + account_id.encode(), "sha256"
    ).hexdigest()[:32]


def latest_snapshot(conn: Connection) -> int | None:
    snapshot = entitlement_snapshot.c
    return conn.execute(
        select(snapshot.snapshot_id)
        .order_by(snapshot.taken_at.desc(), snapshot.snapshot_id.desc())
        .limit(1)
    ).scalar()


def accounts_of(conn: Connection, address: str) -> tuple[str, ...]:
    """The account ids of the address in the latest entitlement snapshot."""
    snapshot_id = latest_snapshot(conn)
    if snapshot_id is None:
        return ()
    row = entitlement.c
    return tuple(
        conn.execute(
            select(row.account_id)
            .where(
                row.snapshot_id == snapshot_id,
                func.lower(func.trim(row.user_principal_name)) == address,
            )
            .order_by(row.account_id)
        ).scalars()
    )


def lines_of(conn: Connection, secret: str, accounts: tuple[str, ...]) -> tuple[Line, ...]:
    """The active prepaid accounts among the user's accounts."""
    account = prepaid_account.c
    rows = conn.execute(
        select(prepaid_account)
        .where(account.account_id.in_(accounts), account.active)
        .order_by(account.account_id)
    ).mappings()
    return tuple(
        Line(
            row["account_id"],
            account_ref(secret, row["account_id"]),
            row["currency"],
            int(row["balance_minor"]),
            bool(row["locked"]),
            row["payment_method_ref"] is not None,
            row["updated_at"],
        )
        for row in rows
    )


def month_calls(conn: Connection, line: Line, month_start: datetime) -> MonthCalls:
    """A prepaid line's debits (and reversals of re-rated calls) of calls started this month."""
    entry = balance_entry.c
    in_month = and_(
        entry.account_id == line.account_id,
        entry.kind.in_(("debit", "reversal")),
        entry.call_start >= month_start,
    )
    count, total = conn.execute(
        select(
            func.count().filter(entry.kind == "debit"),
            func.coalesce(func.sum(entry.amount_minor), 0),
        ).where(in_month)
    ).one()
    shown = conn.execute(
        select(entry.kind, entry.call_start, entry.billed_seconds, entry.amount_minor)
        .where(in_month)
        .order_by(entry.call_start.desc(), entry.entry_id.desc())
        .limit(CALLS_SHOWN)
    ).mappings()
    return MonthCalls(
        line.account_id, line.currency, int(count), int(total), tuple(dict(r) for r in shown)
    )


def _statements_query(address: str):  # noqa: ANN202 (a SQLAlchemy select)
    return (
        select(
            statement.c.statement_id,
            statement.c.customer_id,
            statement.c.user_id,
            statement.c.currency,
            statement.c.total_minor,
            statement.c.call_count,
            billing_batch.c.billing_month,
            statement_document.c.html_path,
            statement_document.c.pdf_path,
        )
        .join(billing_batch, billing_batch.c.batch_id == statement.c.batch_id)
        .outerjoin(
            statement_document, statement_document.c.statement_id == statement.c.statement_id
        )
        .where(
            billing_batch.c.status == "current",
            func.lower(func.trim(statement.c.address)) == address,
        )
    )


def statements_of(conn: Connection, address: str) -> tuple[dict, ...]:
    """The user's statements of the months' current batches, newest month first."""
    query = _statements_query(address).order_by(
        billing_batch.c.billing_month.desc(), statement.c.statement_id
    )
    return tuple(dict(row) for row in conn.execute(query).mappings())


def statement_of(conn: Connection, address: str, statement_id: str) -> dict | None:
    """One of the user's statements (None: not theirs, superseded or unknown)."""
    if len(statement_id) > 32:
        return None
    row = (
        conn.execute(_statements_query(address).where(statement.c.statement_id == statement_id))
        .mappings()
        .first()
    )
    return dict(row) if row else None


def topups_of(conn: Connection, accounts: tuple[str, ...]) -> tuple[dict, ...]:
    request = topup_request.c
    rows = conn.execute(
        select(topup_request)
        .where(request.account_id.in_(accounts))
        .order_by(request.request_id.desc())
        .limit(TOPUPS_SHOWN)
    ).mappings()
    return tuple(dict(row) for row in rows)


def topup_of(conn: Connection, accounts: tuple[str, ...], request_id: int) -> dict | None:
    request = topup_request.c
    row = (
        conn.execute(
            select(topup_request).where(
                request.request_id == request_id, request.account_id.in_(accounts)
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def overview(conn: Connection, secret: str, address: str, month_start: datetime) -> Overview:
    accounts = accounts_of(conn, address)
    lines = lines_of(conn, secret, accounts)
    return Overview(
        address,
        accounts,
        lines,
        tuple(month_calls(conn, line, month_start) for line in lines),
        statements_of(conn, address),
        topups_of(conn, accounts),
    )


def document_path(stored: str | None, archive_root: Path) -> Path | None:
    """A stored document's file (paths relative to the archive root are taken from there)."""
    if not stored:
        return None
    path = Path(stored)
    path = path if path.is_absolute() else archive_root / path
    return path if path.is_file() else None
