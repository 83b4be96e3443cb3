"""Hand-computed rating cases (the golden table) and properties that must hold for any call."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdr_billing.aggregate import aggregate_lines, aggregate_users
from cdr_billing.config import BillingSettings
from cdr_billing.rate import rate_calls
from cdr_billing.tariff import read_tariff_file

RULES = BillingSettings("billing_db", "Europe/Stockholm", "46", "0", "00", 86400, 0, 0.01)
HEADER = (
    "prefix,destination,price_per_minute,connection_fee,first_increment,next_increment,"
    "minimum_charge,currency,valid_from,valid_to,band,weekdays,start_hour,end_hour\n"
)
VERSION_1 = HEADER + (
    "46,Sweden fixed,0.0200,0,60,60,0,EUR,,,,,,\n"
    "467,Sweden mobile,0.0900,0.0500,60,60,0.10,EUR,,2026-10-15,,,,\n"
    "467,Sweden mobile,0.0700,0.0500,60,60,0.10,EUR,2026-10-15,,,,,\n"
    "468,Stockholm peak,0.0300,0,30,6,0,EUR,,,peak,12345,8,18\n"
    "468,Stockholm off-peak,0.0100,0,30,6,0,EUR,,,off-peak,12345,0,8\n"
    "468,Stockholm evening,0.0100,0,30,6,0,EUR,,,off-peak,12345,18,24\n"
    "468,Stockholm weekend,0.0100,0,30,6,0,EUR,,,weekend,67,0,24\n"
    "49,Germany off-peak,0.0100,0,60,60,0,EUR,,,off-peak,,18,24\n"
    "49,Germany peak,0.0500,0,60,60,0,EUR,,,peak,,0,18\n"
    "44,United Kingdom,0.0400,0,1,1,0,EUR,,,,,,\n"
    "447,United Kingdom mobile,0.1200,0,1,1,0,EUR,,,,,,\n"
    "358,Finland,0.0500,0,60,60,0,EUR,,2026-10-10,,,,\n"
)
VERSION_2 = HEADER + "46,Sweden fixed (new price),0.0300,0,60,60,0,EUR,,,,,,\n"

# (case, number, local start, seconds, cents): worked out by hand from VERSION_1.
GOLDEN = [
    ("0 s to a fixed line", "+4631123456", "2026-10-05 10:00:00", 0, 0),
    ("1 s bills a whole first minute", "+4631123456", "2026-10-05 10:00:00", 1, 2),
    ("59 s", "+4631123456", "2026-10-05 10:00:00", 59, 2),
    ("60 s", "+4631123456", "2026-10-05 10:00:00", 60, 2),
    ("61 s bills two minutes", "+4631123456", "2026-10-05 10:00:00", 61, 4),
    (
        "30/6: 31 s bills 36 s at peak, 0.018 rounds to 0.02",
        "+468123456",
        "2026-10-05 10:00:00",
        31,
        2,
    ),
    (
        "30/6: 37 s bills 42 s off-peak, 0.007 rounds to 0.01",
        "+468123456",
        "2026-10-05 07:00:00",
        37,
        1,
    ),
    ("connection fee below the minimum charge", "+46701234567", "2026-10-10 12:00:00", 0, 10),
    ("fee + two minutes before the price change", "+46701234567", "2026-10-10 12:00:00", 61, 23),
    (
        "the same call after the mid-month price change",
        "+46701234567",
        "2026-10-20 12:00:00",
        61,
        19,
    ),
    (
        "across midnight into peak: the start's band applies",
        "+4930123456",
        "2026-10-06 23:58:00",
        300,
        5,
    ),
    ("peak band from midnight", "+4930123456", "2026-10-07 00:02:00", 300, 25),
    ("weekend band on a Saturday", "+468123456", "2026-10-10 10:00:00", 60, 1),
    (
        "a longer, dearer prefix beats a shorter cheaper one",
        "+447700900123",
        "2026-10-05 10:00:00",
        30,
        6,
    ),
    ("national format", "0701234567", "2026-10-10 12:00:00", 61, 23),
    ("international format with 00", "0046701234567", "2026-10-10 12:00:00", 61, 23),
]


def tariff_rates(tmp_path, *versions: str) -> pd.DataFrame:
    frames = []
    for number, text in enumerate(versions, start=1):
        path = tmp_path / f"tariff_v{number}.csv"
        path.write_text(text)
        frames.append(read_tariff_file(path, RULES).assign(version_id=number))
    return pd.concat(frames, ignore_index=True)


def calls(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    local = pd.to_datetime([start for _, start, _ in rows])
    starts = local.tz_localize(RULES.timezone, ambiguous=np.ones(len(rows), bool)).tz_convert("UTC")
    return pd.DataFrame(
        {
            "transaction_id": [f"t{n}" for n in range(len(rows))],
            "user_id": "u1",
            "completion_status": 1,
            "duration_seconds": [seconds for _, _, seconds in rows],
            "destination_party": [number for number, _, _ in rows],
            "pre_priced": False,
            "provider_cost_micro": pd.array([pd.NA] * len(rows), dtype="Int64"),
            "currency": "",
            "source_file": "f.csv",
            "source": "carrier",
            "source_row": range(2, len(rows) + 2),
            "start_utc": starts,
        }
    )


@pytest.mark.parametrize(
    ("case", "number", "start", "seconds", "cents"), GOLDEN, ids=[g[0] for g in GOLDEN]
)
def test_golden_case(tmp_path, case, number, start, seconds, cents):
    priced, unbillable, _ = rate_calls(
        calls([(number, start, seconds)]), tariff_rates(tmp_path, VERSION_1), RULES
    )
    assert unbillable.empty, case
    assert priced["cost_minor"].tolist() == [cents], case


def test_every_priced_call_names_the_tariff_row_and_version(tmp_path):
    priced, _, _ = rate_calls(
        calls([("+46701234567", "2026-10-20 12:00:00", 61)]),
        tariff_rates(tmp_path, VERSION_1),
        RULES,
    )
    assert priced[
        ["tariff_version", "tariff_line", "tariff_prefix", "tariff_band"]
    ].values.tolist() == [[1, 4, "467", "all"]]


def test_the_newest_version_wins(tmp_path):
    rates = tariff_rates(tmp_path, VERSION_1, VERSION_2)
    priced, _, _ = rate_calls(calls([("+4631123456", "2026-10-05 10:00:00", 61)]), rates, RULES)
    assert priced[["cost_minor", "tariff_version"]].values.tolist() == [[6, 2]]  # 0.03 x 2 minutes


def test_unknown_ranges_and_expired_rates_are_unbillable_with_their_range(tmp_path):
    rows = [
        ("+88216000123", "2026-10-05 10:00:00", 60),
        ("+358401234567", "2026-10-20 10:00:00", 60),
    ]
    priced, unbillable, _ = rate_calls(calls(rows), tariff_rates(tmp_path, VERSION_1), RULES)
    assert priced.empty
    assert unbillable[["reason_code", "number_range"]].values.tolist() == [
        ["NO_TARIFF_PREFIX", "88216"],
        ["NO_RATE_AT_CALL_TIME", "358"],
    ]


NUMBERS = st.sampled_from(
    ["+4631123456", "+468123456", "+46701234567", "+4930123456", "+447700900123"]
)
OCTOBER = st.datetimes(
    min_value=pd.Timestamp("2026-10-01 01:00").to_pydatetime(),
    max_value=pd.Timestamp("2026-10-30").to_pydatetime(),
)


@given(first=st.integers(0, 7200), extra=st.integers(0, 7200), number=NUMBERS, start=OCTOBER)
def test_cost_never_falls_as_duration_grows(tmp_path_factory, first, extra, number, start):
    rates = tariff_rates(tmp_path_factory.mktemp("t"), VERSION_1)
    moment = start.strftime("%Y-%m-%d %H:%M:%S")
    priced, _, _ = rate_calls(
        calls([(number, moment, first), (number, moment, first + extra)]), rates, RULES
    )
    shorter, longer = priced["cost_minor"].tolist()
    assert shorter <= longer


@given(
    st.lists(
        st.tuples(st.sampled_from(["C1", "C2", "C3"]), st.integers(0, 5400), NUMBERS),
        min_size=1,
        max_size=40,
    )
)
def test_the_month_total_is_the_sum_of_its_calls(tmp_path_factory, rows):
    rates = tariff_rates(tmp_path_factory.mktemp("t"), VERSION_1)
    frame = calls([(number, "2026-10-12 11:00:00", seconds) for _, seconds, number in rows])
    priced, _, _ = rate_calls(frame, rates, RULES)
    priced = priced.assign(customer_id=[customer for customer, _, _ in rows], sequence_number="1")
    lines = aggregate_lines(aggregate_users(priced))
    assert lines["total_minor"].sum() == sum(priced["cost_minor"])
    assert lines["call_count"].sum() == len(rows)


def reference_match(number: str, start: pd.Timestamp, rates: pd.DataFrame) -> int:
    """The rule, row by row: longest prefix with a rate valid at the start, then newest version."""
    local = start.tz_convert(RULES.timezone)
    best = (-1, -1, -1)
    for position, rate in enumerate(rates.itertuples()):
        valid = rate.valid_from <= start and (pd.isna(rate.valid_to) or start < rate.valid_to)
        in_band = (
            rate.weekday_mask & (1 << local.day_of_week)
            and rate.start_hour <= local.hour < rate.end_hour
        )
        if number.startswith(rate.prefix) and valid and in_band:
            best = max(best, (len(rate.prefix), rate.version_id, position))
    return best[2]


RANDOM_RATES = st.lists(
    st.tuples(
        st.text("1234", min_size=1, max_size=4),  # few digits: prefixes nest a lot
        st.sampled_from([("", ""), ("", "2026-10-15"), ("2026-10-15", "")]),
        st.sampled_from([("", "", ""), ("12345", "8", "18"), ("67", "", "")]),
        st.integers(1, 3),
    ),
    min_size=1,
    max_size=25,
)


# The only pairs of sampled validities or bands that share no moment: rows of one prefix that
# differ in one of them do not overlap; any other two would, and a file with them is refused.
DISJOINT = [{("", "2026-10-15"), ("2026-10-15", "")}, {("12345", "8", "18"), ("67", "", "")}]


def without_overlaps(rows: list[tuple[str, tuple, tuple]]) -> list[tuple[str, tuple, tuple]]:
    """The rows that overlap no earlier kept row of their prefix, as one file may hold."""
    kept: list[tuple[str, tuple, tuple]] = []
    for prefix, validity, band in rows:
        if all(
            p != prefix or {validity, v} in DISJOINT or {band, b} in DISJOINT for p, v, b in kept
        ):
            kept.append((prefix, validity, band))
    return kept


@given(
    rates=RANDOM_RATES,
    numbers=st.lists(st.text("1234", min_size=1, max_size=7), min_size=1, max_size=30),
    start=OCTOBER,
)
def test_the_interval_matcher_agrees_with_the_rule_row_by_row(
    tmp_path_factory, rates, numbers, start
):
    from cdr_billing.rate import match_rates

    frames = []
    for version in {v for *_, v in rates}:
        rows = without_overlaps(
            [(prefix, validity, band) for prefix, validity, band, v in rates if v == version]
        )
        lines = [
            f"{p},d,0.01,0,60,60,0,EUR,{vf},{vt},b,{days},{sh},{eh}\n"
            for p, (vf, vt), (days, sh, eh) in rows
        ]
        text = HEADER + "".join(lines)
        path = tmp_path_factory.mktemp("t") / "tariff.csv"
        path.write_text(text)
        frames.append(read_tariff_file(path, RULES).assign(version_id=version))
    table = pd.concat(frames, ignore_index=True)
    moment = pd.Timestamp(start).tz_localize(RULES.timezone, ambiguous=True).tz_convert("UTC")
    found = match_rates(
        pd.Series(numbers), pd.Series([moment] * len(numbers)), table, RULES.timezone
    )
    assert found.tolist() == [reference_match(n, moment, table) for n in numbers]
