"""The money at risk between two prepaid runs, against hand-computed figures."""

from __future__ import annotations

import pandas as pd

from cdr_billing.prepaid.exposure import (
    AccountExposure,
    CurrencyTotal,
    ExposureSettings,
    account_exposures,
    observed_concurrency,
    summarise,
)

ACCOUNTS = pd.DataFrame(
    [("A", "EUR", 1), ("B", "EUR", 3), ("C", "EUR", 1), ("D", "SEK", 2)],
    columns=["account_id", "currency", "max_concurrent_calls"],
)


def calls(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows,
        columns=["account_id", "start", "duration_seconds", "billed_seconds", "cost_minor"],
    )
    return frame.assign(
        start_utc=pd.to_datetime("2026-11-03 " + frame.pop("start"), utc=True), currency="EUR"
    )


MONTH = calls(
    [
        ("A", "10:00:00", 600, 600, 120),
        ("A", "10:05:00", 300, 300, 90),  # overlaps the first: 2 at once
        ("A", "10:10:00", 60, 60, 31),  # starts as both end: not a third
        ("B", "11:00:00", 100, 120, 7),
    ]
)
UNDEBITED = pd.DataFrame([("A", 50), ("A", 25), ("C", 10)], columns=["account_id", "cost_minor"])


def by_id(exposures: list[AccountExposure]) -> dict[str, AccountExposure]:
    return {e.account_id: e for e in exposures}


def test_each_accounts_bound_by_hand():
    found = by_id(account_exposures(ACCOUNTS, MONTH, UNDEBITED, ExposureSettings()))
    # A: 2 observed > 1 configured; longest 600 s; 241 c over 960 s:
    # 2 x 2 x 600 x 241 / 960 = 602.5 -> 603; 241 x 10,000 x 60 / 960 = 150,625 micro a minute
    assert found["A"] == AccountExposure("A", "EUR", 2, 600, 150_625, 603, 75)
    # B: 3 configured; 100 s; 7 c over 120 s: 2 x 3 x 100 x 7 / 120 = 35; 35,000 micro
    assert found["B"] == AccountExposure("B", "EUR", 3, 100, 35_000, 35, 0)
    # C, no calls: the longest call anywhere (600 s) at the EUR average, 248 c over 1080 s:
    # 2 x 1 x 600 x 248 / 1080 = 275.6 -> 276; 248 x 600,000 / 1080 = 137,777.8 -> 137,778
    assert found["C"] == AccountExposure("C", "EUR", 1, 600, 137_778, 276, 10)
    # D: no SEK call anywhere: no price, no bound
    assert found["D"] == AccountExposure("D", "SEK", 2, 600, 0, 0, 0)


def test_a_configured_longest_call_replaces_the_data():
    settings = ExposureSettings(max_call_seconds=3600)
    found = by_id(account_exposures(ACCOUNTS, MONTH, UNDEBITED, settings))
    # 2 x 2 x 3600 x 241 / 960 = 3615 exactly
    assert (found["A"].max_call_seconds, found["A"].bound_minor) == (3600, 3615)


def test_totals_per_currency_and_accounts_above_the_limit():
    settings = ExposureSettings(limit_minor={"EUR": 600})
    report = summarise(account_exposures(ACCOUNTS, MONTH, UNDEBITED, settings), settings)
    assert report.totals == {"EUR": CurrencyTotal(914, 85), "SEK": CurrencyTotal(0, 0)}
    # A: 603 + 75 = 678 > 600; C: 276 + 10 and B: 35 are not; SEK has no limit
    assert [e.account_id for e in report.above_limit] == ["A"]


def test_observed_concurrency_counts_overlaps_not_touching_calls():
    overlapping = calls(
        [
            ("X", "09:00:00", 120, 120, 0),
            ("X", "09:01:00", 120, 120, 0),
            ("X", "09:01:30", 10, 10, 0),  # three at once at 09:01:30
            ("X", "09:03:00", 60, 60, 0),  # the second ends as it starts
            ("Y", "09:00:00", 60, 60, 0),
            ("Y", "09:01:00", 60, 60, 0),  # back to back: one at a time
        ]
    )
    assert observed_concurrency(overlapping) == {"X": 3, "Y": 1}


def test_no_calls_no_exposure_but_the_undebited_money():
    empty = calls([])
    found = by_id(account_exposures(ACCOUNTS, empty, UNDEBITED, ExposureSettings()))
    assert (found["A"].bound_minor, found["A"].undebited_minor) == (0, 75)
    assert found["A"].max_call_seconds == 0
