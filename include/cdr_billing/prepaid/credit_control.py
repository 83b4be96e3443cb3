"""Credit control after the balances changed: top-ups for the low accounts, then every lock
and unlock the balances ask for, and a summary for the alert mails.

`apply_lock_rules` (from prepaid.locks) is also what a transaction posting entries calls
before it commits, so the events it causes are written with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from cdr_billing.prepaid.gateway import PaymentGateway
from cdr_billing.prepaid.locks import LockChange, accounts_out_of_step, apply_lock_rules
from cdr_billing.prepaid.topups import TopupOutcome, TopupSettings, request_topups

__all__ = ["CreditControlSummary", "LockChange", "apply_lock_rules", "run_credit_control"]

LOCK_RULES_CONTEXT = "credit control"


@dataclass(frozen=True)
class CreditControlSummary:
    """What a credit control round did: top-ups (approved, declined, still unknown) and the
    lines locked and unlocked."""

    topups: TopupOutcome
    lock_changes: tuple[LockChange, ...]

    @property
    def locked(self) -> tuple[LockChange, ...]:
        return tuple(c for c in self.lock_changes if c.action == "LOCK")

    @property
    def unlocked(self) -> tuple[LockChange, ...]:
        return tuple(c for c in self.lock_changes if c.action == "UNLOCK")


def run_credit_control(
    engine: Engine, gateway: PaymentGateway, settings: TopupSettings, now: datetime
) -> CreditControlSummary:
    """Top-ups first (each answer applied with the lock or unlock it causes), then the lock
    rules on every account whose state does not match its balance: the ones whose balance
    reached the lock level with no top-up approved, and any a crashed run left behind."""
    topups = request_topups(engine, gateway, settings, now)
    with engine.begin() as conn:
        changes = apply_lock_rules(
            conn,
            accounts_out_of_step(conn),
            LOCK_RULES_CONTEXT,
            created_by=settings.requested_by,
            now=now,
        )
    return CreditControlSummary(topups, topups.lock_changes + tuple(changes))
