from decimal import Decimal

import pytest

from cdr_billing.money import MoneyError, from_minor_units, to_micro_units, to_minor_units


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [("0.005", "EUR", 1), ("0.0049", "EUR", 0), ("12.345", "EUR", 1235), ("-0.005", "EUR", -1), ("7.5", "JPY", 8)],
)
def test_to_minor_units_rounds_half_up(amount, currency, minor):
    assert to_minor_units(Decimal(amount), currency) == minor


def test_micro_units_are_exact():
    assert to_micro_units("0.0150") == 15_000


def test_micro_units_refuse_more_than_six_decimals():
    with pytest.raises(MoneyError, match="six decimals"):
        to_micro_units("0.0000001")


def test_minor_units_format_with_currency_decimals():
    assert str(from_minor_units(1235, "EUR")) == "12.35"
    assert str(from_minor_units(1235, "JPY")) == "1235"
