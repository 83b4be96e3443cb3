"""A corpus of bad and awkward CDR files, made here, read with the shipped profiles: each
gets a clear file-level error or a quarantine reason, and every row is accounted for."""

from __future__ import annotations

import csv
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from openpyxl import Workbook

from cdr_billing import hashing
from cdr_billing.acquire import FetchedFile
from cdr_billing.config import load_config
from cdr_billing.contracts import Run
from cdr_billing.months import BillingMonth
from cdr_billing.read import FileReadError, read_cdr_file
from cdr_billing.validate import FileValidationError, check_rows, enforce_rejection_threshold
from cdr_devkit.sample_data import CONFERENCING_HEADER

CONFIG = load_config()
RULES = CONFIG.billing
MONTH = BillingMonth(2026, 10)
XLSX_HEADER = CONFERENCING_HEADER
GOOD_LEG = [
    "CONF-1",
    "L1",
    "0012345",
    "+46850512345",
    datetime(2026, 10, 5, 9, 0),
    datetime(2026, 10, 5, 9, 2),
    120,
    0.09,
    "EUR",
]


def xlsx(
    path: Path, rows: list[list], header: list[str] = XLSX_HEADER, title_rows: int = 2
) -> Path:
    book = Workbook()
    sheet = book.active
    for n in range(title_rows):
        sheet.append([f"Usage report, line {n + 1}"])
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def carrier_csv(path: Path, rows: list[dict], encoding: str = "utf-8", **overrides) -> Path:
    from cdr_billing.canonical import CARRIER_FIELDS

    base = dict.fromkeys(CARRIER_FIELDS, "")
    base.update(
        transaction_id="T1",
        user_id="SUB-1",
        start_of_usage="2026-10-05T09:00:00Z",
        duration_of_usage="60",
        destination_party="+46701234567",
        completion_status="1",
    )
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CARRIER_FIELDS), **overrides)
        writer.writeheader()
        writer.writerows([{**base, **row} for row in rows])
    return path


def check(path: Path, profile_name: str):
    """Read and check a file as the validate stage does; return the outcome."""
    profile = CONFIG.profiles[profile_name]
    raw = read_cdr_file(path, profile).assign(source=profile_name)
    checked = check_rows(raw, profile, MONTH, RULES)
    assert len(raw) == len(checked.accepted) + len(checked.quarantined) + len(checked.duplicates), (
        "a row was dropped silently"
    )
    return raw, checked


def reasons(checked) -> list[str]:
    return checked.quarantined["reasons"].tolist()


def test_corrupted_xlsx_is_a_clear_file_error(tmp_path):
    path = tmp_path / "conferencing_cdr_2026-10.xlsx"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(
        FileReadError, match="conferencing_cdr_2026-10.xlsx: not a readable xlsx file"
    ):
        check(path, "conferencing_xlsx")


@pytest.mark.parametrize("profile", ["carrier_csv", "pbx_csv"])
def test_empty_csv_is_a_clear_file_error(tmp_path, profile):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(FileReadError, match="empty.csv: not a readable CSV file"):
        check(path, profile)


def test_header_only_file_fails_as_holding_no_rows(tmp_path):
    raw, checked = check(xlsx(tmp_path / "header_only.xlsx", []), "conferencing_xlsx")
    with pytest.raises(FileValidationError, match="header_only.xlsx: the file holds no CDR rows"):
        enforce_rejection_threshold("header_only.xlsx", len(raw), checked.quarantined, 0.01)


def test_title_rows_above_the_header_are_skipped_and_rows_keep_their_line_numbers(tmp_path):
    raw, checked = check(
        xlsx(tmp_path / "titled.xlsx", [GOOD_LEG], title_rows=5), "conferencing_xlsx"
    )
    assert raw["source_row"].tolist() == [7]  # 5 title rows, the header on line 6
    assert raw["user_id"].tolist() == ["0012345"]  # leading zeros kept
    assert len(checked.accepted) == 1


def test_headers_match_case_and_space_insensitively_and_extra_columns_are_ignored(tmp_path):
    header = [h.upper() + "  " for h in XLSX_HEADER] + ["Internal note"]
    raw, checked = check(
        xlsx(tmp_path / "shouting.xlsx", [GOOD_LEG + ["n/a"]], header=header), "conferencing_xlsx"
    )
    assert len(checked.accepted) == 1


