"""Lock and unlock an account's line from its balance, and tell the switch through the outbox.

A line is locked when its balance is at or below the lock level, unlocked once it is above the
unlock level (the gap between the two keeps a line from flapping). Each change is an
append-only `lock_event`, the account's cached `locked` flag and a `switch_outbox` row, written
in the caller's transaction: the one that posted the entries causing it, so a crash can neither
lose an event nor invent one (the outbox's deliverer sends the payload verbatim, signed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import Connection

from cdr_billing.money import from_minor_units
from cdr_billing.prepaid.balances import PIPELINE, lock_accounts
from cdr_billing.schema import lock_event, prepaid_account, switch_outbox

LockAction = Literal["LOCK", "UNLOCK"]
STATE_AFTER = {"LOCK": "locked", "UNLOCK": "unlocked"}


@dataclass(frozen=True)
class LockChange:
    """A lock or unlock written for an account: its event and what the switch is told."""

    event_id: int
    account_id: str
    action: LockAction
    balance_minor: int
    currency: str
    reason: str
    occurred_at: datetime


def lock_action(
    balance_minor: int, locked: bool, lock_level_minor: int, unlock_level_minor: int
) -> LockAction | None:
    """What the balance asks of the line now: LOCK, UNLOCK or nothing."""
    if not locked and balance_minor <= lock_level_minor:
        return "LOCK"
    if locked and balance_minor > unlock_level_minor:
        return "UNLOCK"
    return None


def _money(minor: int, currency: str) -> str:
    return f"{currency} {from_minor_units(minor, currency)}"


def lock_reason(action: LockAction, account: dict, context: str) -> str:
    """The operator's reason for a change: the balance, the level crossed and what caused it."""
    balance = _money(account["balance_minor"], account["currency"])
    if action == "LOCK":
        level = _money(account["lock_level_minor"], account["currency"])
        return f"balance {balance} at or below the lock level {level}: {context}"
    level = _money(account["unlock_level_minor"], account["currency"])
    return f"balance {balance} above the unlock level {level}: {context}"


def iso_utc(moment: datetime) -> str:
    """An instant as ISO 8601 in UTC with microseconds and a Z, e.g. 2026-10-05T12:00:00.000000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def outbox_payload(change: LockChange) -> str:
    """The webhook body of a change: compact JSON, exactly these keys in this order."""
    return json.dumps(
        {
            "event_id": change.event_id,
            "account_id": change.account_id,
            "action": change.action,
            "balance_minor": change.balance_minor,
            "currency": change.currency,
            "reason": change.reason,
            "occurred_at": iso_utc(change.occurred_at),
        },
        separators=(",", ":"),
    )


def _write_change(
    conn: Connection, account: dict, action: LockAction, reason: str, created_by: str, now: datetime
) -> LockChange:
    """The event, the account's cached state and the outbox row of one change."""
    event_id = conn.execute(
        insert(lock_event)
        .values(
            account_id=account["account_id"],
            state=STATE_AFTER[action],
            reason=reason,
            balance_minor=account["balance_minor"],
            cause_entry_id=account["last_entry_id"],
            created_by=created_by,
            created_at=now,
        )
        .returning(lock_event.c.event_id)
    ).scalar_one()
    account["locked"] = action == "LOCK"
    conn.execute(
        update(prepaid_account)
        .where(prepaid_account.c.account_id == account["account_id"])
        .values(locked=account["locked"], updated_at=now)
    )
    change = LockChange(
        event_id,
        account["account_id"],
        action,
        account["balance_minor"],
        account["currency"],
        reason,
        now,
    )
    conn.execute(
        insert(switch_outbox).values(
            event_id=event_id,
            account_id=account["account_id"],
            action=action,
            payload=outbox_payload(change),
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )
    return change


def apply_lock_rules(
    conn: Connection,
    account_ids: Iterable[str],
    reason_context: str,
    *,
    created_by: str = PIPELINE,
    now: datetime | None = None,
) -> list[LockChange]:
    """Lock or unlock the active accounts whose balance asks for it, in the caller's
    transaction, after its postings (so a top-up approved in it counts). Pass the accounts the
    transaction locked: their rows are locked again (no-op) and read fresh."""
    now = now or datetime.now(UTC)
    changes = []
    for account in lock_accounts(conn, account_ids).values():
        action = lock_action(
            account["balance_minor"],
            account["locked"],
            account["lock_level_minor"],
            account["unlock_level_minor"],
        )
        if account["active"] and action is not None:
            reason = lock_reason(action, account, reason_context)
            changes.append(_write_change(conn, account, action, reason, created_by, now))
    return changes


def accounts_out_of_step(conn: Connection) -> list[str]:
    """Active accounts whose lock state does not match their balance (what a run that
    crashed between two transactions, or a level changed by an operator, leaves behind)."""
    account = prepaid_account.c
    return list(
        conn.execute(
            select(account.account_id)
            .where(
                account.active,
                or_(
                    and_(~account.locked, account.balance_minor <= account.lock_level_minor),
                    and_(account.locked, account.balance_minor > account.unlock_level_minor),
                ),
            )
            .order_by(account.account_id)
        ).scalars()
    )
