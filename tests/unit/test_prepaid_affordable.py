"""The longest affordable call against hand-computed cases, the cost function itself (brute
force over every duration) and a property: cost(affordable) <= balance < cost(one more second).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdr_billing.prepaid.affordable import (
    MAX_AFFORDABLE_SECONDS,
    AffordableError,
    Rate,
    affordable_seconds,
    costs_minor,
)

EUR_CENT = 10_000  # micro-units in a cent


def rate(
    price: int = 0, fee: int = 0, minimum: int = 0, first: int = 60, following: int = 60
) -> Rate:
    """A EUR rate; price per minute, fee and minimum in cents."""
    return Rate(
        prefix="46",
        price_micro=price * EUR_CENT,
        fee_micro=fee * EUR_CENT,
        minimum_micro=minimum * EUR_CENT,
        first_increment=first,
        next_increment=following,
        currency="EUR",
    )


FEE_ONLY = rate(fee=10)  # 10 c a call, whatever its length
MINIMUM = rate(price=60, minimum=50, first=1, following=1)  # 1 c a second, at least 50 c
SIXTY_SIXTY = rate(price=120, fee=5)  # 5 c + 2 c a second, billed by whole minutes
THIRTY_SIX = rate(price=60, first=30, following=6)  # 1 c a second: 30 s, then 6 s steps
SIXTH_CENT = rate(price=10, first=1, following=1)  # 1/6 c a second, rounded half-up per call


@pytest.mark.parametrize(
    "balance, rate_, seconds",
    [
        (10, FEE_ONLY, MAX_AFFORDABLE_SECONDS),  # the fee paid, time is free: the cap
        (9, FEE_ONLY, 0),  # the connection fee is not affordable
        (49, MINIMUM, 0),  # nor the minimum charge
        (50, MINIMUM, 50),  # the minimum buys its 50 s
        (120, MINIMUM, 120),
        (124, SIXTY_SIXTY, 0),  # the first minute costs 5 + 120
        (125, SIXTY_SIXTY, 60),
        (244, SIXTY_SIXTY, 60),  # 2 minutes cost 245
        (245, SIXTY_SIXTY, 120),  # exactly at a boundary
        (364, SIXTY_SIXTY, 120),
        (29, THIRTY_SIX, 0),
        (35, THIRTY_SIX, 30),
        (36, THIRTY_SIX, 36),  # exactly at a boundary
        (100, THIRTY_SIX, 96),  # 30 + 11 x 6
        (0, SIXTH_CENT, 2),  # 2 s cost 0.33 c: rounded to 0
        (1, SIXTH_CENT, 8),  # 8 s cost 1.33 c -> 1; 9 s cost 1.5 c -> 2
        (0, SIXTY_SIXTY, 0),  # zero balance
        (-1, SIXTH_CENT, 0),  # negative balance
        (-500, rate(), 0),  # a negative balance affords nothing, even a free call
        (0, rate(), MAX_AFFORDABLE_SECONDS),  # a free rate: the cap
    ],
)
def test_hand_computed_cases(balance, rate_, seconds):
    assert affordable_seconds(balance, "EUR", rate_) == seconds


def test_the_cap_is_kept_between_increments():
    assert affordable_seconds(10**9, "EUR", SIXTY_SIXTY, cap_seconds=100) == 100


def test_a_currency_with_no_minor_digits():
    yen = Rate("81", 60_000_000, 0, 0, 1, 1, "JPY")  # 60 yen a minute: 1 yen a second
    assert affordable_seconds(100, "JPY", yen) == 100


def test_a_balance_in_another_currency_is_refused():
    with pytest.raises(AffordableError, match="SEK"):
        affordable_seconds(1000, "SEK", SIXTY_SIXTY)


def test_the_costs_are_rate_pys_rule():
    # 61 s at 60/60: two minutes, 5 + 240 cents
    assert costs_minor(SIXTY_SIXTY, np.array([1, 60, 61])).tolist() == [125, 125, 245]


rates = st.builds(
    Rate,
    prefix=st.just("46"),
    price_micro=st.integers(0, 5_000_000),
    fee_micro=st.integers(0, 1_000_000),
    minimum_micro=st.integers(0, 2_000_000),
    first_increment=st.integers(1, 120),
    next_increment=st.integers(1, 120),
    currency=st.just("EUR"),
)


@given(rates, st.integers(-100, 20_000))
def test_affordable_is_the_longest_call_within_the_balance(rate_, balance):
    seconds = affordable_seconds(balance, "EUR", rate_)
    if seconds:
        assert costs_minor(rate_, np.array([seconds]))[0] <= balance
    if seconds < MAX_AFFORDABLE_SECONDS:  # one second more is the next increment
        assert costs_minor(rate_, np.array([seconds + 1]))[0] > balance


@given(rates, st.integers(-100, 2_000), st.integers(1, 900))
def test_affordable_equals_a_search_over_every_duration(rate_, balance, cap):
    durations = np.arange(1, cap + 1)
    within = durations[costs_minor(rate_, durations) <= balance]
    assert affordable_seconds(balance, "EUR", rate_, cap_seconds=cap) == (
        int(within.max()) if len(within) else 0
    )
