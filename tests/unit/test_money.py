from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest

from cdr_billing.money import (
    MICRO,
    MoneyError,
    divide_half_up,
    from_minor_units,
    micro_to_minor_divisor,
    minor_digits,
    to_micro_units,
)


@pytest.mark.parametrize(
    ("micro", "currency", "minor"),
    [
        (5_000, "EUR", 1),
        (4_900, "EUR", 0),
        (12_345_000, "EUR", 1235),
        (-5_000, "EUR", -1),
        (7_500_000, "JPY", 8),
    ],
)
def test_division_rounds_half_up_like_decimal(micro, currency, minor):
    expected = (Decimal(micro) / MICRO).quantize(
        Decimal(1).scaleb(-minor_digits(currency)), rounding=ROUND_HALF_UP
    )
    assert (
        divide_half_up(np.array([micro]), micro_to_minor_divisor(currency))[0]
        == minor
        == int(expected.scaleb(minor_digits(currency)))
    )


def test_micro_units_are_exact():
    assert to_micro_units("0.0150") == 15_000


def test_micro_units_refuse_more_than_six_decimals():
    with pytest.raises(MoneyError, match="six decimals"):
        to_micro_units("0.0000001")


def test_minor_units_format_with_currency_decimals():
    assert str(from_minor_units(1235, "EUR")) == "12.35"
    assert str(from_minor_units(1235, "JPY")) == "1235"
