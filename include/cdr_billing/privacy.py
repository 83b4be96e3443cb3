"""Masking of personal data before it reaches a log line or an email."""

from __future__ import annotations

import re

VISIBLE_HEAD = 5
VISIBLE_TAIL = 2
# A user or account id that may be a phone number: a phone number's characters (maybe a +,
# digits, spaces, brackets, dots, dashes) with at least PHONE_DIGITS digits.
PHONE_ID = re.compile(r"\+?[\d\s().-]*")
PHONE_DIGITS = 7
# A phone number inside a text: 7 to 17 digits (maybe a leading +), not part of a word, a hash,
# a decimal or a date.
PHONE_IN_TEXT = re.compile(r"(?<![\w.+-])\+?\d{7,17}(?![\w.])")


def mask_number(number: str | None) -> str:
    """Mask a phone number, keeping the country/area head and the last two digits."""
    if not number:
        return ""
    text = str(number)
    if len(text) <= VISIBLE_HEAD + VISIBLE_TAIL:
        return text[:2] + "*" * (len(text) - 2)
    hidden = len(text) - VISIBLE_HEAD - VISIBLE_TAIL
    return text[:VISIBLE_HEAD] + "*" * hidden + text[-VISIBLE_TAIL:]


def looks_like_phone_number(value: str) -> bool:
    """Whether an id may be a phone number."""
    return sum(c.isdigit() for c in value) >= PHONE_DIGITS and bool(PHONE_ID.fullmatch(value))


def shown_id(value: str) -> str:
    """A user or account id as a log line, a mail or a page may show it: masked when it may be
    a phone number."""
    return mask_number(value) if looks_like_phone_number(value) else value


def mask_phone_numbers(text: str) -> str:
    """A text with every number in it that may be a phone number masked."""
    return PHONE_IN_TEXT.sub(lambda found: mask_number(found.group(0)), text)


def mask_tail(number: str | None, digits: int) -> str:
    """A called number as a statement shows it: its last `digits` digits replaced by "x" (0:
    in full), separators kept; the itemised bill's policy, where the head (country, area,
    operator) tells the destination and the tail who was called."""
    if not number or digits <= 0:
        return number or ""
    shown, hidden = list(str(number)), 0
    for position in range(len(shown) - 1, -1, -1):
        if hidden == digits:
            break
        if shown[position].isdigit():
            shown[position], hidden = "x", hidden + 1
    return "".join(shown)
