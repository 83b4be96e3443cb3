"""Price calls: the provider's own cost, or the tariff's longest matching prefix.

Rule for tariff-priced calls (status 1, 2 or 3): billed seconds are the duration rounded
up to the first increment, then to the next increments (a 0 s call bills 0 s);
cost = connection fee + price per minute x billed seconds / 60, at least the minimum
charge, rounded half-up to the minor unit once per call. Integer arithmetic on
micro-units, so no float ever touches money.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from cdr_billing import text_bytes
from cdr_billing.canonical import COMPLETION_FAILED
from cdr_billing.config import BillingSettings
from cdr_billing.frames import rows_where
from cdr_billing.money import divide_half_up, micro_to_minor_divisor, scale_half_up
from cdr_billing.tariff import OPEN_START

NO_TARIFF_PREFIX = "NO_TARIFF_PREFIX"
NO_RATE_AT_CALL_TIME = "NO_RATE_AT_CALL_TIME"


def normalise_numbers(numbers: pd.Series, rules: BillingSettings) -> pd.Series:
    """Return numbers as E.164 digits without "+": +46.., 0046.. and 0.. become 46..
    Separators are removed first; the prefixes are replaced on the numbers' bytes."""
    text = text_bytes.without_separators(text_bytes.one_array(numbers))
    e164 = text_bytes.replace_prefixes(
        text,
        [("+", ""), (rules.international_prefix, ""), (rules.national_prefix, rules.country_code)],
    )
    return pd.Series(e164, index=numbers.index, dtype="str")


E164_DIGITS = 15
_POWERS = np.power(10, np.arange(E164_DIGITS + 1), dtype=np.int64)


class _PaddedNumbers(NamedTuple):
    """Numbers as int64 right-padded to 15 digits (-1: not a number), and their digit counts."""

    padded: np.ndarray
    lengths: np.ndarray


def _padded_numbers(digits: pd.Series) -> _PaddedNumbers:
    """E.164 digit strings as int64 right-padded to 15 digits (-1 where not 1-15 digits without
    a leading 0), and their lengths."""
    values, lengths, fits = text_bytes.plain_numbers(text_bytes.one_array(digits), E164_DIGITS)
    lengths = np.where(fits, lengths, E164_DIGITS)
    return _PaddedNumbers(np.where(fits, values * _POWERS[E164_DIGITS - lengths], -1), lengths)


