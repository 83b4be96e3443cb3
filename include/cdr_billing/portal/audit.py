"""The portal's audit log (table portal_audit, append-only): who asked for a sign-in link,
who signed in or was refused, who signed out, which statement was read, which top-up was
asked for and how it ended. Addresses and clients as hashes (portal.auth)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from cdr_billing.schema import portal_audit

Event = Literal[
    "sign_in_requested",
    "sign_in",
    "sign_in_refused",
    "sign_out",
    "statement_read",
    "topup_requested",
    "topup_settled",
]
MAX_DETAIL = 500


def record(
    conn: Connection,
    event: Event,
    now: datetime,
    *,
    address_hash: str | None = None,
    client_hash: str | None = None,
    account_id: str | None = None,
    detail: str | None = None,
) -> None:
    conn.execute(
        insert(portal_audit).values(
            at=now,
            event=event,
            address_hash=address_hash,
            client_hash=client_hash,
            account_id=account_id,
            detail=detail[:MAX_DETAIL] if detail else None,
        )
    )
