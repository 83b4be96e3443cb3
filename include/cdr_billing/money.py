"""Exact money: Decimal at the edges, integer minor units inside.

Rounding rule: every call's cost is rounded half-up to the currency's minor unit once;
totals are sums of those rounded costs, so a billing line equals the sum of its calls.
Tariff prices are held as integer micro-units (1e-6 of the currency) so that rating is
exact integer arithmetic. Minor units come from ISO 4217 (the `iso4217` package, which
embeds the maintenance agency's list); a code it does not list with a minor unit (funds,
metals, test codes) is not a currency calls are billed in.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from functools import cache

import numpy as np
from iso4217 import Currency

MICRO = 1_000_000
# The largest provider cost of one call, in its currency's major unit: above it the row is
# quarantined (COST_OUT_OF_RANGE), so a typo cannot bill a fortune and no product can wrap.
MAX_CALL_COST = 10**9
# The largest tariff price, fee or minimum charge (major units): a bigger one refuses the tariff.
MAX_TARIFF_AMOUNT = 10**6
# A sum (user line, billing line, revenue share) must stay below this many minor units.
MAX_SUM_MINOR = 2**62


class MoneyError(ValueError):
    """A money value cannot be represented exactly."""


class MoneyOverflowError(MoneyError):
    """A sum of amounts is too large for the billing database's integer columns."""


@cache
def _iso_digits() -> dict[str, int]:
    return {c.code: c.exponent for c in Currency if c.exponent is not None}


def iso_currencies() -> frozenset[str]:
    """The ISO 4217 codes of currencies with a minor unit (upper case)."""
    return frozenset(_iso_digits())


def minor_digits(currency: str) -> int:
    """Return the number of decimals of a currency's minor unit (ISO 4217); refuse other codes."""
    digits = _iso_digits().get(currency)
    if digits is None:
        raise MoneyError(f"{currency!r} is not an ISO 4217 currency code")
    return digits


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


def scale_half_up(
    amount: np.ndarray, numerator: np.ndarray | int, denominator: np.ndarray | int
) -> np.ndarray:
    """amount x numerator / denominator rounded half away from zero, exact for any int64 amount:
    the amount is split into whole denominators and a rest first, so no product grows beyond
    the result or denominator x numerator (cost x markup, billed x revenue share)."""
    amount = np.asarray(amount, dtype=np.int64)
    whole, rest = np.divmod(np.abs(amount), denominator)
    return np.sign(amount) * (
        whole * numerator + (rest * numerator + denominator // 2) // denominator
    )


def check_sums(sums: np.ndarray, approximate: np.ndarray, what: str) -> np.ndarray:
    """Refuse int64 sums whose float64 twin (the same values summed as floats) reaches
    MAX_SUM_MINOR: the integer sum may have wrapped. Integer sums are exact whenever the true
    sum fits, whatever their intermediate values."""
    too_large = np.abs(approximate) >= MAX_SUM_MINOR
    if too_large.any():
        raise MoneyOverflowError(
            f"{what}: a sum of about {approximate[too_large][0]:.3g} minor units "
            "is too large to bill"
        )
    return sums


def percent_to_basis_points(text: str) -> int:
    """ "12.5" (percent) -> 1250; refuse more than two decimals."""
    value = parse_decimal(text) * 100
    if value != value.to_integral_value():
        raise MoneyError(f"percentage {text!r} has more than two decimals")
    return int(value)
