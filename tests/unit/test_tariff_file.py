"""A tariff file that could quietly change a bill is refused whole at load, naming file, line,
column and reason; the good cases are read as written (real files, no mocks)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from cdr_billing.config import BillingSettings
from cdr_billing.entitlements import EntitlementError, from_file
from cdr_billing.money import MAX_TARIFF_AMOUNT, MICRO
from cdr_billing.rate import match_rates, normalise_numbers
from cdr_billing.tariff import TariffError, read_tariff_file

RULES = BillingSettings("billing_db", "Europe/Stockholm", "46", "0", "00", 86400, 0, 0.01)
COLUMNS = (
    "prefix",
    "destination",
    "price_per_minute",
    "connection_fee",
    "first_increment",
    "next_increment",
    "minimum_charge",
    "currency",
    "valid_from",
    "valid_to",
    "band",
    "weekdays",
    "start_hour",
    "end_hour",
)
GOOD = dict(
    zip(
        COLUMNS,
        ["46", "Sweden", "0.02", "0", "60", "60", "0", "EUR", "", "", "", "", "", ""],
        strict=True,
    )
)


def row(**changes: str) -> str:
    """A good row with some values changed."""
    values = {**GOOD, **changes}
    return ",".join(f'"{values[c]}"' if "," in values[c] else values[c] for c in COLUMNS)


def write(tmp_path: Path, *rows: str, name: str = "tariff.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([",".join(COLUMNS), *rows]) + "\n", encoding="utf-8")
    return path


def refusal(path: Path) -> str:
    with pytest.raises(TariffError) as caught:
        read_tariff_file(path, RULES)
    return str(caught.value)


def assert_refused(path: Path, line: int, column: str, reason: str = "") -> str:
    """The error names the file, the line as seen in the file, the column and the reason."""
    message = refusal(path)
    assert f"{path.name} line {line}: {column} " in message
    assert reason in message
    return message


# 1, 2. money: written, strict grammar, a ceiling; fees and minimum charges may be empty (0)


def test_an_empty_price_is_refused(tmp_path):
    assert_refused(
        write(tmp_path, row(), row(prefix="47", price_per_minute="")),
        3,
        "price_per_minute",
        "is empty",
    )


def test_a_written_zero_price_is_a_free_rate_and_empty_fees_are_zero(tmp_path):
    tariff = read_tariff_file(
        write(tmp_path, row(price_per_minute="0", connection_fee="", minimum_charge="")), RULES
    )
    assert tariff[["price_micro", "fee_micro", "minimum_micro"]].values.tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("column", ["price_per_minute", "connection_fee", "minimum_charge"])
@pytest.mark.parametrize(
    "amount",
    [
        "-0.01",
        "+1",
        "-0",
        "1e1",
        "1E-3",
        "inf",
        "nan",
        "Infinity",
        "1,000",
        "1 000",
        ".5",
        "1.",
        "0.0000001",
        "0x10",
        "١",
    ],
)
def test_amounts_follow_the_strict_grammar(tmp_path, column, amount):
    assert_refused(
        write(tmp_path, row(), row(prefix="47", **{column: amount})), 3, column, "is not an amount"
    )


def test_an_amount_above_the_ceiling_is_refused_and_the_ceiling_is_accepted(tmp_path):
    ceiling = f"{MAX_TARIFF_AMOUNT}.000000"
    assert read_tariff_file(write(tmp_path, row(price_per_minute=ceiling)), RULES)[
        "price_micro"
    ].tolist() == [MAX_TARIFF_AMOUNT * MICRO]
    assert_refused(
        write(tmp_path, row(price_per_minute=f"{MAX_TARIFF_AMOUNT}.000001")),
        2,
        "price_per_minute",
        "more than",
    )


def test_six_decimals_are_exact(tmp_path):
    assert read_tariff_file(write(tmp_path, row(price_per_minute="0.123456")), RULES)[
        "price_micro"
    ].tolist() == [123_456]


# 3. integer columns: digits within their ranges


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("first_increment", "1e1"),
        ("first_increment", "60.0"),
        ("first_increment", "0"),
        ("first_increment", ""),
        ("next_increment", "86401"),
        ("next_increment", "-6"),
        ("next_increment", "+6"),
        ("start_hour", "24"),
        ("start_hour", "8.5"),
        ("end_hour", "0"),
        ("end_hour", "25"),
    ],
)
def test_integer_columns_are_digits_in_range(tmp_path, column, value):
    assert_refused(write(tmp_path, row(**{column: value})), 2, column, "is not a whole number")


def test_a_band_must_end_after_it_starts(tmp_path):
    assert_refused(
        write(tmp_path, row(start_hour="18", end_hour="8")),
        2,
        "end_hour",
        "is not after start_hour 18",
    )


# 4. currency: ISO 4217 with a minor unit, any case, stored upper case


@pytest.mark.parametrize("currency", ["EURO", "ABC", "", "XAU", "XTS", "XXX", "E U"])
def test_a_currency_must_be_iso_4217_with_a_minor_unit(tmp_path, currency):
    assert_refused(write(tmp_path, row(currency=currency)), 2, "currency", "ISO 4217")


def test_a_currency_in_lower_case_is_stored_upper_case(tmp_path):
    tariff = read_tariff_file(
        write(tmp_path, row(currency="eur"), row(prefix="81", currency="jpy")), RULES
    )
    assert tariff["currency"].tolist() == ["EUR", "JPY"]


# 5. prefixes normalised as destination numbers are


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("0045", "45"),
        ("+45", "45"),
        ("00 45", "45"),
        ("45", "45"),
        ("08", "468"),
        ("(0)8-12", "46812"),
        ("+46.70", "4670"),
    ],
)
def test_a_prefix_is_normalised_like_the_numbers(tmp_path, written, stored):
    assert read_tariff_file(write(tmp_path, row(prefix=written)), RULES)["prefix"].tolist() == [
        stored
    ]


@pytest.mark.parametrize(
    "written", ["", "+", "00", "+0045", "000", "45a", "4 5x", "1234567890123456", "٤٥"]
)
def test_a_prefix_that_can_never_match_is_refused(tmp_path, written):
    assert_refused(write(tmp_path, row(prefix=written)), 2, "prefix", "is not a number prefix")


def test_a_prefix_written_0045_prices_calls_to_denmark(tmp_path):
    rates = read_tariff_file(
        write(tmp_path, row(prefix="4", price_per_minute="9"), row(prefix="0045")), RULES
    )
    numbers = normalise_numbers(pd.Series(["+4512345678", "004512345678", "+4412345678"]), RULES)
    starts = pd.Series(pd.to_datetime(["2026-10-05 10:00"] * 3).tz_localize("UTC"))
    found = match_rates(numbers, starts, rates.assign(version_id=1), RULES.timezone)
    assert rates["prefix"].to_numpy()[found].tolist() == ["45", "45", "4"]


# 6. rows of one file that a call could both match


def test_overlapping_rows_of_a_prefix_are_refused_naming_both_lines(tmp_path):
    path = write(
        tmp_path, row(), row(weekdays="12345", start_hour="8", end_hour="18"), row(prefix="47")
    )
    message = assert_refused(path, 3, "prefix", "listed twice")
    assert "line 2 has the same prefix" in message


def test_prefixes_equal_once_normalised_overlap(tmp_path):
    message = assert_refused(
        write(tmp_path, row(prefix="+46"), row(prefix="0046")), 3, "prefix", "listed twice"
    )
    assert "line 2" in message


def test_partly_overlapping_validity_weekdays_and_hours_are_refused(tmp_path):
    first = row(
        valid_from="2026-10-01",
        valid_to="2026-10-20",
        weekdays="135",
        start_hour="8",
        end_hour="12",
    )
    second = row(valid_from="2026-10-19", weekdays="57", start_hour="11", end_hour="20")
    assert_refused(write(tmp_path, first, second), 3, "prefix", "listed twice")


def test_rows_apart_in_time_weekdays_or_hours_are_accepted(tmp_path):
    rows = [
        row(valid_to="2026-10-15", weekdays="12345", start_hour="8", end_hour="18"),
        # from the first's end
        row(valid_from="2026-10-15", weekdays="12345", start_hour="8", end_hour="18"),
        row(weekdays="12345", start_hour="0", end_hour="8"),  # other hours
        row(weekdays="12345", start_hour="18", end_hour="24"),
        row(weekdays="67"),  # other days
    ]
    assert len(read_tariff_file(write(tmp_path, *rows), RULES)) == 5


# 7. validity in the billing timezone; a wall time the clock change repeats or skips is refused


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ("2026-10-25 02:30", "occurs twice in Europe/Stockholm"),
        ("2026-10-25T02:30:00", "occurs twice in Europe/Stockholm"),
        ("2026-03-29 02:30", "does not exist in Europe/Stockholm"),
    ],
)
@pytest.mark.parametrize("column", ["valid_from", "valid_to"])
def test_a_repeated_or_skipped_wall_time_is_refused(tmp_path, written, reason, column):
    assert_refused(write(tmp_path, row(**{column: written})), 2, column, reason)
    assert "UTC offset" in refusal(write(tmp_path, row(**{column: written})))


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("2026-10-25T02:30:00+01:00", "2026-10-25 01:30:00+00:00"),
        ("2026-10-25T02:30:00+02:00", "2026-10-25 00:30:00+00:00"),
        ("2026-10-25T02:30:00Z", "2026-10-25 02:30:00+00:00"),
        ("2026-03-29T02:30:00+01:00", "2026-03-29 01:30:00+00:00"),
        ("2026-11-01", "2026-10-31 23:00:00+00:00"),  # a date: local midnight
        ("2026-07-01 08:00", "2026-07-01 06:00:00+00:00"),
    ],
)
def test_a_moment_with_an_offset_is_taken_as_written(tmp_path, written, utc):
    assert (
        str(read_tariff_file(write(tmp_path, row(valid_from=written)), RULES)["valid_from"].iloc[0])
        == utc
    )


@pytest.mark.parametrize("written", ["2026-13-01", "next week", "01/10/2026", "2026-10-01 25:00"])
def test_a_moment_that_is_not_a_date_is_refused(tmp_path, written):
    assert_refused(write(tmp_path, row(valid_from=written)), 2, "valid_from", "is not a date")


def test_a_validity_must_end_after_it_starts(tmp_path):
    assert_refused(
        write(tmp_path, row(valid_from="2026-10-15", valid_to="2026-10-15")),
        2,
        "valid_to",
        "is not after valid_from",
    )


# 8. UTF-8 only (a byte-order mark allowed); no control characters in values


def test_a_utf16_tariff_is_refused_naming_its_byte_order_mark(tmp_path):
    path = write(tmp_path, row(destination="Göteborg"))
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-16")
    message = refusal(path)
    assert (
        message.startswith("tariff.csv: ")
        and "UTF-16 byte-order mark" in message
        and "must be UTF-8" in message
    )


def test_a_latin1_tariff_is_refused_naming_the_line_and_byte(tmp_path):
    path = write(tmp_path, row(), row(prefix="47", destination="Göteborg"))
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
    offset = path.read_bytes().index(b"\xf6")
    message = refusal(path)
    assert (
        f"tariff.csv line 3: byte {offset} (0xf6) is not UTF-8" in message
        and "must be UTF-8" in message
    )


def test_utf16_without_a_byte_order_mark_is_refused(tmp_path):
    path = write(tmp_path, row())
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16-le"))
    assert "tariff.csv line 1: a NUL byte at byte 1 (UTF-16 without a byte-order mark?)" in refusal(
        path
    )


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    path = write(tmp_path, row(destination="Göteborg"))
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-8-sig")
    assert read_tariff_file(path, RULES)["destination"].tolist() == ["Göteborg"]


def test_a_utf16_entitlement_file_is_an_entitlement_error(tmp_path):
    path = tmp_path / "entitlements_2026-10-01.csv"
    header = (
        "account_id,user_principal_name,customer_id,sequence_number,default_sequence_number,"
        "entitled,last_login\n"
    )
    path.write_text(header + "0001,å@x,C1,101,100,true,2026-09-30\n", encoding="utf-16")
    with pytest.raises(
        EntitlementError, match=r"entitlements_2026-10-01.csv: starts with a UTF-16 byte-order mark"
    ):
        from_file(path, datetime(2026, 10, 1, tzinfo=UTC), RULES.timezone)


@pytest.mark.parametrize(
    "value", ["Swe\x07den", "Swe\nden", "Sweden\r", "Swe\x1bden", "Swe\x7fden", "Swe\x85den"]
)
def test_a_control_character_in_a_value_is_refused(tmp_path, value):
    path = write(tmp_path, row(), row(prefix="47", destination=f'"{value}"'))
    assert_refused(path, 3, "destination", "holds a control character")


def test_a_tab_inside_a_value_is_kept(tmp_path):
    assert read_tariff_file(write(tmp_path, row(destination="Swe\tden")), RULES)[
        "destination"
    ].tolist() == ["Swe\tden"]


# line numbers as a person sees them; several bad values in one message


def test_blank_lines_and_multi_line_values_keep_the_line_numbers_of_the_file(tmp_path):
    path = tmp_path / "tariff.csv"
    path.write_text(
        ",".join(COLUMNS)
        + "\n\n"
        + row()
        + "\n"
        + row(prefix="47", destination='"two\nlines"')
        + "\n\n"
        + row(prefix="48", currency="EURO")
        + "\n",
        encoding="utf-8",
    )
    message = refusal(path)
    assert "tariff.csv line 4: destination 'two\\nlines' holds a control character" in message
    assert "tariff.csv line 7: currency 'EURO'" in message


def test_a_row_with_more_values_than_the_header_is_refused(tmp_path):
    path = write(
        tmp_path, row(), row(prefix="82", destination="Korea, Republic of").replace('"', "")
    )
    assert "tariff.csv line 3: 15 values, the header has 14 columns" in refusal(path)


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "tariff.csv"
    path.write_text(",".join([*COLUMNS, "currency"]) + "\n" + row() + ",SEK\n", encoding="utf-8")
    assert "tariff.csv line 1: columns ['currency'] appear more than once in the header" in refusal(
        path
    )


def test_unnamed_columns_are_ignored(tmp_path):
    path = tmp_path / "tariff.csv"
    path.write_text(",".join([*COLUMNS, "", ""]) + "\n" + row() + ",,\n", encoding="utf-8")
    assert read_tariff_file(path, RULES)["prefix"].tolist() == ["46"]


def test_up_to_ten_bad_values_are_named_in_one_message(tmp_path):
    message = refusal(
        write(tmp_path, *(row(prefix=str(40 + n), currency="EURO") for n in range(12)))
    )
    assert [line.split(":")[0] for line in message.splitlines()[:10]] == [
        f"tariff.csv line {n}" for n in range(2, 12)
    ]
    assert (
        message.splitlines()[-1]
        == "tariff.csv: refused, nothing of it was stored (12 bad values, the first 10 shown)"
    )


def test_an_excel_tariff_names_the_row_of_a_bad_value(tmp_path):
    path = tmp_path / "tariff.xlsx"
    rows = [GOOD, {**GOOD, "prefix": "47"}, {**GOOD, "prefix": "48", "price_per_minute": "-0.02"}]
    pd.DataFrame(rows).to_excel(path, index=False)
    assert_refused(path, 4, "price_per_minute", "is not an amount")


# 9. the command line


def test_the_command_prints_the_refusal_and_exits_2(tmp_path):
    path = write(tmp_path, row(price_per_minute=""))
    done = subprocess.run(
        [sys.executable, "-m", "cdr_billing.tariff", "load", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "tariff.csv line 2: price_per_minute '' is empty" in done.stderr
    assert "Traceback" not in done.stderr
