"""Every CDR value that cannot be typed by its column's grammar is a quarantined row with a
reason; costs in every ISO 4217 currency are exact at any size."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pandas as pd
import pytest

from cdr_billing.aggregate import aggregate_lines, aggregate_users, call_totals, revenue_share
from cdr_billing.canonical import TEXT_FIELDS
from cdr_billing.config import BillingSettings, SourceProfile
from cdr_billing.dedupe import combine_partial_calls
from cdr_billing.money import MoneyOverflowError
from cdr_billing.months import BillingMonth
from cdr_billing.rate import rate_calls
from cdr_billing.report import credits
from cdr_billing.validate import REASONS, check_rows, parse_timestamps

RULES = BillingSettings("billing_db", "Europe/Stockholm", "46", "0", "00", 86400, 0, 0.01)
CARRIER = SourceProfile(name="carrier", format="csv", columns={}, priced=False, timezone="UTC")
PRICED = SourceProfile(name="bridge", format="xlsx", columns={}, priced=True, timezone="UTC")
MONTH = BillingMonth(2026, 10)


def _rows(profile: SourceProfile, column: str, values: list[str]) -> pd.DataFrame:
    base = dict.fromkeys(TEXT_FIELDS, "")
    base.update(
        transaction_id="t",
        user_id="u1",
        start_of_usage="2026-10-10T10:00:00Z",
        duration_of_usage="60",
        completion_status="1",
        destination_party="+46701234567",
        provider_cost="1.00",
        currency="EUR",
        source_file="f.csv",
        source="carrier",
    )
    rows = [
        {**base, column: value, "transaction_id": f"t{n}", "source_row": n + 2}
        for n, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


def _outcomes(profile: SourceProfile, column: str, values: list[str]) -> dict[str, str]:
    """value -> "" when accepted, else its first reason code."""
    checked = check_rows(_rows(profile, column, values), profile, MONTH, RULES)
    reasons = dict(
        zip(checked.quarantined["source_row"], checked.quarantined["reason_code"], strict=True)
    )
    return {value: reasons.get(n + 2, "") for n, value in enumerate(values)}


def test_durations_follow_their_grammar():
    outcomes = _outcomes(
        CARRIER,
        "duration_of_usage",
        [
            "60",
            "60.0",
            "0",
            "1e3",
            "inf",
            "nan",
            "1e400",
            "-5",
            "12345678901234567890",
            "86401",
            "60.5",
            "+60",
            "6 0",
            "",
        ],
    )
    assert outcomes == {
        "60": "",
        "60.0": "",
        "0": "",
        "1e3": "BAD_DURATION",
        "inf": "BAD_DURATION",
        "nan": "BAD_DURATION",
        "1e400": "BAD_DURATION",
        "-5": "DURATION_OUT_OF_RANGE",
        "12345678901234567890": "DURATION_OUT_OF_RANGE",
        "86401": "DURATION_OUT_OF_RANGE",
        "60.5": "BAD_DURATION",
        "+60": "BAD_DURATION",
        "6 0": "BAD_DURATION",
        "": "BAD_DURATION",
    }


def test_hms_durations_of_any_size_are_typed_or_out_of_range():
    profile = SourceProfile(
        name="pbx", format="csv", columns={}, priced=False, duration_unit="hms", timezone="UTC"
    )
    outcomes = _outcomes(
        profile,
        "duration_of_usage",
        [
            "0:01:00",
            "24:00:00",
            "24:00:01",
            "99999999999999999999:00:00",
            "1:60:00",
            "1e3",
            "-0:00:01",
        ],
    )
    assert outcomes == {
        "0:01:00": "",
        "24:00:00": "",
        "24:00:01": "DURATION_OUT_OF_RANGE",
        "99999999999999999999:00:00": "DURATION_OUT_OF_RANGE",
        "1:60:00": "BAD_DURATION",
        "1e3": "BAD_DURATION",
        "-0:00:01": "DURATION_OUT_OF_RANGE",
    }


def test_statuses_revenue_shares_and_part_numbers_follow_their_grammar():
    statuses = _outcomes(
        CARRIER, "completion_status", ["0", "3", "1.0", "1e0", "4", "-1", "1.5", "01"]
    )
    assert statuses == {
        "0": "",
        "3": "",
        "1.0": "",
        "1e0": "BAD_COMPLETION_STATUS",
        "4": "BAD_COMPLETION_STATUS",
        "-1": "BAD_COMPLETION_STATUS",
        "1.5": "BAD_COMPLETION_STATUS",
        "01": "BAD_COMPLETION_STATUS",
    }
    shares = _outcomes(
        CARRIER,
        "revenue_share_percentage",
        ["12.5", "", "100", "1e1", "-5", "100.01", "12.345", "inf"],
    )
    assert shares == {
        "12.5": "",
        "": "",
        "100": "",
        "1e1": "BAD_REVENUE_SHARE",
        "-5": "BAD_REVENUE_SHARE",
        "100.01": "BAD_REVENUE_SHARE",
        "12.345": "BAD_REVENUE_SHARE",
        "inf": "BAD_REVENUE_SHARE",
    }
    parts = _outcomes(CARRIER, "transaction_part_number", ["1", "", "10", "1.0", "a", "-1"])
    assert parts == {
        "1": "",
        "": "",
        "10": "",
        "1.0": "BAD_PART_NUMBER",
        "a": "BAD_PART_NUMBER",
        "-1": "BAD_PART_NUMBER",
    }


def test_costs_follow_their_grammar_and_ceiling():
    outcomes = _outcomes(
        PRICED,
        "provider_cost",
        [
            "1.25",
            "0",
            "1e3",
            "inf",
            "nan",
            "-5",
            "9300000000000",
            "1000000000",
            "1000000000.000001",
            "1.1234567",
            "1,5",
            "",
        ],
    )
    assert outcomes == {
        "1.25": "",
        "0": "",
        "1e3": "BAD_COST",
        "inf": "BAD_COST",
        "nan": "BAD_COST",
        "-5": "NEGATIVE_COST",
        "9300000000000": "COST_OUT_OF_RANGE",
        "1000000000": "",
        "1000000000.000001": "COST_OUT_OF_RANGE",
        "1.1234567": "BAD_COST",
        "1,5": "BAD_COST",
        "": "BAD_COST",
    }


def test_a_comma_decimal_file_refuses_points():
    profile = SourceProfile(
        name="b", format="csv", columns={}, priced=True, decimal=",", timezone="UTC"
    )
    assert _outcomes(profile, "provider_cost", ["1,5", "1.500", "1.500,00"]) == {
        "1,5": "",
        "1.500": "BAD_COST",
        "1.500,00": "BAD_COST",
    }


def test_credits_are_accepted_only_where_the_profile_allows_them():
    profile = SourceProfile(
        name="b", format="xlsx", columns={}, priced=True, allow_credits=True, timezone="UTC"
    )
    assert _outcomes(profile, "provider_cost", ["-5", "-1000000001"]) == {
        "-5": "",
        "-1000000001": "COST_OUT_OF_RANGE",
    }


def test_currencies_are_iso_4217_codes_in_any_case():
    outcomes = _outcomes(
        PRICED, "currency", ["EUR", "clp", "JOD", "EURO", "ABC", "", "XAU", "XTS", "E1R"]
    )
    assert outcomes == {
        "EUR": "",
        "clp": "",
        "JOD": "",
        "EURO": "BAD_CURRENCY",
        "ABC": "BAD_CURRENCY",
        "": "BAD_CURRENCY",
        "XAU": "BAD_CURRENCY",
        "XTS": "BAD_CURRENCY",
        "E1R": "BAD_CURRENCY",
    }


# The tariff prices none of these pre-priced calls.
ONE_RATE = pd.DataFrame(
    {
        "prefix": ["1"],
        "valid_from": [pd.Timestamp("1970-01-01", tz="UTC")],
        "valid_to": [pd.NaT],
        "currency": ["EUR"],
        "band": ["all"],
        "version_id": [1],
        "line": [2],
        "weekday_mask": [127],
        "start_hour": [0],
        "end_hour": [24],
        "price_micro": [1],
        "fee_micro": [0],
        "minimum_micro": [0],
        "first_increment": [1],
        "next_increment": [1],
    }
)


def _reference_cost(cost: str, markup_percent: str, decimals: int) -> Decimal:
    """The documented rule, in Decimal: cost x (1 + markup), half up to the minor unit once."""
    exact = Decimal(cost) * (1 + Decimal(markup_percent) / 100)
    return exact.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


@pytest.mark.parametrize(
    ("cost", "currency", "decimals"),
    [
        ("1500", "CLP", 0),
        ("0.0125", "JOD", 3),
        ("900000000", "EUR", 2),
        ("999999999.999999", "KWD", 3),
        ("-1000000000", "SEK", 2),
        ("0.005", "EUR", 2),
        ("1000000000", "CLF", 4),
        ("1.5", "JPY", 0),
    ],
)
def test_provider_costs_with_markup_are_exact_in_every_currency_and_size(cost, currency, decimals):
    profile = SourceProfile(
        name="b", format="xlsx", columns={}, priced=True, allow_credits=True, timezone="UTC"
    )
    checked = check_rows(
        _rows(profile, "provider_cost", [cost]).assign(currency=currency), profile, MONTH, RULES
    )
    assert checked.quarantined.empty
    priced, _, _ = rate_calls(checked.accepted, ONE_RATE, RULES, markups={"carrier": 1250})
    assert priced["cost_minor"].tolist() == [
        int(_reference_cost(cost, "12.5", decimals).scaleb(decimals))
    ]


def test_a_session_is_headed_by_its_earliest_part_by_number_not_text():
    rows = _rows(CARRIER, "transaction_part_number", ["10", "9", "11"]).assign(
        session_id="S", completion_status="2", destination_party=["+4510101", "+469999", "+4711111"]
    )
    accepted = check_rows(rows, CARRIER, MONTH, RULES).accepted
    calls, merged = combine_partial_calls(accepted)
    assert calls["destination_party"].tolist() == ["+469999"] and calls[
        "duration_seconds"
    ].tolist() == [180]
    assert sorted(merged["transaction_part_number"]) == ["10", "11"]


def test_sums_that_would_not_fit_the_billing_database_are_refused_not_wrapped():
    user_lines = pd.DataFrame(
        {
            "customer_id": ["C1", "C1"],
            "sequence_number": ["1", "1"],
            "currency": ["EUR", "EUR"],
            "user_id": ["a", "b"],
            "total_minor": [2**62, 2**62],
            "call_count": [1, 1],
            "billed_seconds": [60, 60],
        }
    )
    with pytest.raises(MoneyOverflowError, match="a billing line"):
        aggregate_lines(user_lines)
    calls = user_lines.drop(columns="total_minor").assign(cost_minor=[2**62, 2**62])
    with pytest.raises(MoneyOverflowError, match="a user's calls"):
        aggregate_users(calls.assign(user_id="a"))
    # intermediate sums may be large, the line is 0
    near = user_lines.assign(total_minor=[2**61, -(2**61)])
    assert aggregate_lines(near)["total_minor"].tolist() == [0]


def test_a_revenue_share_of_any_billed_amount_is_exact():
    billed = 9 * 10**17 + 7
    sums = pd.DataFrame(
        {
            "service_provider": ["P"],
            "currency": ["EUR"],
            "share_basis_points": [1250],
            "call_count": [3],
            "billed_minor": [billed],
        }
    )
    expected = (Decimal(billed) * Decimal("0.125")).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    assert revenue_share(sums)["share_minor"].tolist() == [int(expected)]


def test_credits_are_billed_negative_and_reported_per_currency():
    calls = pd.DataFrame({"currency": ["EUR", "EUR", "SEK"], "cost_minor": [-563, 1000, 250]})
    totals = call_totals(calls)
    assert totals["total_minor"].tolist() == [437, 250]
    assert credits(totals) == [{"currency": "EUR", "calls": 1, "total": "-5.63"}]


@pytest.mark.parametrize(
    ("ambiguous", "outcomes"),
    [
        (
            "earliest",
            {
                "2026-10-25 02:30:00": "2026-10-25 00:30:00+00:00",
                "2026-10-25 01:59:59": "2026-10-24 23:59:59+00:00",
                "2026-10-25 03:00:00": "2026-10-25 02:00:00+00:00",
                "2026-03-29 02:30:00": "NONEXISTENT_LOCAL_TIME",
                "2026-03-29 01:59:59": "2026-03-29 00:59:59+00:00",
                "2026-03-29 03:00:00": "2026-03-29 01:00:00+00:00",
                "2026-10-25T02:30:00+01:00": "2026-10-25 01:30:00+00:00",
                "2026-02-30 10:00:00": "BAD_TIMESTAMP",
            },
        ),
        (
            "latest",
            {
                "2026-10-25 02:30:00": "2026-10-25 01:30:00+00:00",
                "2026-03-29 02:00:00": "NONEXISTENT_LOCAL_TIME",
            },
        ),
        (
            "reject",
            {
                "2026-10-25 02:30:00": "AMBIGUOUS_LOCAL_TIME",
                "2026-10-25 02:00:00": "AMBIGUOUS_LOCAL_TIME",
                "2026-10-25 03:00:00": "2026-10-25 02:00:00+00:00",
                "2026-03-29 02:59:59": "NONEXISTENT_LOCAL_TIME",
            },
        ),
    ],
)
def test_local_times_around_both_clock_changes_follow_the_profile(ambiguous, outcomes):
    profile = SourceProfile(
        name="pbx",
        format="csv",
        columns={},
        priced=False,
        timezone="Europe/Stockholm",
        ambiguous_times=ambiguous,
    )
    months = {
        "03": BillingMonth(2026, 3),
        "10": BillingMonth(2026, 10),
        "02": BillingMonth(2026, 2),
    }
    for written, expected in outcomes.items():
        checked = check_rows(
            _rows(profile, "start_of_usage", [written]), profile, months[written[5:7]], RULES
        )
        got = checked.quarantined["reason_code"].tolist() or [
            str(checked.accepted["start_utc"].iloc[0])
        ]
        assert got == [expected], written


def test_a_profile_with_a_day_first_format_and_excel_serials_meet_the_same_rule():
    dotted = SourceProfile(
        name="pbx",
        format="csv",
        columns={},
        priced=False,
        timezone="Europe/Stockholm",
        timestamp_format="%d.%m.%Y %H:%M:%S",
        ambiguous_times="reject",
    )
    outcomes = _outcomes(dotted, "start_of_usage", ["25.10.2026 02:30:00", "25.10.2026 03:30:00"])
    assert outcomes == {"25.10.2026 02:30:00": "AMBIGUOUS_LOCAL_TIME", "25.10.2026 03:30:00": ""}
    serial = SourceProfile(
        name="x", format="xlsx", columns={}, priced=False, timezone="Europe/Stockholm"
    )
    spring = BillingMonth(2026, 3)
    # 2026-03-29 02:30 and 01:00
    rows = _rows(serial, "start_of_usage", ["46110.1041666667", "46110.0416666667"])
    checked = check_rows(rows, serial, spring, RULES)
    assert (
        checked.quarantined["reason_code"].tolist() == ["NONEXISTENT_LOCAL_TIME"]
        and len(checked.accepted) == 1
    )


def test_excel_serials_up_to_9999_beside_fractional_ones_are_no_crash():
    parsed = parse_timestamps(pd.Series([".1", "106752", "2958465", "2958466"], dtype="str"), "UTC")
    assert [str(v) for v in parsed] == [
        "1899-12-30 02:24:00+00:00",
        "2192-04-09 00:00:00+00:00",
        "9999-12-31 00:00:00+00:00",
        "NaT",
    ]


def test_every_reason_a_row_check_gives_is_documented():
    codes = set(_outcomes(CARRIER, "revenue_share_percentage", ["1e1"]).values()) | set(
        _outcomes(PRICED, "provider_cost", ["-5", "1e3", "9300000000000"]).values()
    )
    assert codes - {""} <= set(REASONS)
