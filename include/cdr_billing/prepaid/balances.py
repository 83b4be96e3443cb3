"""The balance ledger: append-only entries whose sum is an account's balance.

Every posting names an idempotency key, unique in `balance_entry`: posting the same key again
(a retried task, an overlapping run) changes nothing and returns the entry already there. The
balance is cached on `prepaid_account` in the same transaction as the entries, and writers on
an account hold its row lock (`lock_accounts`) from reading the balance to the commit, so two
runs debiting one account take turns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from cdr_billing.schema import balance_entry, prepaid_account

KINDS = ("debit", "reversal", "topup", "credit", "refund", "adjustment")
PIPELINE = "pipeline"  # created_by of what the DAGs post


class LedgerError(ValueError):
    """A posting the ledger refuses (unknown account, another currency, unknown kind)."""


@dataclass(frozen=True)
class Posted:
    """An entry and the balance after it; `new` is False when the key was posted before."""

    entry_id: int
    balance_minor: int
    new: bool


def lock_accounts(conn: Connection, account_ids: Iterable[str]) -> dict[str, dict]:
    """Lock the accounts' rows until the transaction ends, in one order (no deadlock between
    runs locking overlapping sets); return each account's row by id."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    rows = conn.execute(
        select(prepaid_account)
        .where(prepaid_account.c.account_id.in_(ids))
        .order_by(prepaid_account.c.account_id)
        .with_for_update()
    ).mappings()
    return {row["account_id"]: dict(row) for row in rows}


def post(
    conn: Connection,
    account: dict,
    kind: str,
    amount_minor: int,
    idempotency_key: str,
    created_by: str = PIPELINE,
    **details: object,
) -> Posted:
    """Append one entry to a locked account (`account`: its row from lock_accounts, updated
    here) unless its key was posted before; `details`: the entry's other columns."""
    if kind not in KINDS:
        raise LedgerError(f"unknown entry kind {kind!r}")
    before = conn.execute(
        select(balance_entry.c.entry_id).where(balance_entry.c.idempotency_key == idempotency_key)
    ).scalar()
    if before is not None:
        return Posted(before, account["balance_minor"], new=False)
    now = datetime.now(UTC)
    entry_id = conn.execute(
        insert(balance_entry)
        .values(
            account_id=account["account_id"],
            kind=kind,
            amount_minor=int(amount_minor),
            currency=account["currency"],
            idempotency_key=idempotency_key,
            created_by=created_by,
            created_at=now,
            **details,
        )
        .returning(balance_entry.c.entry_id)
    ).scalar_one()
    account["balance_minor"] += int(amount_minor)
    account["last_entry_id"] = entry_id
    conn.execute(
        update(prepaid_account)
        .where(prepaid_account.c.account_id == account["account_id"])
        .values(balance_minor=account["balance_minor"], last_entry_id=entry_id, updated_at=now)
    )
    return Posted(entry_id, account["balance_minor"], new=True)


def ledger_balance(conn: Connection, account_id: str) -> int:
    """The account's balance from its entries (the cache must equal it)."""
    return int(
        conn.execute(
            select(func.coalesce(func.sum(balance_entry.c.amount_minor), 0)).where(
                balance_entry.c.account_id == account_id
            )
        ).scalar_one()
    )
