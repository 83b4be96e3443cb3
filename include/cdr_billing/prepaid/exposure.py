"""The money at risk between two prepaid runs: what calls can spend before a balance sees them.

Per account the bound is

    2 x max concurrent calls x max call length x average price per minute

- max concurrent calls: the account's configured value, or the most of its calls that
  overlapped in the month's data if that is higher (a call ends at start + duration; one
  ending as another starts does not overlap it);
- max call length: the configured profile maximum when there is one, else the account's
  longest call in the data, else the longest call of any account;
- average price per minute: the account's month of rated calls, cost / billed minutes; an
  account without billed time takes its currency's average over all accounts (none: 0).

The bound is exact integer arithmetic on the unrounded average (cost / billed seconds),
rounded up to the minor unit once; the stored price_per_minute_micro is that average in
micro-units of the currency, rounded up (a display figure: the bound is not computed from it).
Beside the bound, the money of calls rated but not yet debited. An account is above the limit
when bound + undebited exceeds its currency's configured limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection, Engine

from cdr_billing.config import PrepaidSettings
from cdr_billing.money import micro_to_minor_divisor
from cdr_billing.prepaid.accounts import parse_amount
from cdr_billing.schema import balance_entry, call_debit, prepaid_account, prepaid_exposure

MICROS_PER_SECOND = 1_000_000
SECONDS_PER_MINUTE = 60


@dataclass(frozen=True)
class ExposureSettings:
    """What a deployment configures: the profile's longest call (None: from the data) and,
    per currency, the money at risk (minor units) above which an account is reported."""

    max_call_seconds: int | None = None
    limit_minor: Mapping[str, int] = field(default_factory=dict)


def limits_minor(limits: Mapping[str, str]) -> dict[str, int]:
    """The configured limits (prepaid.exposure_limit: currency -> decimal text) in minor units."""
    return {
        currency: parse_amount(text, currency, f"prepaid.exposure_limit.{currency}", False)
        for currency, text in limits.items()
    }


def configured(settings: PrepaidSettings) -> ExposureSettings:
    """The exposure settings of the prepaid section of pipeline.yaml."""
    return ExposureSettings(settings.max_call_seconds, limits_minor(settings.exposure_limit))


@dataclass(frozen=True)
class AccountExposure:
    """One account's money at risk (a prepaid_exposure row without run and time)."""

    account_id: str
    currency: str
    max_concurrent_calls: int
    max_call_seconds: int
    price_per_minute_micro: int
    bound_minor: int
    undebited_minor: int

    @property
    def at_risk_minor(self) -> int:
        return self.bound_minor + self.undebited_minor


@dataclass(frozen=True)
class CurrencyTotal:
    bound_minor: int
    undebited_minor: int


