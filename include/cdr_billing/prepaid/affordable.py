"""The longest call a prepaid balance affords for a destination now, for a switch that sets a
maximum call time at call setup.

The cost is rate.py's, not a second copy of the rule: a call of d seconds costs
tariff_cost_minor(billed_seconds(d)). That cost is a step function of d, constant between
increment boundaries (first, first + next, first + 2 next, ...) and non-decreasing (prices,
fees and minimums are never negative), so the longest affordable call ends on a boundary: the
largest boundary whose cost is within the balance. `affordable_seconds` prices every boundary
up to the cap at once and picks it by binary search on those costs (at most
MAX_AFFORDABLE_SECONDS / next_increment + 1 of them).

Staleness: the balance is the one the last prepaid run committed (`balance_updated_at` says
when); calls made since are not in it, which is the exposure module's subject.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cdr_billing import database
from cdr_billing.config import BillingSettings
from cdr_billing.money import micro_to_minor_divisor
from cdr_billing.rate import billed_seconds, match_rates, normalise_numbers, tariff_cost_minor
from cdr_billing.schema import prepaid_account, tariff_version
from cdr_billing.tariff import all_rates

# The longest call ever offered, whatever the balance: a day (a free or nearly free rate would
# otherwise afford years).
MAX_AFFORDABLE_SECONDS = 24 * 3600


class AffordableError(LookupError):
    """No answer for this account and destination; the message says why."""


@dataclass(frozen=True)
class Rate:
    """The tariff rate of a destination at a moment: what rate.py prices a call with."""

    prefix: str
    price_micro: int
    fee_micro: int
    minimum_micro: int
    first_increment: int
    next_increment: int
    currency: str
    version_id: int = 0
    band: str = "all"

    @classmethod
    def from_row(cls, row: pd.Series) -> Rate:
        """A rate from a row of tariff.all_rates."""
        return cls(
            prefix=str(row["prefix"]),
            price_micro=int(row["price_micro"]),
            fee_micro=int(row["fee_micro"]),
            minimum_micro=int(row["minimum_micro"]),
            first_increment=int(row["first_increment"]),
            next_increment=int(row["next_increment"]),
            currency=str(row["currency"]),
            version_id=int(row["version_id"]),
            band=str(row["band"]),
        )


def costs_minor(rate: Rate, durations: np.ndarray) -> np.ndarray:
    """What calls of these durations cost at this rate: rate.py's rule, exactly."""
    durations = np.asarray(durations, dtype=np.int64)

    def each(value: int) -> np.ndarray:
        return np.full(len(durations), value, dtype=np.int64)

    seconds = billed_seconds(durations, each(rate.first_increment), each(rate.next_increment))
    return tariff_cost_minor(
        seconds,
        each(rate.price_micro),
        each(rate.fee_micro),
        each(rate.minimum_micro),
        each(micro_to_minor_divisor(rate.currency)),
    )


def affordable_seconds(
    balance_minor: int, currency: str, rate: Rate, cap_seconds: int = MAX_AFFORDABLE_SECONDS
) -> int:
    """The longest call (seconds, at most `cap_seconds`) whose cost is within the balance; 0
    when even the first increment (connection fee, minimum charge) is not affordable."""
    if currency != rate.currency:
        raise AffordableError(f"the rate is in {rate.currency}, the balance in {currency}")
    first, following = rate.first_increment, rate.next_increment
    steps = -(-max(cap_seconds - first, 0) // following)
    boundaries = first + np.arange(steps + 1, dtype=np.int64) * following
    costs = costs_minor(rate, boundaries)
    affordable = int(np.searchsorted(costs, balance_minor, side="right"))
    if affordable == 0:
        return 0
    return min(int(boundaries[affordable - 1]), cap_seconds)


@dataclass(frozen=True)
class Affordable:
    """The answer to a switch at call setup, with what it was computed from."""

    account_id: str
    seconds: int
    locked: bool  # a locked line affords no call
    balance_minor: int
    currency: str
    balance_updated_at: datetime  # the balance's age is the answer's staleness
    prefix: str
    band: str
    tariff_version: int
    computed_at: datetime

    def as_json(self) -> dict:
        """JSON-ready values (moments as ISO 8601)."""
        values = asdict(self)
        for moment in ("balance_updated_at", "computed_at"):
            values[moment] = values[moment].isoformat()
        return values


@lru_cache(maxsize=4)
def _rates_up_to(engine: Engine, newest_version: int | None) -> pd.DataFrame:
    """Every rate, cached per newest tariff version (versions are never changed)."""
    return all_rates(engine)


def _rates(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(tariff_version.c.version_id))).scalar()
    return _rates_up_to(engine, newest)


def rate_for(engine: Engine, destination: str, at: datetime, rules: BillingSettings) -> Rate | None:
    """The rate a call to `destination` starting at `at` is priced with: the same longest
    prefix, validity, band at the start and newest version as the rating stage."""
    rates = _rates(engine)
    if rates.empty:
        return None
    e164 = normalise_numbers(pd.Series([destination], dtype="str"), rules)
    start = pd.Series([pd.Timestamp(at).tz_convert(UTC)]).astype("datetime64[us, UTC]")
    position = int(match_rates(e164, start, rates, rules.timezone)[0])
    return Rate.from_row(rates.iloc[position]) if position >= 0 else None


def affordable_for(
    engine: Engine,
    account_id: str,
    destination: str,
    at: datetime,
    rules: BillingSettings,
    cap_seconds: int = MAX_AFFORDABLE_SECONDS,
) -> Affordable:
    """The longest call an active prepaid account affords to `destination` at `at`; raises
    AffordableError for an unknown or inactive account or a destination without a rate."""
    with engine.connect() as conn:
        account = (
            conn.execute(
                select(prepaid_account).where(
                    prepaid_account.c.account_id == account_id, prepaid_account.c.active
                )
            )
            .mappings()
            .first()
        )
    if account is None:
        raise AffordableError(f"no active prepaid account {account_id!r}")
    rate = rate_for(engine, destination, at, rules)
    if rate is None:
        raise AffordableError("no rate for this destination at this time")
    locked = bool(account["locked"])
    seconds = (
        0
        if locked
        else affordable_seconds(account["balance_minor"], account["currency"], rate, cap_seconds)
    )
    return Affordable(
        account_id=account_id,
        seconds=seconds,
        locked=locked,
        balance_minor=int(account["balance_minor"]),
        currency=account["currency"],
        balance_updated_at=database.in_utc(account["updated_at"]),
        prefix=rate.prefix,
        band=rate.band,
        tariff_version=rate.version_id,
        computed_at=at,
    )
