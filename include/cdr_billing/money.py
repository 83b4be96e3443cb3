"""Exact money: Decimal at the edges, integer minor units (cents) inside.

Rounding rule: every call's cost is rounded half-up to the currency's minor unit once;
totals are sums of those rounded costs, so a billing line equals the sum of its calls.
Tariff prices are held as integer micro-units (1e-6 of the currency) so that rating is
exact integer arithmetic.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import numpy as np

MICRO = 1_000_000
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "TND": 3}


class MoneyError(ValueError):
    """A money value cannot be represented exactly."""


def minor_digits(currency: str) -> int:
    """Return the number of decimals of a currency's minor unit (ISO 4217)."""
    return _MINOR_DIGITS.get(currency.upper(), 2)


def parse_decimal(text: str) -> Decimal:
    """Parse a decimal number written with a point; raise MoneyError otherwise."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation as exc:
        raise MoneyError(f"not a decimal number: {text!r}") from exc
    if not value.is_finite():
        raise MoneyError(f"not a finite number: {text!r}")
    return value


def to_micro_units(text: str) -> int:
    """Return a price as integer micro-units; refuse more than six decimals."""
    value = parse_decimal(text) * MICRO
    if value != value.to_integral_value():
        raise MoneyError(f"price {text!r} has more than six decimals")
    return int(value)


def from_minor_units(minor: int, currency: str) -> Decimal:
    """Return integer minor units as a Decimal amount with the currency's decimals."""
    digits = minor_digits(currency)
    return Decimal(int(minor)).scaleb(-digits).quantize(Decimal(1).scaleb(-digits))


def micro_to_minor_divisor(currency: str) -> int:
    """Return how many micro-units make one minor unit of the currency."""
    return MICRO // 10 ** minor_digits(currency)


def divide_half_up(numerator: np.ndarray, denominator: np.ndarray | int) -> np.ndarray:
    """Integer division rounding halves away from zero (Decimal's ROUND_HALF_UP), vectorised."""
    return np.sign(numerator) * ((np.abs(numerator) + denominator // 2) // denominator)


def percent_to_basis_points(text: str) -> int:
    """ "12.5" (percent) -> 1250; refuse more than two decimals."""
    value = parse_decimal(text) * 100
    if value != value.to_integral_value():
        raise MoneyError(f"percentage {text!r} has more than two decimals")
    return int(value)