def test_renamed_required_column_is_named_in_the_error(tmp_path):
    header = ["PGI Connect Number" if h == "PGIConnect ID" else h for h in XLSX_HEADER]
    with pytest.raises(FileReadError, match=r"no header row with columns .*pgiconnect id"):
        check(xlsx(tmp_path / "renamed.xlsx", [GOOD_LEG], header=header), "conferencing_xlsx")


def test_missing_csv_column_is_named_in_the_error(tmp_path):
    path = carrier_csv(tmp_path / "carrier.csv", [{}])
    frame = pd.read_csv(path, dtype=str).drop(columns=["destination_party"])
    frame.to_csv(path, index=False)
    with pytest.raises(
        FileReadError,
        match="carrier.csv: missing required columns: destination_party "
        "\\(column 'destination_party'\\)",
    ):
        check(path, "carrier_csv")


def test_formula_cells_without_a_value_are_quarantined(tmp_path):
    leg = GOOD_LEG[:7] + ["=G5*0.00075"] + GOOD_LEG[8:]
    _, checked = check(xlsx(tmp_path / "formula.xlsx", [leg]), "conferencing_xlsx")
    assert reasons(checked) == ["BAD_COST"]


def test_merged_cells_leave_the_hidden_rows_empty_and_quarantined(tmp_path):
    second = GOOD_LEG[:1] + ["L2", None] + GOOD_LEG[3:]
    path = xlsx(tmp_path / "merged.xlsx", [GOOD_LEG, second])
    from openpyxl import load_workbook

    book = load_workbook(path)
    book.active.merge_cells("C4:C5")  # the account id cell spans both legs
    book.save(path)
    _, checked = check(path, "conferencing_xlsx")
    assert reasons(checked) == ["MISSING_ACCOUNT"]


def test_excel_serial_dates_parse_like_date_cells(tmp_path):
    serial = GOOD_LEG[:4] + [46300.375] + GOOD_LEG[5:]  # 2026-10-05 09:00 as a plain number
    _, checked = check(
        xlsx(tmp_path / "serial.xlsx", [GOOD_LEG, serial[:1] + ["L2"] + serial[2:]]),
        "conferencing_xlsx",
    )
    assert checked.accepted["start_utc"].nunique() == 1


def test_hms_durations_latin1_semicolons(tmp_path):
    path = tmp_path / "pbx.csv"
    path.write_bytes(
        "Samtals-ID;Anknytning;Uppringt nummer;Starttid;Längd;Status;Kommentar\n"
        "P1;EXT-1;0701234567;05.10.2026 09:00:00;1:02:03;ANSWERED;Växel\n"
        "P2;EXT-1;0701234567;05.10.2026 09:00:00;0:61:00;ANSWERED;\n"
        "P3;EXT-1;0701234567;05.10.2026 09:00:00;0:01:00;ON HOLD;\n".encode("latin-1")
    )
    raw, checked = check(path, "pbx_csv")
    assert checked.accepted["duration_seconds"].tolist() == [3723]
    assert raw["additional_info"].tolist() == ["Växel", "", ""]
    assert reasons(checked) == ["BAD_DURATION", "BAD_COMPLETION_STATUS"]


def test_latin1_file_under_a_utf8_profile_is_a_clear_file_error(tmp_path):
    path = carrier_csv(tmp_path / "latin1.csv", [{"additional_info": "Växel"}], encoding="latin-1")
    with pytest.raises(FileReadError, match="latin1.csv: not a readable CSV file"):
        check(path, "carrier_csv")


def test_byte_order_mark_does_not_hide_the_first_column(tmp_path):
    _, checked = check(carrier_csv(tmp_path / "bom.csv", [{}], encoding="utf-8-sig"), "carrier_csv")
    assert checked.accepted["transaction_id"].tolist() == ["T1"]


