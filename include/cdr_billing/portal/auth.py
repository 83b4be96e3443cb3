"""Sign-in links and sessions of the portal.

A link's token and a session's cookie are 32 random bytes; only their SHA-256 is stored, so
whoever reads the database (a backup, a replica) can neither follow a link nor take over a
session. A link lives 15 minutes and is redeemed once: one UPDATE sets `used_at` only while it
is unused and unexpired, and returns the address, so two concurrent redemptions cannot both
win. A session ends after 30 minutes without a request or 12 hours after sign-in, whichever
comes first, or at sign-out; each sign-in makes a new one (no fixation).
Addresses and clients go into the audit log and the rate limits as hashes: addresses by plain
SHA-256 (an operator can look one up), clients (IP addresses) keyed by the portal's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from cdr_billing.database import in_utc
from cdr_billing.schema import portal_session, portal_sign_in_token

LINK_LIFETIME = timedelta(minutes=15)
SESSION_IDLE = timedelta(minutes=30)
SESSION_LIFETIME = timedelta(hours=12)
TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 64  # token_urlsafe(32) is 43 characters; anything longer is not ours
MAX_ADDRESS_CHARS = 254  # RFC 5321's longest path


@dataclass(frozen=True)
class NewSecret:
    """A random value to hand out (link token, session cookie) and the hash that is stored."""

    value: str
    digest: str


@dataclass(frozen=True)
class Session:
    """A signed-in session: its stored hash and whose it is."""

    digest: str
    address: str


def digest(value: str) -> str:
    """The stored form of a token or cookie value: hex SHA-256."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> NewSecret:
    value = secrets.token_urlsafe(TOKEN_BYTES)
    return NewSecret(value, digest(value))


def well_formed(value: str | None) -> bool:
    """Whether a value could be one we made (URL-safe base64, bounded): others are refused
    before any query."""
    if not value or len(value) > MAX_TOKEN_CHARS:
        return False
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


def normal_address(text: str) -> str | None:
    """An address as compared with the snapshot: trimmed, lower-cased; None when it is not
    one (no single @, a space, too long)."""
    address = text.strip().lower()
    local, _, domain = address.partition("@")
    if address.count("@") != 1 or not local or "." not in domain:
        return None
    if len(address) > MAX_ADDRESS_CHARS:
        return None
    if any(c.isspace() or c in "<>\"'\\" for c in address):
        return None
    return address


def address_hash(address: str) -> str:
    return hashlib.sha256(b"portal address\0" + address.encode()).hexdigest()


def client_hash(secret: str, client: str) -> str:
    """A client (IP address) as stored: keyed, so the table does not list who visited."""
    return hmac.new(secret.encode(), b"portal client\0" + client.encode(), "sha256").hexdigest()


def link_expiry(created_at: datetime) -> datetime:
    return created_at + LINK_LIFETIME


def session_is_live(
    created_at: datetime, last_seen_at: datetime, revoked_at: datetime | None, now: datetime
) -> bool:
    """Whether a session may still be used: not revoked, not idle too long, not too old."""
    return (
        revoked_at is None
        and now < last_seen_at + SESSION_IDLE
        and now < created_at + SESSION_LIFETIME
    )


def issue_link(conn: Connection, address: str, client: str, now: datetime) -> str:
    """Record a sign-in link for the address; return its token (to mail, never to store)."""
    token = new_secret()
    conn.execute(
        insert(portal_sign_in_token).values(
            token_hash=token.digest,
            address=address,
            client_hash=client,
            created_at=now,
            expires_at=link_expiry(now),
        )
    )
    return token.value


def redeem_link(conn: Connection, token: str, now: datetime) -> str | None:
    """Use the link once: its address, or None when it is unknown, used or expired."""
    if not well_formed(token):
        return None
    link = portal_sign_in_token.c
    return conn.execute(
        update(portal_sign_in_token)
        .where(link.token_hash == digest(token), link.used_at.is_(None), link.expires_at > now)
        .values(used_at=now)
        .returning(link.address)
    ).scalar()


def start_session(conn: Connection, address: str, now: datetime, replaces: str | None) -> str:
    """A new session for the address (its cookie value returned); the browser's previous
    session, if any, is revoked."""
    if replaces is not None:
        end_session(conn, replaces, now)
    cookie = new_secret()
    conn.execute(
        insert(portal_session).values(
            session_hash=cookie.digest,
            address=address,
            created_at=now,
            last_seen_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    return cookie.value


def live_session(conn: Connection, cookie: str | None, now: datetime) -> Session | None:
    """The session of a cookie value if it is live (and mark it seen now); None otherwise."""
    if not well_formed(cookie):
        return None
    session = portal_session.c
    row = (
        conn.execute(select(portal_session).where(session.session_hash == digest(cookie)))
        .mappings()
        .first()
    )
    if row is None or not session_is_live(
        in_utc(row["created_at"]), in_utc(row["last_seen_at"]), row["revoked_at"], now
    ):
        return None
    conn.execute(
        update(portal_session)
        .where(session.session_hash == row["session_hash"])
        .values(last_seen_at=now)
    )
    return Session(row["session_hash"], row["address"])


def end_session(conn: Connection, session_hash: str, now: datetime) -> None:
    conn.execute(
        update(portal_session)
        .where(portal_session.c.session_hash == session_hash, portal_session.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
