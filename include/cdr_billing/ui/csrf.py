"""CSRF tokens for the Billing pages' forms. The pages ride on Airflow's `_token` cookie, which a
browser also sends with a form posted from another site's page (SameSite=Lax stops most of that,
not all: a same-site page, an old browser). So each form carries a token that only this server
can make: an HMAC, under a key derived from Airflow's [api] secret_key, of the Airflow user,
the form's purpose and subject (the account) and its idempotency key, with the time it was made.
A token is refused for another user, account or form, once older than its lifetime, or altered.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta

LIFETIME = timedelta(hours=12)
CONTEXT = b"cdr-billing-ui-csrf-v1"


def _key(secret: str) -> bytes:
    """A key of its own for these tokens (the secret itself signs other things)."""
    return hmac.new(secret.encode(), CONTEXT, hashlib.sha256).digest()


def _signature(secret: str, issued: int, parts: tuple[str, ...]) -> str:
    message = "\x1f".join((str(issued), *parts)).encode()
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def make_token(secret: str, now: datetime, *parts: str) -> str:
    """A token for a form: `parts` bind it (user, purpose, account, form key)."""
    issued = int(now.timestamp())
    return f"{issued}.{_signature(secret, issued, parts)}"


def token_is_valid(secret: str, token: str | None, now: datetime, *parts: str) -> bool:
    """Whether the token was made here for exactly these parts, within its lifetime."""
    if not token or len(token) > 100 or "." not in token:
        return False
    issued_text, _, signature = token.partition(".")
    if not issued_text.isdigit():
        return False
    issued = int(issued_text)
    age = now.timestamp() - issued
    if age < -60 or age > LIFETIME.total_seconds():
        return False
    return hmac.compare_digest(signature, _signature(secret, issued, parts))