@dataclass(frozen=True)
class ExposureReport:
    """A run's exposure: per account, totals per currency and the accounts above the limit."""

    accounts: tuple[AccountExposure, ...]
    totals: dict[str, CurrencyTotal]
    above_limit: tuple[AccountExposure, ...]


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer division rounding up (both non-negative)."""
    return -(-numerator // denominator)


def observed_concurrency(calls: pd.DataFrame) -> dict[str, int]:
    """Per account, the most calls in progress at one moment (columns account_id, start_utc,
    duration_seconds): a sweep over starts (+1) and ends (-1), ends first at a tie."""
    if calls.empty:
        return {}
    starts = calls["start_utc"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    ends = starts + calls["duration_seconds"].to_numpy(np.int64) * MICROS_PER_SECOND
    sweep = pd.DataFrame(
        {
            "account_id": np.concatenate([calls["account_id"].to_numpy()] * 2),
            "moment": np.concatenate([starts, ends]),
            "change": np.concatenate([np.ones(len(starts)), -np.ones(len(ends))]).astype(np.int64),
        }
    ).sort_values(["account_id", "moment", "change"], kind="stable")
    in_progress = sweep.groupby("account_id", sort=False)["change"].cumsum()
    peaks = in_progress.groupby(sweep["account_id"]).max()
    return {account: int(peak) for account, peak in peaks.items()}


@dataclass(frozen=True)
class _Usage:
    cost_minor: int
    billed_seconds: int


def _usage(calls: pd.DataFrame, key: str) -> dict[str, _Usage]:
    """Summed cost and billed seconds per value of `key` (Python ints: exact)."""
    sums = calls.groupby(key)[["cost_minor", "billed_seconds"]].sum()
    return {
        row.Index: _Usage(int(row.cost_minor), int(row.billed_seconds)) for row in sums.itertuples()
    }


def bound_minor(concurrent: int, call_seconds: int, usage: _Usage) -> int:
    """2 x concurrent x call length x (cost / billed seconds), rounded up to the minor unit."""
    if usage.billed_seconds <= 0:
        return 0
    return ceil_div(2 * concurrent * call_seconds * usage.cost_minor, usage.billed_seconds)


def price_per_minute_micro(usage: _Usage, currency: str) -> int:
    """The average price per minute in micro-units of the currency, rounded up."""
    if usage.billed_seconds <= 0:
        return 0
    micro = usage.cost_minor * micro_to_minor_divisor(currency) * SECONDS_PER_MINUTE
    return ceil_div(micro, usage.billed_seconds)


def _longest_calls(calls: pd.DataFrame) -> dict[str, int]:
    longest = calls.groupby("account_id")["duration_seconds"].max()
    return {account: int(seconds) for account, seconds in longest.items()}


def account_exposures(
    accounts: pd.DataFrame,
    calls: pd.DataFrame,
    undebited: pd.DataFrame,
    settings: ExposureSettings,
) -> list[AccountExposure]:
    """Each account's exposure. accounts: account_id, currency, max_concurrent_calls; calls
    (the month's rated calls): account_id, start_utc, duration_seconds, billed_seconds,
    cost_minor, currency; undebited (rated, not yet debited): account_id, cost_minor."""
    observed = observed_concurrency(calls)
    longest = _longest_calls(calls)
    longest_anywhere = max(longest.values(), default=0)
    by_account, by_currency = _usage(calls, "account_id"), _usage(calls, "currency")
    pending = undebited.groupby("account_id")["cost_minor"].sum()
    result = []
    for account in accounts.itertuples(index=False):
        own = by_account.get(account.account_id, _Usage(0, 0))
        usage = own if own.billed_seconds > 0 else by_currency.get(account.currency, _Usage(0, 0))
        concurrent = max(int(account.max_concurrent_calls), observed.get(account.account_id, 0))
        call_seconds = (
            settings.max_call_seconds
            if settings.max_call_seconds is not None
            else longest.get(account.account_id, longest_anywhere)
        )
        result.append(
            AccountExposure(
                account_id=account.account_id,
                currency=account.currency,
                max_concurrent_calls=concurrent,
                max_call_seconds=call_seconds,
                price_per_minute_micro=price_per_minute_micro(usage, account.currency),
                bound_minor=bound_minor(concurrent, call_seconds, usage),
                undebited_minor=int(pending.get(account.account_id, 0)),
            )
        )
    return result


def summarise(exposures: list[AccountExposure], settings: ExposureSettings) -> ExposureReport:
    """Totals per currency and the accounts whose money at risk exceeds their currency's limit."""
    totals: dict[str, CurrencyTotal] = {}
    for exposure in exposures:
        total = totals.get(exposure.currency, CurrencyTotal(0, 0))
        totals[exposure.currency] = CurrencyTotal(
            total.bound_minor + exposure.bound_minor,
            total.undebited_minor + exposure.undebited_minor,
        )
    above = tuple(
        exposure
        for exposure in exposures
        if exposure.currency in settings.limit_minor
        and exposure.at_risk_minor > settings.limit_minor[exposure.currency]
    )
    return ExposureReport(tuple(exposures), totals, above)


def active_accounts(conn: Connection) -> pd.DataFrame:
    """The active prepaid accounts: account_id, currency, max_concurrent_calls."""
    columns = ["account_id", "currency", "max_concurrent_calls"]
    rows = conn.execute(
        select(*(prepaid_account.c[name] for name in columns))
        .where(prepaid_account.c.active)
        .order_by(prepaid_account.c.account_id)
    ).all()
    return pd.DataFrame(rows, columns=columns)


def debited_calls(conn: Connection, start: datetime, end: datetime) -> pd.DataFrame:
    """The current debits of calls that started in [start, end), as rated calls: a debit keeps
    billed seconds, not the duration, so billed seconds stand for it (a call's duration is at
    most its billed seconds: overlaps and lengths are over-, never underestimated)."""
    rows = conn.execute(
        select(
            call_debit.c.account_id,
            balance_entry.c.call_start,
            balance_entry.c.billed_seconds,
            call_debit.c.cost_minor,
            balance_entry.c.currency,
        )
        .join(balance_entry, balance_entry.c.entry_id == call_debit.c.entry_id)
        .where(balance_entry.c.call_start >= start, balance_entry.c.call_start < end)
    ).all()
    frame = pd.DataFrame(
        rows, columns=["account_id", "start_utc", "billed_seconds", "cost_minor", "currency"]
    )
    return frame.assign(
        start_utc=pd.to_datetime(frame["start_utc"], utc=True),
        billed_seconds=frame["billed_seconds"].fillna(0).astype("int64"),
        duration_seconds=frame["billed_seconds"].fillna(0).astype("int64"),
    )


def write_exposure(
    engine: Engine, run_id: str, exposures: list[AccountExposure], computed_at: datetime
) -> None:
    """Store a run's exposure rows; writing the run again replaces its rows (idempotent)."""
    rows = [
        {
            "run_id": run_id,
            "computed_at": computed_at,
            **{name: getattr(e, name) for name in AccountExposure.__dataclass_fields__},
        }
        for e in exposures
    ]
    with engine.begin() as conn:
        conn.execute(delete(prepaid_exposure).where(prepaid_exposure.c.run_id == run_id))
        if rows:
            conn.execute(insert(prepaid_exposure), rows)


def run_exposure(
    engine: Engine,
    run_id: str,
    month_start: datetime,
    month_end: datetime,
    undebited: pd.DataFrame,
    settings: ExposureSettings,
    computed_at: datetime,
) -> ExposureReport:
    """A prepaid run's exposure from the month's debited calls and the run's undebited ones,
    stored under the run id."""
    with engine.connect() as conn:
        accounts = active_accounts(conn)
        calls = debited_calls(conn, month_start, month_end)
    exposures = account_exposures(accounts, calls, undebited, settings)
    write_exposure(engine, run_id, exposures, computed_at)
    return summarise(exposures, settings)
