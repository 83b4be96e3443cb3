"""Minutes to a tenth, half up: the one rule of the mail, the report and the Billing pages."""

from __future__ import annotations

from decimal import Decimal

from cdr_billing.durations import minutes


def test_a_half_tenth_rounds_up_where_binary_floats_round_down():
    assert round(9 / 60, 1) == 0.1  # what the mail said before: 0.15 as a float is below 0.15
    assert minutes(9) == Decimal("0.2")
    assert (minutes(0), minutes(3), minutes(2), minutes(90)) == tuple(
        map(Decimal, ("0.0", "0.1", "0.0", "1.5"))
    )


def test_every_duration_up_to_a_day_and_a_huge_one_match_whole_tenths():
    for seconds in [*range(0, 86_401), 10**15 + 9]:
        tenths = (seconds * 10 + 30) // 60  # half up in integers
        assert minutes(seconds) == Decimal(tenths) / 10, seconds
