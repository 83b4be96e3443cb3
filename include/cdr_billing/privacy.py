"""Masking of personal data before it reaches a log line or an email."""

from __future__ import annotations

VISIBLE_HEAD = 5
VISIBLE_TAIL = 2


def mask_number(number: str | None) -> str:
    """Mask a phone number, keeping the country/area head and the last two digits."""
    if not number:
        return ""
    text = str(number)
    if len(text) <= VISIBLE_HEAD + VISIBLE_TAIL:
        return text[:2] + "*" * (len(text) - 2)
    hidden = len(text) - VISIBLE_HEAD - VISIBLE_TAIL
    return text[:VISIBLE_HEAD] + "*" * hidden + text[-VISIBLE_TAIL:]
