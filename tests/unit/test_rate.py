import random
import re

import numpy as np
import pandas as pd
import pytest

from cdr_billing.config import BillingSettings
from cdr_billing.dedupe import combine_partial_calls
from cdr_billing.rate import (
    PrefixIndex,
    billed_seconds,
    compare_with_tariff,
    normalise_numbers,
    rate_calls,
    tariff_cost_minor,
)
from cdr_billing.tariff import TariffError, read_tariff_file

RULES = BillingSettings("billing_db", "Europe/Stockholm", "46", "0", "00", 86400, 0, 0.01)
TARIFF_CSV = (
    "prefix,destination,price_per_minute,connection_fee,first_increment,next_increment,"
    "minimum_charge,currency\n"
    """46,Sweden,0.0200,0,60,60,0,EUR
467,Sweden mobile,0.0900,0.0500,60,60,0.10,EUR
468,Stockholm,0.0150,0,30,6,0,EUR
"""
)


@pytest.fixture
def tariff(tmp_path):
    path = tmp_path / "tariff.csv"
    path.write_text(TARIFF_CSV)
    return read_tariff_file(path, RULES).assign(version_id=1)


@pytest.mark.parametrize(
    ("duration", "first", "following", "billed"),
    [
        (0, 60, 60, 0),
        (1, 60, 60, 60),
        (59, 60, 60, 60),
        (60, 60, 60, 60),
        (61, 60, 60, 120),
        (1, 30, 6, 30),
        (31, 30, 6, 36),
        (36, 30, 6, 36),
        (37, 30, 6, 42),
        (61, 1, 1, 61),
    ],
)
def test_billed_seconds_round_up_to_increments(duration, first, following, billed):
    assert (
        billed_seconds(np.array([duration]), np.array([first]), np.array([following]))[0] == billed
    )


def test_cost_is_fee_plus_time_rounded_half_up():
    # 0.05 + 0.09 * 120/60 = 0.23 EUR
    assert (
        tariff_cost_minor(
            np.array([120]),
            np.array([90_000]),
            np.array([50_000]),
            np.array([100_000]),
            np.array([10_000]),
        )[0]
        == 23
    )


def test_minimum_charge_applies():
    # 0.05 + 0.09 * 0/60 = 0.05 < minimum 0.10
    assert (
        tariff_cost_minor(
            np.array([0]),
            np.array([90_000]),
            np.array([50_000]),
            np.array([100_000]),
            np.array([10_000]),
        )[0]
        == 10
    )


def test_half_cent_rounds_up():
    # 0.015 per minute for 30 s = 0.0075 EUR -> 0.01
    assert (
        tariff_cost_minor(
            np.array([30]), np.array([15_000]), np.array([0]), np.array([0]), np.array([10_000])
        )[0]
        == 1
    )


def test_national_and_international_formats_normalise_alike():
    numbers = pd.Series(["+46701234567", "0046701234567", "0701234567", "+44 20 7946 0000"])
    assert normalise_numbers(numbers, RULES).tolist() == ["46701234567"] * 3 + ["442079460000"]


def _normalised_one_by_one(number: str) -> str:
    """The rule, one number at a time: separators out, then "+", the international or the
    national prefix."""
    number = re.sub(r"[\s\-().]", "", number)
    if number.startswith("+"):
        return number[1:]
    if number.startswith(RULES.international_prefix):
        return number[len(RULES.international_prefix) :]
    if number.startswith(RULES.national_prefix):
        return RULES.country_code + number[len(RULES.national_prefix) :]
    return number


@pytest.mark.parametrize("seed", range(4))
def test_normalising_numbers_in_bulk_equals_the_rule_number_by_number(seed):
    rng = random.Random(seed)
    starts = ["+", "00", "0", "", "+0", "000", "(0)", "+ "]
    numbers = [
        "".join(
            [
                rng.choice(starts),
                *(rng.choice("0123456789 -().+") for _ in range(rng.randint(0, 12))),
            ]
        )
        for _ in range(500)
    ]
    numbers += ["+46701234567"] * 3  # the E.164 fast path is taken only when every number is E.164
    assert normalise_numbers(pd.Series(numbers, dtype="str"), RULES).tolist() == [
        _normalised_one_by_one(n) for n in numbers
    ]
    e164 = pd.Series([f"+{rng.randint(10**6, 10**14)}" for _ in range(200)], dtype="str")
    assert normalise_numbers(e164, RULES).tolist() == [n[1:] for n in e164]


def test_longest_prefix_wins(tariff):
    numbers = pd.Series(["46701234567", "4687654321", "4631123456", "88216000000"])
    assert PrefixIndex(sorted(tariff["prefix"])).longest(numbers).tolist() == [
        "467",
        "468",
        "46",
        "",
    ]


def test_a_number_shorter_than_a_prefix_never_matches_it():
    """Found by the DuckDB peer of `make bench-pipeline`: padding made +4680 match 46800."""
    index = PrefixIndex(["46", "4680", "46800", "468001"])
    numbers = pd.Series(["4680", "468", "46800", "4680012", "46801", "4"])
    assert index.longest(numbers).tolist() == ["4680", "46", "46800", "468001", "4680", ""]


def _calls(**columns):
    base = {
        "transaction_id": ["t1"],
        "user_id": ["u1"],
        "completion_status": [1],
        "duration_seconds": [61],
        "destination_party": ["0701234567"],
        "pre_priced": [False],
        "provider_cost_micro": [pd.NA],
        "currency": [""],
        "source_file": ["f.csv"],
        "source": ["carrier"],
        "source_row": [2],
        "start_utc": [pd.Timestamp("2026-10-05 09:00", tz="UTC")],
    }
    base.update(columns)
    frame = pd.DataFrame(base)
    frame["provider_cost_micro"] = frame["provider_cost_micro"].astype("Int64")
    return frame


