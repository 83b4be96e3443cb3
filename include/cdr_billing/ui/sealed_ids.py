"""Ids that may be phone numbers, sealed in the Billing pages' addresses.

The Airflow UI copies its frame's path into its own address, so an id in a link ends up in
the address bar, the browser's history and the access logs. A user or account id that looks
like a phone number goes into a link sealed (Fernet: encrypted and authenticated with a key
derived from Airflow's [api] secret_key, one per deployment) behind a "!", which a plain id
never starts with in a path segment (quote() encodes it); the route opens the seal. Other ids
stay readable.
"""

from __future__ import annotations

from base64 import urlsafe_b64encode
from functools import cache
from hashlib import sha256
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from cdr_billing.privacy import looks_like_phone_number

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

SEALED = "!"


@cache
def _fernet() -> Fernet:
    from cryptography.fernet import Fernet

    from cdr_billing.ui.web import secret_key

    key = sha256(b"cdr-billing sealed ids\0" + secret_key().encode()).digest()
    return Fernet(urlsafe_b64encode(key))


def id_segment(value: str) -> str:
    """An id as one path segment of a link: sealed when it may be a phone number, else
    percent-encoded."""
    if looks_like_phone_number(value):
        return SEALED + _fernet().encrypt(value.encode()).decode()
    return quote(value, safe="")


def segment_id(raw: str) -> str | None:
    """The id of a raw path segment made by id_segment; None when a seal does not open."""
    if not raw.startswith(SEALED):
        return unquote(raw)
    from cryptography.fernet import InvalidToken

    try:
        return _fernet().decrypt(raw[len(SEALED) :].encode()).decode()
    except (InvalidToken, UnicodeDecodeError):
        return None
