import os
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace

import pandas as pd
import pytest

from cdr_billing.canonical import COMPLETION_STATUSES, TEXT_FIELDS
from cdr_billing.config import BillingSettings, SourceProfile
from cdr_billing.money import iso_currencies
from cdr_billing.months import BillingMonth
from cdr_billing.validate import (
    PHONE_NUMBER,
    REASONS,
    ROW_RULES,
    ParsedUnlessBlank,
    RowRule,
    _expectations,
    _suite_columns,
    check_rows,
    parse_durations,
    parse_timestamps,
    row_rules,
)

RULES = BillingSettings("billing_db", "Europe/Stockholm", "46", "0", "00", 86400, 0, 0.01)
UNPRICED = SourceProfile(name="carrier", format="csv", columns={}, priced=False, timezone="UTC")
MONTH = BillingMonth(2026, 10)


def _raw(**overrides):
    row = dict.fromkeys(TEXT_FIELDS, "")
    row.update(
        transaction_id="t1",
        user_id="u1",
        start_of_usage="2026-10-10T10:00:00Z",
        duration_of_usage="60",
        completion_status="1",
        destination_party="+46701234567",
        source_file="f.csv",
        source_row=2,
        source="carrier",
    )
    row.update(overrides)
    return pd.DataFrame([row])


def test_timestamps_parse_iso_offsets_local_text_and_excel_serials():
    parsed = parse_timestamps(
        pd.Series(["2026-10-03T09:15:00Z", "2026-10-03 09:15:00", "46298.5", "nonsense"]),
        "Europe/Stockholm",
    )
    assert [str(v) for v in parsed] == [
        "2026-10-03 09:15:00+00:00",
        "2026-10-03 07:15:00+00:00",
        "2026-10-03 10:00:00+00:00",
        "NaT",
    ]


def test_durations_must_be_whole_seconds():
    assert parse_durations(pd.Series(["60", "1.5", "x", "-3"]), "seconds").tolist() == [
        60,
        pd.NA,
        pd.NA,
        -3,
    ]


def test_a_good_row_is_accepted_with_types():
    checked = check_rows(_raw(), UNPRICED, MONTH, RULES)
    assert len(checked.accepted) == 1 and checked.quarantined.empty
    assert checked.accepted["duration_seconds"].iloc[0] == 60


def test_bad_rows_are_quarantined_with_reasons_and_original_values():
    raw = pd.concat(
        [
            _raw(duration_of_usage="-5"),
            _raw(start_of_usage="2026-09-10T10:00:00Z", completion_status="9"),
            _raw(destination_party="call me"),
            _raw(transaction_id=""),
        ],
        ignore_index=True,
    )
    checked = check_rows(raw, UNPRICED, MONTH, RULES)
    assert checked.accepted.empty
    assert checked.quarantined["reasons"].tolist() == [
        "DURATION_OUT_OF_RANGE",
        "OUTSIDE_MONTH;BAD_COMPLETION_STATUS",
        "BAD_NUMBER",
        "MISSING_TRANSACTION_ID",
    ]
    assert '"duration_of_usage": "-5"' in checked.quarantined["original_values"].iloc[0]


def test_duplicates_keep_the_first_delivery():
    raw = pd.concat(
        [
            _raw(source="a", source_row=2),
            _raw(source="a", source_row=3),
            _raw(source="b", source_row=4),
            _raw(source="a", source_row=5, duration_of_usage="-1"),
        ],
        ignore_index=True,
    )
    checked = check_rows(raw, UNPRICED, MONTH, RULES)
    assert checked.accepted["source_row"].tolist() == [2, 4] and checked.duplicates[
        "source_row"
    ].tolist() == [3]
    assert checked.quarantined["source_row"].tolist() == [
        5
    ]  # a bad row is quarantined, not a duplicate
    assert len(checked.call_hashes) == 2 and checked.duplicates["duration_seconds"].dtype == "int64"


# --- the row rules: one table for the row checks and the GX suite ---------------------------

PRICED = SourceProfile(name="portal", format="csv", columns={}, priced=True, timezone="UTC")