def test_rate_calls_prices_by_tariff(tariff):
    priced, unbillable, failed = rate_calls(_calls(), tariff, RULES)
    # 0.05 + 0.09 * 120/60 = 0.23
    assert priced[
        ["cost_minor", "billed_seconds", "tariff_prefix", "currency"]
    ].values.tolist() == [[23, 120, "467", "EUR"]]
    assert unbillable.empty and failed.empty


def test_unknown_range_is_unbillable_not_free(tariff):
    priced, unbillable, _ = rate_calls(_calls(destination_party=["+88216000000"]), tariff, RULES)
    assert priced.empty
    assert unbillable["reason_code"].tolist() == ["NO_TARIFF_PREFIX"]


def test_failed_calls_are_not_billed(tariff):
    priced, unbillable, failed = rate_calls(_calls(completion_status=[0]), tariff, RULES)
    assert priced.empty and unbillable.empty and len(failed) == 1


def test_rows_left_out_are_in_no_result(tariff):
    statuses = [1, 0, 1, 0, 1]
    calls = pd.concat(
        [
            _calls(completion_status=[status], destination_party=[number], transaction_id=[f"t{n}"])
            for n, (status, number) in enumerate(
                zip(
                    statuses,
                    ["0701234567", "0701234567", "+88216000000", "0701234567", "0701234567"],
                    strict=True,
                )
            )
        ],
        ignore_index=True,
    )
    rows = np.array([True, True, True, False, False])
    priced, unbillable, failed = rate_calls(calls, tariff, RULES, rows=rows)
    assert (
        priced["transaction_id"].tolist(),
        unbillable["transaction_id"].tolist(),
        failed["transaction_id"].tolist(),
    ) == (
        ["t0"],
        ["t2"],
        ["t1"],
    )


def test_provider_priced_calls_keep_the_provider_cost(tariff):
    calls = _calls(
        pre_priced=[True],
        provider_cost_micro=[12_340_000],
        currency=["EUR"],
        destination_party=[""],
    )
    priced, _, _ = rate_calls(calls, tariff, RULES)
    assert priced[["cost_minor", "pricing"]].values.tolist() == [[1234, "provider"]]


def test_tariff_with_a_bad_price_names_the_line(tmp_path):
    path = tmp_path / "tariff.csv"
    path.write_text(TARIFF_CSV + "49,Germany,abc,0,60,60,0,EUR\n")
    with pytest.raises(TariffError, match="tariff.csv line 5: price_per_minute"):
        read_tariff_file(path, RULES)


def test_tariff_with_a_repeated_prefix_is_refused(tmp_path):
    path = tmp_path / "tariff.csv"
    path.write_text(TARIFF_CSV + "467,Dup,0.1,0,60,60,0,EUR\n")
    with pytest.raises(TariffError, match="listed twice"):
        read_tariff_file(path, RULES)


def test_provider_costs_get_the_source_markup_rounded_once(tariff):
    calls = _calls(
        pre_priced=[True], provider_cost_micro=[1_234_500], currency=["EUR"], destination_party=[""]
    )
    # 1.2345 x 1.125 = 1.3888125
    priced, _, _ = rate_calls(calls, tariff, RULES, markups={"carrier": 1250})
    assert priced["cost_minor"].tolist() == [139]


def _part(
    transaction_id: str, status: int, part: str, session: str, minute: int = 0
) -> pd.DataFrame:
    start = pd.Timestamp("2026-10-05 09:00", tz="UTC") + pd.Timedelta(minutes=minute)
    return _calls(
        transaction_id=[transaction_id],
        completion_status=[status],
        duration_seconds=[40],
        transaction_part_number=[part],
        session_id=[session],
        start_utc=[start],
    )


def test_partial_parts_of_a_session_become_one_call_before_pricing(tariff):
    parts = pd.concat(
        [_part("p1", 2, "1", "S1"), _part("p2", 2, "2", "S1", minute=1), _part("x", 1, "1", "S2")]
    )
    calls, merged = combine_partial_calls(parts.reset_index(drop=True))
    assert sorted(calls[["transaction_id", "duration_seconds"]].values.tolist()) == [
        ["p1", 80],
        ["x", 40],
    ]
    assert merged["transaction_id"].tolist() == ["p2"]
    priced, _, _ = rate_calls(calls, tariff, RULES)
    # one connection fee for the session: 0.05 + 0.09 x 2 minutes = 0.23, not 2 x (0.05 + 0.09)
    assert priced.set_index("transaction_id").loc["p1", "cost_minor"] == 23


def test_provider_prices_far_from_the_tariff_are_reported(tariff):
    near = _calls(
        pre_priced=[True], provider_cost_micro=[230_000], currency=["EUR"], transaction_id=["near"]
    )
    far = _calls(
        pre_priced=[True], provider_cost_micro=[500_000], currency=["EUR"], transaction_id=["far"]
    )
    calls = pd.concat([near, far], ignore_index=True)
    priced, _, _ = rate_calls(calls, tariff, RULES)
    differences = compare_with_tariff(priced, tariff, RULES)
    assert differences[["transaction_id", "cost_minor", "tariff_cost_minor"]].values.tolist() == [
        ["far", 50, 23]
    ]
