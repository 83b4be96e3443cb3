import pandas as pd

from cdr_billing.canonical import TEXT_FIELDS
from cdr_billing.config import BillingSettings, SourceProfile
from cdr_billing.months import BillingMonth
from cdr_billing.validate import check_rows, parse_durations, parse_timestamps

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
