"""Price calls: the provider's own cost, or the tariff's longest matching prefix.

Rule for tariff-priced calls (status 1, 2 or 3): billed seconds are the duration rounded
up to the first increment, then to the next increments (a 0 s call bills 0 s);
cost = connection fee + price per minute x billed seconds / 60, at least the minimum
charge, rounded half-up to the minor unit once per call. Integer arithmetic on
micro-units, so no float ever touches money.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cdr_billing.canonical import COMPLETION_FAILED
from cdr_billing.config import BillingSettings
from cdr_billing.money import MoneyError, micro_to_minor_divisor, to_micro_units

TARIFF_COLUMNS = (
    "prefix",
    "destination",
    "price_per_minute",
    "connection_fee",
    "first_increment",
    "next_increment",
    "minimum_charge",
    "currency",
)
MONEY_COLUMNS = {"price_per_minute": "price_micro", "connection_fee": "fee_micro", "minimum_charge": "minimum_micro"}
NO_TARIFF_PREFIX = "NO_TARIFF_PREFIX"


class TariffError(ValueError):
    """The tariff file is unusable; the message names the file and row."""


def _tariff_row_error(path: Path, line: int, reason: str) -> TariffError:
    return TariffError(f"{path.name} line {line}: {reason}")


def load_tariff(path: Path) -> pd.DataFrame:
    """Read a tariff CSV into exact integer columns (prices in micro-units)."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in TARIFF_COLUMNS if c not in raw.columns]
    if missing:
        raise TariffError(f"{path.name}: missing columns {missing}")
    tariff = pd.DataFrame(
        {
            "prefix": raw["prefix"].str.strip().str.lstrip("+"),
            "destination": raw["destination"],
            "currency": raw["currency"].str.strip().str.upper(),
        }
    )
    tariff["tariff_line"] = np.arange(len(raw)) + 2
    for line, prefix in zip(tariff["tariff_line"], tariff["prefix"], strict=True):
        if not prefix.isdigit():
            raise _tariff_row_error(path, line, f"prefix {prefix!r} is not digits")
    for column, micro_column in MONEY_COLUMNS.items():
        values = []
        for line, text in zip(tariff["tariff_line"], raw[column], strict=True):
            try:
                values.append(to_micro_units(text or "0"))
            except MoneyError as exc:
                raise _tariff_row_error(path, line, f"{column}: {exc}") from exc
        tariff[micro_column] = np.array(values, dtype=np.int64)
    for column in ("first_increment", "next_increment"):
        tariff[column] = pd.to_numeric(raw[column], errors="coerce")
        bad = tariff[tariff[column].isna() | (tariff[column] < 1)]
        if len(bad):
            raise _tariff_row_error(path, int(bad["tariff_line"].iloc[0]), f"{column} must be a whole number >= 1")
        tariff[column] = tariff[column].astype(np.int64)
    repeated = tariff[tariff["prefix"].duplicated(keep=False)]
    if len(repeated):
        raise _tariff_row_error(
            path, int(repeated["tariff_line"].iloc[-1]), f"prefix {repeated['prefix'].iloc[0]} is listed twice"
        )
    return tariff


def normalise_numbers(numbers: pd.Series, rules: BillingSettings) -> pd.Series:
    """Return numbers as E.164 digits without "+": +46.., 0046.. and 0.. become 46.."""
    digits = numbers.str.replace(r"[\s\-().]", "", regex=True)
    plus = digits.str.startswith("+")
    international = ~plus & digits.str.startswith(rules.international_prefix)
    national = ~plus & ~international & digits.str.startswith(rules.national_prefix)
    normalised = digits.str.lstrip("+")
    normalised = normalised.mask(international, digits.str[len(rules.international_prefix) :])
    return normalised.mask(national, rules.country_code + digits.str[len(rules.national_prefix) :])


