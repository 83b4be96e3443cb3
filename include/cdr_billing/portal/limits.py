"""Rate limits of the portal, kept in the billing database so every portal process counts the
same requests: a bucket (what is limited, e.g. sign-in links of one address) allows `limit`
requests per sliding `window`. A request over the limit is not counted, so a client that keeps
trying is let in again once its earlier requests have aged out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from cdr_billing import database
from cdr_billing.schema import portal_rate_event


@dataclass(frozen=True)
class Limit:
    """At most `limit` requests of a bucket per `window`."""

    name: str
    limit: int
    window: timedelta

    def bucket(self, key: str) -> str:
        return f"{self.name}:{key}"


# 5 links per address and 20 sign-in requests per client per 15 minutes; 10 link redemptions
# per client per minute (a token is 256 bits: the limit stops noise, not guessing).
LINKS_PER_ADDRESS = Limit("link-address", 5, timedelta(minutes=15))
SIGN_INS_PER_CLIENT = Limit("sign-in-client", 20, timedelta(minutes=15))
REDEMPTIONS_PER_CLIENT = Limit("redeem-client", 10, timedelta(minutes=1))
# OIDC: 10 callbacks per client per minute (like redemptions); a flow's state is accepted once
# (its lifetime is the flow's, 10 minutes: an older flow's cookie is refused anyway).
OIDC_CALLBACKS_PER_CLIENT = Limit("oidc-client", 10, timedelta(minutes=1))
OIDC_STATE_ONCE = Limit("oidc-state", 1, timedelta(minutes=10))
TOPUPS_PER_ACCOUNT = Limit("topup-account", 5, timedelta(hours=1))
FORGET_AFTER = timedelta(days=1)  # longer than any window


def allow(conn: Connection, limit: Limit, key: str, now: datetime) -> bool:
    """Count a request in the bucket and say whether it is within the limit; concurrent
    portal processes take turns per bucket (an advisory lock on PostgreSQL)."""
    bucket = limit.bucket(key)
    database.hold_lock(conn, f"portal rate {bucket}")
    event = portal_rate_event.c
    recent = conn.execute(
        select(func.count())
        .select_from(portal_rate_event)
        .where(event.bucket == bucket, event.at > now - limit.window)
    ).scalar_one()
    if recent >= limit.limit:
        return False
    conn.execute(insert(portal_rate_event).values(bucket=bucket, at=now))
    return True


def forget_old(conn: Connection, now: datetime) -> int:
    """Delete events older than any window; returns how many."""
    return conn.execute(
        delete(portal_rate_event).where(portal_rate_event.c.at < now - FORGET_AFTER)
    ).rowcount