def _suite_as_written_before(profile: SourceProfile) -> list[tuple[str, dict]]:
    """The suite as `_expectations` wrote it out before the rules became one table."""
    keys = ["transaction_id", "user_id", "start_utc", "duration_seconds", "completion_status"]
    start, end = MONTH.bounds(RULES.timezone)
    tolerance = timedelta(hours=RULES.month_tolerance_hours)
    checks = [
        ("ExpectTableColumnsToMatchSet", {"column_set": keys, "exact_match": False}),
        *[("ExpectColumnValuesToNotBeNull", {"column": column}) for column in keys],
        ("ExpectColumnValuesToBeUnique", {"column": "transaction_id"}),
        ("ExpectColumnValuesToBeOfType", {"column": "duration_seconds", "type_": "int64"}),
        ("ExpectColumnValuesToBeOfType", {"column": "completion_status", "type_": "int8"}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "duration_seconds", "min_value": 0, "max_value": RULES.max_call_seconds},
        ),
        (
            "ExpectColumnValuesToBeInSet",
            {"column": "completion_status", "value_set": list(COMPLETION_STATUSES)},
        ),
        (
            "ExpectColumnValuesToBeBetween",
            {
                "column": "start_utc",
                "min_value": start - tolerance,
                "max_value": end + tolerance,
                "strict_max": True,
            },
        ),
    ]
    if profile.priced:
        return [
            *checks,
            (
                "ExpectColumnValuesToBeInSet",
                {"column": "currency", "value_set": sorted(iso_currencies())},
            ),
        ]
    regex = (
        "ExpectColumnValuesToMatchRegex",
        {"column": "destination_party", "regex": PHONE_NUMBER},
    )
    return [*checks, regex]


class _Expectations:
    """Stands in for `great_expectations.expectations`: each as (class name, arguments)."""

    def __getattr__(self, name):
        return lambda **kwargs: (name, kwargs)


_Recorder = SimpleNamespace(expectations=_Expectations())  # in place of the GX module


def test_every_reason_code_has_one_row_rule():
    reasons = [rule.reason for rule in ROW_RULES]
    assert len(reasons) == len(set(reasons)) and set(reasons) == set(REASONS)
    for rule in ROW_RULES:
        assert rule.unless is None or reasons.index(rule.unless) < reasons.index(rule.reason)


@pytest.mark.parametrize("profile", [UNPRICED, PRICED], ids=["unpriced", "priced"])
def test_the_suite_built_from_the_rules_is_the_one_written_out_before(profile):
    built = _expectations(_Recorder, profile, MONTH, RULES)
    assert sorted(map(repr, built)) == sorted(map(repr, _suite_as_written_before(profile)))
    assert len(set(map(repr, built))) == len(built)  # each expectation once


@pytest.mark.parametrize("profile", [UNPRICED, PRICED], ids=["unpriced", "priced"])
def test_gx_is_handed_the_column_of_every_rule_it_re_proves_and_accepted_rows_hold_them(profile):
    handed = _suite_columns(profile)
    assert handed == list(dict.fromkeys(r.column for r in row_rules(profile) if r.gx))
    for _, kwargs in _expectations(_Recorder, profile, MONTH, RULES):
        assert set(kwargs.get("column_set", [kwargs.get("column")])) <= set(handed)
    raw = _raw(provider_cost="1.5", currency="eur")
    accepted = check_rows(raw, profile, MONTH, RULES).accepted
    assert len(accepted) == 1 and set(handed) <= set(accepted.columns)


def test_a_rule_gx_re_proves_has_an_expectation_for_each_check():
    with pytest.raises(TypeError, match="GX cannot re-prove"):
        RowRule("BAD_REVENUE_SHARE", "revenue_share_bp", (ParsedUnlessBlank("x"),), gx=True)


def test_building_the_rules_and_the_suite_does_not_import_great_expectations():
    code = (
        "import sys; from cdr_billing import validate; "
        "from cdr_billing.config import load_config; config = load_config(); "
        "[validate._suite_columns(p) for p in config.profiles.values()]; "
        "assert 'great_expectations' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ)