def test_semicolons_with_decimal_commas(tmp_path):
    profile = replace(
        CONFIG.profiles["conferencing_xlsx"],
        name="conf_csv",
        format="csv",
        delimiter=";",
        decimal=",",
        timestamp_format="%Y-%m-%d %H:%M",
    )
    path = tmp_path / "conf.csv"
    path.write_text(
        ";".join(XLSX_HEADER) + "\n"
        "C1;L1;0012345;+46850512345;2026-10-05 09:00;2026-10-05 09:02;120;0,1250;EUR\n"
        "C1;L2;0012345;+46850512345;2026-10-05 09:00;2026-10-05 09:02;120;1.234,50;EUR\n",
        encoding="utf-8",
    )
    raw = read_cdr_file(path, profile).assign(source="conf_csv")
    checked = check_rows(raw, profile, MONTH, RULES)
    assert checked.accepted["provider_cost_micro"].tolist() == [125_000]  # 0,1250 read exactly
    assert reasons(checked) == ["BAD_COST"]  # thousands separators are not guessed


def test_negative_and_huge_durations(tmp_path):
    rows = [
        {"transaction_id": "T1", "duration_of_usage": "-5"},
        {"transaction_id": "T2", "duration_of_usage": "999999"},
    ]
    _, checked = check(carrier_csv(tmp_path / "durations.csv", rows), "carrier_csv")
    assert reasons(checked) == ["DURATION_OUT_OF_RANGE", "DURATION_OUT_OF_RANGE"]


def test_rows_from_another_month_are_quarantined_and_a_wrong_month_file_fails(tmp_path):
    rows = [{"transaction_id": f"T{n}", "start_of_usage": "2026-09-30T12:00:00Z"} for n in range(3)]
    raw, checked = check(carrier_csv(tmp_path / "carrier_cdr_202609.csv", rows), "carrier_csv")
    assert reasons(checked) == ["OUTSIDE_MONTH"] * 3
    with pytest.raises(FileValidationError, match=r"3 of 3 rows \(100.0%\).*'OUTSIDE_MONTH': 3"):
        enforce_rejection_threshold("carrier_cdr_202609.csv", len(raw), checked.quarantined, 0.01)


def test_duplicate_ids_are_billed_once_and_counted(tmp_path):
    first = carrier_csv(tmp_path / "a.csv", [{"transaction_id": "T1"}, {"transaction_id": "T1"}])
    second = carrier_csv(tmp_path / "b.csv", [{"transaction_id": "T1"}, {"transaction_id": "T2"}])
    checks = [check(first, "carrier_csv")[1], check(second, "carrier_csv")[1]]
    again = hashing.repeated_per_file(
        [c.call_hashes for c in checks], lambda n, rows: checks[n].accepted.iloc[rows]
    )
    unique = pd.concat([c.accepted[~repeated] for c, repeated in zip(checks, again, strict=True)])
    duplicates = pd.concat(
        [
            part
            for c, repeated in zip(checks, again, strict=True)
            for part in (c.duplicates, c.accepted[repeated])
        ]
    )
    assert unique["transaction_id"].tolist() == ["T1", "T2"]
    assert duplicates[["source_file", "source_row"]].values.tolist() == [["a.csv", 3], ["b.csv", 2]]


def test_row_numbers_stay_true_when_the_sheet_starts_below_and_right_of_a1(tmp_path):
    book = Workbook()
    sheet = book.active
    for column, value in enumerate(XLSX_HEADER, start=2):
        sheet.cell(row=4, column=column, value=value)
    for line, leg_id in ((5, "L1"), (7, "L2")):  # line 6 left empty
        for column, value in enumerate(GOOD_LEG[:1] + [leg_id] + GOOD_LEG[2:], start=2):
            sheet.cell(row=line, column=column, value=value)
    book.save(tmp_path / "offset.xlsx")
    raw, checked = check(tmp_path / "offset.xlsx", "conferencing_xlsx")
    assert raw[["transaction_id", "source_row"]].values.tolist() == [
        ["L1", 5],
        ["L2", 7],
    ]  # the blank line is no CDR
    assert len(checked.accepted) == 2