def match_longest_prefix(numbers: pd.Series, prefixes: pd.Series) -> np.ndarray:
    """Return, per number, the position of its longest matching prefix, or -1."""
    lookup = {prefix: position for position, prefix in enumerate(prefixes)}
    found = np.full(len(numbers), -1, dtype=np.int64)
    values = numbers.reset_index(drop=True)
    for length in sorted({len(p) for p in prefixes}, reverse=True):
        open_rows = found < 0
        if not open_rows.any():
            break
        hits = values[open_rows].str[:length].map(lookup)
        hit_rows = hits.dropna()
        found[hit_rows.index.to_numpy()] = hit_rows.to_numpy(dtype=np.int64)
    return found


def billed_seconds(duration: np.ndarray, first: np.ndarray, following: np.ndarray) -> np.ndarray:
    """Round durations up to the first increment, then to whole next increments."""
    beyond_first = np.maximum(duration - first, 0)
    steps = -(-beyond_first // following)
    return np.where(duration > 0, first + steps * following, 0)


def tariff_cost_minor(
    seconds: np.ndarray, price_micro: np.ndarray, fee_micro: np.ndarray, minimum_micro: np.ndarray, divisor: np.ndarray
) -> np.ndarray:
    """Cost in minor units: fee + price x seconds / 60, at least the minimum, half-up."""
    sixtieths = np.maximum(fee_micro * 60 + price_micro * seconds, minimum_micro * 60)
    quantum = divisor * 60
    return (sixtieths + quantum // 2) // quantum


def _price_by_tariff(calls: pd.DataFrame, tariff: pd.DataFrame, rules: BillingSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    calls = calls.assign(destination_e164=normalise_numbers(calls["destination_party"], rules))
    position = match_longest_prefix(calls["destination_e164"], tariff["prefix"])
    unbillable = calls[position < 0].assign(reason_code=NO_TARIFF_PREFIX)
    matched = calls[position >= 0].reset_index(drop=True)
    rates = tariff.iloc[position[position >= 0]].reset_index(drop=True)
    seconds = billed_seconds(
        matched["duration_seconds"].to_numpy(np.int64), rates["first_increment"].to_numpy(), rates["next_increment"].to_numpy()
    )
    divisor = rates["currency"].map(micro_to_minor_divisor).to_numpy(np.int64)
    cost = tariff_cost_minor(
        seconds, rates["price_micro"].to_numpy(), rates["fee_micro"].to_numpy(), rates["minimum_micro"].to_numpy(), divisor
    )
    priced = matched.assign(
        billed_seconds=seconds,
        cost_minor=cost,
        currency=rates["currency"].to_numpy(),
        tariff_prefix=rates["prefix"].to_numpy(),
        tariff_line=rates["tariff_line"].to_numpy(),
        pricing="tariff",
    )
    return priced, unbillable.reset_index(drop=True)


def _price_by_provider(calls: pd.DataFrame) -> pd.DataFrame:
    return calls.assign(
        destination_e164="",
        billed_seconds=calls["duration_seconds"].to_numpy(np.int64),
        cost_minor=calls["provider_cost_minor"].astype(np.int64),
        tariff_prefix="",
        tariff_line=0,
        pricing="provider",
    )


def rate_calls(
    calls: pd.DataFrame, tariff: pd.DataFrame, rules: BillingSettings
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split calls into priced, unbillable (no tariff prefix) and not billable (failed)."""
    failed = calls["completion_status"] == COMPLETION_FAILED
    billable = calls[~failed]
    by_tariff, unbillable = _price_by_tariff(billable[~billable["pre_priced"]], tariff, rules)
    by_provider = _price_by_provider(billable[billable["pre_priced"]])
    priced = pd.concat([by_provider, by_tariff], ignore_index=True)
    priced["cost_minor"] = priced["cost_minor"].astype(np.int64)
    priced["billed_seconds"] = priced["billed_seconds"].astype(np.int64)
    return priced, unbillable, calls[failed].reset_index(drop=True)
