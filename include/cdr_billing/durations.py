"""Call durations as people read them: minutes to a tenth, half up, exact. One rule for the
month's mail and report and the Billing pages, so the same calls never show two figures."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

TENTH = Decimal("0.1")


def minutes(seconds: int) -> Decimal:
    """Seconds as minutes to a tenth, half up (9 s: 0.2, 3 s: 0.1)."""
    return (Decimal(int(seconds)) / 60).quantize(TENTH, rounding=ROUND_HALF_UP)