class PrefixIndex:
    """Longest-prefix lookup by binary search: each prefix is the interval of the padded
    numbers it starts; intervals nest, so each elementary segment has one innermost prefix."""

    def __init__(self, prefixes: list[str]) -> None:
        self.prefixes = prefixes
        lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
        self.lengths = lengths
        values = np.array([int(p) for p in prefixes], dtype=np.int64)
        low = values * _POWERS[E164_DIGITS - lengths]
        high = (values + 1) * _POWERS[E164_DIGITS - lengths]
        self.bounds = np.unique(np.concatenate([low, high]))
        self.innermost = np.full(len(self.bounds), -1, dtype=np.int64)
        starts, stops = np.searchsorted(self.bounds, low), np.searchsorted(self.bounds, high)
        for prefix_id in np.argsort(
            lengths, kind="stable"
        ):  # longer prefixes overwrite the shorter they nest in
            self.innermost[starts[prefix_id] : stops[prefix_id]] = prefix_id
        by_text = {p: n for n, p in enumerate(prefixes)}
        self.parent = np.array(
            [
                next((by_text[p[:k]] for k in range(len(p) - 1, 0, -1) if p[:k] in by_text), -1)
                for p in prefixes
            ],
            dtype=np.int64,
        )

    def lookup(self, padded: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The longest prefix id of each number (padded value, digit count), or -1. The
        innermost interval may belong to a prefix longer than a short number (46800 for +4680):
        then the longest of its enclosing prefixes that fits the number wins."""
        segment = np.searchsorted(self.bounds, padded, side="right") - 1
        ids = np.where((segment >= 0) & (padded >= 0), self.innermost[np.maximum(segment, 0)], -1)
        too_long = (ids >= 0) & (self.lengths[np.maximum(ids, 0)] > lengths)
        while too_long.any():
            ids[too_long] = self.parent[ids[too_long]]
            too_long = (ids >= 0) & (self.lengths[np.maximum(ids, 0)] > lengths)
        return ids

    def longest(self, e164: pd.Series) -> np.ndarray:
        """The longest prefix of each E.164 number, or "" when none matches."""
        ids = self.lookup(*_padded_numbers(e164.reset_index(drop=True)))
        return np.where(ids >= 0, np.array(self.prefixes, dtype=object)[np.maximum(ids, 0)], "")


def _rate_at_call_time(
    calls: np.ndarray, prefix_ids: np.ndarray, rates: pd.DataFrame, starts: pd.Series, timezone: str
) -> np.ndarray:
    """Position of the newest rate of each call's prefix valid at its start, or -1."""
    pairs = pd.DataFrame({"call": calls, "prefix_id": prefix_ids}).merge(rates, on="prefix_id")
    moment = starts.iloc[pairs["call"].to_numpy()]
    local = moment.dt.tz_convert(timezone)
    start, hour = moment.astype("int64").to_numpy(), local.dt.hour.to_numpy(np.int64)
    weekday_bit = np.left_shift(1, local.dt.day_of_week.to_numpy(np.int64))
    valid_to = (
        pairs["valid_to"]
        .astype("int64")
        .where(pairs["valid_to"].notna(), np.iinfo(np.int64).max)
        .to_numpy()
    )
    applies = (
        (pairs["valid_from"].astype("int64").to_numpy() <= start)
        & (start < valid_to)
        & (pairs["weekday_mask"].to_numpy() & weekday_bit > 0)
        & (pairs["start_hour"].to_numpy() <= hour)
        & (hour < pairs["end_hour"].to_numpy())
    )
    chosen = pairs[applies].sort_values(["call", "version_id"]).drop_duplicates("call", keep="last")
    found = pd.Series(-1, index=calls, dtype=np.int64)
    found[chosen["call"].to_numpy()] = chosen["position"].to_numpy()
    return found.to_numpy()


def match_rates(
    numbers: pd.Series, starts_utc: pd.Series, rates: pd.DataFrame, timezone: str
) -> np.ndarray:
    """Return, per call, the position in `rates` of the rate that applies, or -1.

    The longest prefix with a rate valid at the call's start (validity period, weekday and
    hour band in `timezone`) wins; among rates of that prefix, the newest version.
    Prefixes with a single all-time, all-week rate need no per-call check.
    """
    prefixes = sorted(rates["prefix"].unique())
    index = PrefixIndex(prefixes)
    rates = rates.assign(
        position=np.arange(len(rates)),
        prefix_id=rates["prefix"].map({p: n for n, p in enumerate(prefixes)}),
    )
    always = (
        (rates["valid_from"] <= OPEN_START)
        & rates["valid_to"].isna()
        & (rates["weekday_mask"] == 127)
    )
    always &= (
        (rates["start_hour"] == 0)
        & (rates["end_hour"] == 24)
        & ~rates["prefix_id"].duplicated(keep=False)
    )
    simple = np.full(len(prefixes), -1, dtype=np.int64)
    simple[rates.loc[always, "prefix_id"].to_numpy()] = rates.loc[always, "position"].to_numpy()
    starts = starts_utc.reset_index(drop=True)
    current = index.lookup(*_padded_numbers(numbers.reset_index(drop=True)))
    found = np.full(len(current), -1, dtype=np.int64)
    pending = np.flatnonzero(current >= 0)
    while pending.size:
        chosen = simple[current[pending]]
        checked = chosen < 0
        chosen[checked] = _rate_at_call_time(
            pending[checked], current[pending[checked]], rates, starts, timezone
        )
        found[pending] = chosen
        retry = pending[chosen < 0]  # no rate at that time: the next shorter prefix may have one
        current[retry] = index.parent[current[retry]]
        pending = retry[current[retry] >= 0]
    return found


def billed_seconds(duration: np.ndarray, first: np.ndarray, following: np.ndarray) -> np.ndarray:
    """Round durations up to the first increment, then to whole next increments."""
    beyond_first = np.maximum(duration - first, 0)
    steps = -(-beyond_first // following)
    return np.where(duration > 0, first + steps * following, 0)


def tariff_cost_minor(
    seconds: np.ndarray,
    price_micro: np.ndarray,
    fee_micro: np.ndarray,
    minimum_micro: np.ndarray,
    divisor: np.ndarray,
) -> np.ndarray:
    """Cost in minor units: fee + price x seconds / 60, at least the minimum, half-up."""
    sixtieths = np.maximum(fee_micro * 60 + price_micro * seconds, minimum_micro * 60)
    return divide_half_up(sixtieths, divisor * 60)


UNKNOWN_RANGE_DIGITS = 5


def _unbillable(calls: pd.DataFrame, rates: pd.DataFrame) -> pd.DataFrame:
    """Calls with no rate: a known prefix without a rate at that time, or an unknown range."""
    known_prefix = PrefixIndex(sorted(rates["prefix"].unique())).longest(calls["destination_e164"])
    known = known_prefix != ""
    return calls.assign(
        reason_code=np.where(known, NO_RATE_AT_CALL_TIME, NO_TARIFF_PREFIX),
        number_range=np.where(
            known, known_prefix, calls["destination_e164"].str[:UNKNOWN_RANGE_DIGITS].to_numpy()
        ),
    ).reset_index(drop=True)


class NumberPrices(NamedTuple):
    """Per call: its rate's position in the rates (-1: none), billed seconds, cost (minor)."""

    position: np.ndarray
    billed_seconds: np.ndarray
    cost_minor: np.ndarray


def price_numbers(
    e164: pd.Series,
    starts_utc: pd.Series,
    durations: np.ndarray,
    rates: pd.DataFrame,
    timezone: str,
) -> NumberPrices:
    """The rating core on arrays: per call the rate position (-1: none), billed seconds and cost."""
    position = match_rates(e164, starts_utc, rates, timezone)
    used = np.maximum(position, 0)

    def column(name: str) -> np.ndarray:
        return rates[name].to_numpy()[used]

    divisors = (
        rates["currency"]
        .map({c: micro_to_minor_divisor(c) for c in rates["currency"].unique()})
        .to_numpy(np.int64)
    )
    seconds = billed_seconds(durations, column("first_increment"), column("next_increment"))
    cost = tariff_cost_minor(
        seconds, column("price_micro"), column("fee_micro"), column("minimum_micro"), divisors[used]
    )
    return NumberPrices(position, seconds, cost)


class _TariffPricing(NamedTuple):
    """The calls the tariff priced, and those it has no rate for (with the reason)."""

    priced: pd.DataFrame
    unbillable: pd.DataFrame


def _price_by_tariff(
    calls: pd.DataFrame, candidates: np.ndarray, rates: pd.DataFrame, rules: BillingSettings
) -> _TariffPricing:
    """Price the calls where `candidates` is True by the tariff: (priced, unbillable); the wide
    rows are selected once, after pricing."""
    chosen = rows_where(calls[["destination_party", "start_utc", "duration_seconds"]], candidates)
    e164 = normalise_numbers(chosen["destination_party"], rules)
    durations = chosen["duration_seconds"].to_numpy(np.int64)
    position, seconds, cost = price_numbers(
        e164, chosen["start_utc"], durations, rates, rules.timezone
    )
    found = position >= 0
    hit = candidates.copy()
    hit[candidates] = found
    miss = candidates & ~hit
    used = position[found]

    def column(name: str) -> np.ndarray | pd.Series:
        if rates[name].dtype == "str":  # taken in Arrow, not through a million Python strings
            return pd.Series(pa.array(rates[name], type=pa.large_string()).take(used), dtype="str")
        return rates[name].to_numpy()[used]

    priced = rows_where(calls, hit).assign(
        destination_e164=pd.Series(e164.array[found], dtype="str"),
        billed_seconds=seconds[found],
        cost_minor=cost[found],
        currency=column("currency"),
        tariff_version=column("version_id"),
        tariff_line=column("line"),
        tariff_prefix=column("prefix"),
        tariff_band=column("band"),
        pricing="tariff",
    )
    unpriced = rows_where(calls, miss).assign(
        destination_e164=pd.Series(e164.array[~found], dtype="str")
    )
    return _TariffPricing(priced, _unbillable(unpriced, rates))


def _price_by_provider(calls: pd.DataFrame, markups: dict[str, int]) -> pd.DataFrame:
    """The provider's cost plus the source's markup (basis points), rounded half-up once; exact
    for any cost (scale_half_up never forms cost x markup)."""
    markup = (
        calls["source"].map(markups).fillna(0).to_numpy(np.int64)
        if len(calls)
        else np.zeros(0, np.int64)
    )
    divisors = {
        currency: micro_to_minor_divisor(currency) for currency in calls["currency"].unique()
    }
    divisor = calls["currency"].map(divisors).to_numpy(np.int64)
    cost = scale_half_up(
        calls["provider_cost_micro"].to_numpy(np.int64), 10_000 + markup, divisor * 10_000
    )
    return calls.assign(
        destination_e164="",
        billed_seconds=calls["duration_seconds"].to_numpy(np.int64),
        cost_minor=cost,
        tariff_version=0,
        tariff_line=0,
        tariff_prefix="",
        tariff_band="",
        pricing="provider",
    )


def compare_with_tariff(
    priced: pd.DataFrame, rates: pd.DataFrame, rules: BillingSettings
) -> pd.DataFrame:
    """Provider-priced calls that have a destination number the tariff also prices: the
    ones whose costs differ by more than the tolerance (percent of the tariff cost)."""
    checkable = priced[(priced["pricing"] == "provider") & (priced["destination_party"] != "")]
    if checkable.empty:
        return checkable.assign(tariff_cost_minor=pd.Series(dtype="int64"))
    unpriced = checkable.drop(
        columns=["destination_e164", "billed_seconds", "cost_minor"]
    ).reset_index(drop=True)
    by_tariff = _price_by_tariff(unpriced, np.ones(len(unpriced), dtype=bool), rates, rules).priced
    both = checkable.reset_index(drop=True).merge(
        by_tariff[["source", "transaction_id", "cost_minor"]].rename(
            columns={"cost_minor": "tariff_cost_minor"}
        ),
        on=["source", "transaction_id"],
    )
    difference = (both["cost_minor"] - both["tariff_cost_minor"]).abs()
    return both[
        difference * 100 > both["tariff_cost_minor"] * rules.price_check_tolerance_percent
    ].reset_index(drop=True)


class RatedCalls(NamedTuple):
    """Calls priced, unbillable (no rate, with the reason) and not billable (failed calls)."""

    priced: pd.DataFrame
    unbillable: pd.DataFrame
    failed: pd.DataFrame


def rate_calls(
    calls: pd.DataFrame,
    rates: pd.DataFrame,
    rules: BillingSettings,
    markups: dict[str, int] | None = None,
    rows: np.ndarray | None = None,
) -> RatedCalls:
    """Split calls into priced, unbillable (no rate) and not billable (status 0, failed).

    Status 1 and 2 are billed; status 3 (completed, delivery failed) is billed and keeps
    its status as the flag. `markups`: source -> basis points added to provider costs.
    `rows`: a mask of the rows of `calls` to rate (default all); the others are in no result.
    """
    rows = np.ones(len(calls), dtype=bool) if rows is None else rows
    failed = (calls["completion_status"] == COMPLETION_FAILED).to_numpy() & rows
    pre_priced = calls["pre_priced"].to_numpy(bool)
    by_tariff, unbillable = _price_by_tariff(calls, rows & ~failed & ~pre_priced, rates, rules)
    by_provider = _price_by_provider(rows_where(calls, rows & ~failed & pre_priced), markups or {})
    priced = (
        pd.concat([by_provider, by_tariff], ignore_index=True) if len(by_provider) else by_tariff
    )
    return RatedCalls(
        priced.astype({"cost_minor": np.int64, "billed_seconds": np.int64}),
        unbillable,
        rows_where(calls, failed),
    )
