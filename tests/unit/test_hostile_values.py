"""Fuzz: random values in every mapped column of a real file in each shipped profile's format,
read and checked as the validate stage does. Each row is accepted with valid typed values or
quarantined with reason codes from validate.REASONS; the only other outcome is a FileReadError
that names the file. No numpy, pyarrow or pandas error escapes, whatever the value."""

from __future__ import annotations

import csv
import tempfile
from datetime import timedelta
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from cdr_billing.config import SourceProfile, load_config
from cdr_billing.money import MAX_CALL_COST, MICRO, iso_currencies
from cdr_billing.months import BillingMonth
from cdr_billing.read import FileReadError, read_cdr_file
from cdr_billing.validate import REASONS, check_rows

CONFIG = load_config()
RULES = CONFIG.billing
MONTH = BillingMonth(2026, 10)
GOOD = {
    "carrier_csv": {
        "transaction_id": "T1",
        "user_id": "SUB-1",
        "start_of_usage": "2026-10-05T09:00:00Z",
        "duration_of_usage": "60",
        "destination_party": "+46701234567",
        "completion_status": "1",
    },
    "pbx_csv": {
        "transaction_id": "P1",
        "user_id": "EXT-1",
        "destination_party": "0701234567",
        "start_of_usage": "05.10.2026 09:00:00",
        "duration_of_usage": "0:01:00",
        "completion_status": "ANSWERED",
    },
    "conferencing_xlsx": {
        "session_id": "C1",
        "transaction_id": "L1",
        "user_id": "0012345",
        "originating_party": "+4685051",
        "start_of_usage": "2026-10-05 09:00:00",
        "end_of_usage": "2026-10-05 09:02:00",
        "duration_of_usage": "120",
        "provider_cost": "0.09",
        "currency": "EUR",
    },
}
NUMBERS = [
    "inf",
    "-inf",
    "nan",
    "1e400",
    "1E5",
    "12345678901234567890",
    "99999999999999999999:00:00",
    "9300000000000",
    "-0",
    "+5",
    "0x10",
    "1_000",
    "1,5",
    "1.000,50",
    "٣",
    "６０",
    "1e-7",
    "0.0000001",
    "-1:00:00",
    "86401",
    "",
]
WHITESPACE = st.sampled_from(
    [" ", "\t", "\u00a0", "\u2003", "\u3000", "\ufeff", "\r", "\n", "\x0b"]
)
CONTROLS = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.just("\x7f")


def hostile(encoding: str) -> st.SearchStrategy[str]:
    """A value: a good one, a number of an odd shape, random text, random bytes as the file's
    encoding reads them, with whitespace or control characters around or inside."""
    random_bytes = st.binary(max_size=12).map(lambda data: data.decode(encoding, errors="replace"))
    core = st.one_of(
        st.sampled_from(NUMBERS),
        st.text(max_size=12),
        random_bytes,
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )
    return st.one_of(
        core,
        st.tuples(WHITESPACE, core, WHITESPACE).map("".join),
        st.tuples(core, CONTROLS, core).map("".join),
    )


def rows_of(profile_name: str) -> st.SearchStrategy[list[dict[str, str]]]:
    """Rows of the profile's mapped fields: each field good or hostile."""
    profile = CONFIG.profiles[profile_name]
    encoding = profile.encoding if profile.format == "csv" else "utf-8"
    value = {
        name: st.one_of(st.just(GOOD[profile_name].get(name, "")), hostile(encoding))
        for name in profile.columns
    }
    return st.lists(st.fixed_dictionaries(value), min_size=1, max_size=4)


def write_csv(path: Path, profile: SourceProfile, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding=profile.encoding, errors="replace") as handle:
        writer = csv.writer(handle, delimiter=profile.delimiter)
        writer.writerow(profile.columns.values())
        writer.writerows([[values[name] for name in profile.columns] for values in rows])


def write_xlsx(path: Path, profile: SourceProfile, rows: list[dict[str, str]]) -> None:
    """As text cells, and numbers where the value is one (a spreadsheet's cells are typed)."""
    book = Workbook()
    book.active.append(["Usage report"])
    book.active.append(list(profile.columns.values()))
    for values in rows:
        book.active.append(
            [_cell(ILLEGAL_CHARACTERS_RE.sub("", values[name])) for name in profile.columns]
        )
    book.save(path)


def _cell(text: str) -> str | float:
    try:
        return float(text) if text.strip() and text.isascii() else text
    except ValueError:
        return text


def assert_each_row_accounted_for(path: Path, profile: SourceProfile) -> None:
    try:
        raw = read_cdr_file(path, profile).assign(source=profile.name)
    except FileReadError as exc:
        assert str(exc).startswith(f"{path.name}: "), exc
        return
    checked = check_rows(raw, profile, MONTH, RULES)
    assert len(raw) == len(checked.accepted) + len(checked.quarantined) + len(checked.duplicates)
    codes = {code for reasons in checked.quarantined["reasons"] for code in reasons.split(";")}
    assert codes <= set(REASONS), codes - set(REASONS)
    assert (checked.quarantined["reason_code"] != "").all()
    assert_valid(pd.concat([checked.accepted, checked.duplicates]), profile)


def assert_valid(accepted: pd.DataFrame, profile: SourceProfile) -> None:
    """What check_rows promises of an accepted row."""
    start, end = MONTH.bounds(RULES.timezone)
    tolerance = timedelta(hours=RULES.month_tolerance_hours)
    assert accepted["duration_seconds"].between(0, RULES.max_call_seconds).all()
    assert accepted["completion_status"].isin([0, 1, 2, 3]).all()
    assert (
        (accepted["start_utc"] >= start - tolerance) & (accepted["start_utc"] < end + tolerance)
    ).all()
    assert (accepted["transaction_id"] != "").all() and (accepted["user_id"] != "").all()
    for column in (
        "transaction_id",
        "user_id",
        "destination_party",
        "session_id",
        "transaction_part_number",
        "currency",
    ):
        if column in accepted:
            assert (
                not accepted[column].fillna("").str.contains(r"[\x00-\x08\x0a-\x1f\x7f]").any()
            ), column
    if profile.priced:
        assert accepted["provider_cost_micro"].abs().le(MAX_CALL_COST * MICRO).all()
        assert accepted["currency"].isin(iso_currencies()).all()


def fuzz(profile_name: str, examples: int):
    profile = CONFIG.profiles[profile_name]
    write = write_xlsx if profile.format == "xlsx" else write_csv

    @settings(
        max_examples=examples,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(rows=rows_of(profile_name))
    def run(rows):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"fuzz_{profile_name}.{profile.format}"
            write(path, profile, rows)
            assert_each_row_accounted_for(path, profile)

    return run


test_carrier_csv_values = fuzz("carrier_csv", 100)
test_pbx_csv_values = fuzz("pbx_csv", 100)
test_conferencing_xlsx_values = fuzz("conferencing_xlsx", 40)