def _run_and_file(run_id: str, work_dir: Path, path: Path) -> tuple[Run, FetchedFile]:
    """A run of October and one fetched carrier file, as validate_cdr_file receives them."""
    fetched = FetchedFile("cdr", "carrier", path.name, str(path), 0, 0, "0" * 64, "test")
    return Run("2026-10", run_id, str(work_dir)), fetched


def test_a_file_over_the_rejection_limit_fails_and_its_rows_stay_in_quarantine(
    tmp_path, postgres, monkeypatch
):
    import json

    from sqlalchemy import create_engine, select

    from cdr_billing.migrations import upgrade
    from cdr_billing.schema import quarantined_row
    from cdr_billing.tasks.validate import validate_cdr_file

    database = postgres.create_database("quarantine_limit")
    monkeypatch.setenv("AIRFLOW_CONN_BILLING_DB", json.dumps(postgres.connection(database)))
    upgrade(create_engine(postgres.url_of(database)))
    rows = [
        {"transaction_id": "T1"},
        {"transaction_id": "T2", "duration_of_usage": "-1"},
        {"transaction_id": "T3", "destination_party": "n/a"},
        {"transaction_id": "T4", "completion_status": "7"},
    ]
    path = carrier_csv(tmp_path / "carrier_cdr_202610.csv", rows)
    run, cdr_file = _run_and_file("run-q", tmp_path, path)
    with pytest.raises(
        FileValidationError,
        match=r"carrier_cdr_202610.csv: 3 of 4 rows \(75.0%\) failed validation",
    ) as failure:
        validate_cdr_file(run, cdr_file, CONFIG)
    assert "line 3 DURATION_OUT_OF_RANGE (+4670*****67)" in str(
        failure.value
    )  # numbers masked for the alert
    assert "+46701234567" not in str(failure.value)
    with create_engine(postgres.url_of(database)).connect() as conn:
        stored = conn.execute(
            select(quarantined_row.c.source_row, quarantined_row.c.reason_code).order_by(
                "source_row"
            )
        ).all()
    assert [tuple(r) for r in stored] == [
        (3, "DURATION_OUT_OF_RANGE"),
        (4, "BAD_NUMBER"),
        (5, "BAD_COMPLETION_STATUS"),
    ]


def test_short_and_long_rows_are_quarantined_by_line_and_never_padded(tmp_path):
    path = carrier_csv(
        tmp_path / "carrier.csv", [{"transaction_id": "T1", "revenue_share_percentage": "12.5"}] * 2
    )
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(",12.5,", ",12.5,,,")  # two fields too many
    lines[2] = lines[2].replace(
        "+46701234567,", "", 1
    )  # one field short: the share would move under another header
    path.write_text("".join(lines))
    raw, checked = check(path, "carrier_csv")
    assert checked.quarantined[["source_row", "reasons"]].values.tolist() == [
        [2, "BAD_FIELD_COUNT"],
        [3, "BAD_FIELD_COUNT"],
    ]


def test_a_cut_off_file_fails_its_task_with_a_mail_naming_the_file(tmp_path, monkeypatch):
    from cdr_billing.tasks import validate

    path = carrier_csv(
        tmp_path / "carrier_cdr_202610.csv", [{"transaction_id": "T1"}, {"transaction_id": "T2"}]
    )
    path.write_bytes(path.read_bytes()[:-25])
    mailed = []
    monkeypatch.setattr(validate, "send", lambda config, alert: mailed.append(alert))
    run, cdr_file = _run_and_file("run-cut", tmp_path, path)
    with pytest.raises(
        FileValidationError,
        match="carrier_cdr_202610.csv: the last line has no line break: the file looks",
    ):
        validate.validate_cdr_file(run, cdr_file, CONFIG)
    assert len(mailed) == 1 and "carrier_cdr_202610.csv" in str(vars(mailed[0]))


def test_a_nul_in_a_transaction_id_is_quarantined_not_loaded(tmp_path):
    _, checked = check(
        carrier_csv(tmp_path / "nul.csv", [{"transaction_id": "T\x001"}, {"transaction_id": "T2"}]),
        "carrier_csv",
    )
    assert checked.quarantined[["source_row", "reasons"]].values.tolist() == [[2, "BAD_CHARACTER"]]
    assert checked.accepted["transaction_id"].tolist() == ["T2"]
