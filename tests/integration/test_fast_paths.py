"""The fast paths (pyarrow's CSV parser, Arrow parsing of the usual value shapes) give exactly
what the general readers give, and hand every file or value they cannot prove to them."""

from __future__ import annotations

import re
from dataclasses import replace

import pandas as pd
import pytest

from carrier_rows import HEADER, row
from cdr_billing import read
from cdr_billing.canonical import CARRIER_FIELDS
from cdr_billing.config import load_config
from cdr_billing.validate import (
    _parse_durations,
    _parse_general,
    parse_durations,
    parse_statuses,
    parse_timestamps,
)

PROFILE = load_config().profiles["carrier_csv"]


# name: (file bytes, whether the Arrow reader may take it)
FILES = {
    "plain": ((HEADER + "\n" + row("T1") + "\n" + row("T2") + "\n").encode(), True),
    "crlf": ((HEADER + "\r\n" + row("T1") + "\r\n" + row("T2") + "\r\n").encode(), True),
    "byte order mark": (b"\xef\xbb\xbf" + (HEADER + "\n" + row("T1") + "\n").encode(), True),
    "blank lines": ((HEADER + "\n\n" + row("T1") + "\n\r\n\n" + row("T2") + "\n\n").encode(), True),
    "quoted comma": ((HEADER + "\n" + row("T1", additional_info='"a, b"') + "\n").encode(), True),
    "padded values": ((HEADER + "\n" + row(" T1 ", user_id=" SUB-1\t") + "\n").encode(), True),
    "ascii separators": (
        (HEADER + "\n" + row("\x1cT1\x1f", user_id="\x0bSUB-1\x0c") + "\n").encode(),
        True,
    ),
    "unicode spaces": (
        (HEADER + "\n" + row("\u2003T1\u00a0", additional_info="Malmö ") + "\n").encode(),
        True,
    ),
    "inner spaces only": (
        (HEADER + "\n" + row("T1", additional_info='"dropped, retried"') + "\n").encode(),
        True,
    ),
    "empty row of commas": (
        (HEADER + "\n" + "," * (len(CARRIER_FIELDS) - 1) + "\n" + row("T1") + "\n").encode(),
        True,
    ),
    "quoted newline": (
        (
            HEADER + "\n" + row("T1", additional_info='"two\nlines"') + "\n" + row("T2") + "\n"
        ).encode(),
        False,
    ),
    "short row": ((HEADER + "\n" + row("T1") + "\n" + "T2,S2\n" + row("T3") + "\n").encode(), True),
    "long row": (
        (HEADER + "\n" + row("T1") + "\n" + row("T2") + ",x\n" + row("T3") + "\n").encode(),
        True,
    ),
    "bare carriage return": ((HEADER + "\r" + row("T1") + "\r").encode(), False),
    "blank first line": (("\n" + HEADER + "\n" + row("T1") + "\n").encode(), False),
    "whitespace-only line": (
        (HEADER + "\n" + row("T1") + "\n   \n" + row("T2") + "\n").encode(),
        True,
    ),
}


@pytest.mark.parametrize("name", FILES)
def test_arrow_reader_equals_the_exact_reader_or_declines(name, tmp_path, monkeypatch):
    content, fast = FILES[name]
    path = tmp_path / f"{name.replace(' ', '_')}.csv"
    path.write_bytes(content)
    assert (read._read_csv_arrow(path, PROFILE) is not None) is fast
    ours = read.read_cdr_file(path, PROFILE)
    monkeypatch.setattr(read, "_read_csv_arrow", lambda *_: None)
    exact = read.read_cdr_file(path, PROFILE)
    pd.testing.assert_frame_equal(ours, exact)
    lines = re.split(r"\r\n|\r|\n", content.decode("utf-8-sig"))
    for transaction, line in zip(ours["transaction_id"], ours["source_row"], strict=True):
        assert lines[line - 1].split(",")[0].strip() == transaction.strip(), (
            f"{name}: row of {transaction} is line {line}"
        )


def test_arrow_reader_keeps_ids_as_written(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text(
        HEADER + "\n" + row("00123", user_id="007", destination_party="+46701234567") + "\n"
    )
    frame = read.read_cdr_file(path, PROFILE)
    assert read._read_csv_arrow(path, PROFILE) is not None
    assert frame.loc[0, ["transaction_id", "user_id", "destination_party"]].tolist() == [
        "00123",
        "007",
        "+46701234567",
    ]


def test_other_encodings_take_the_exact_reader(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "\n" + row("T1", additional_info="Malmö") + "\n").encode("latin-1"))
    profile = replace(PROFILE, encoding="latin-1")
    assert read._read_csv_arrow(path, profile) is None
    assert read.read_cdr_file(path, profile).loc[0, "transaction_id"] == "T1"


TIMES = [
    "2026-10-05T09:00:00Z",
    "2026-10-05 09:00:00",
    "2026-10-05T09:00:00+02:00",
    "2026-02-30T09:00:00Z",
    "2026-13-40T99:00:00Z",
    "46000.5",
    "",
    "soon",
    "2026-10-25 02:30:00",
    "2026-03-29 02:30:00",
    "2026-10-05T09:00:00.250Z",
    "2026-10-05T09:00Z",
    "2024-02-29T23:59:59Z",
    "2100-02-29T00:00:00Z",
    "2026-10-05T24:00:00Z",
    "2026-10-05 09:60:00",
    "2026-10-05T09:00:60Z",
    "0000-01-01T00:00:00Z",
    "1600-03-01 00:00:00",
    "2026-1O-05T09:00:00Z",
    "2026-10-05x09:00:00Z",
    "2026-10-05 09:00:00Z",
    "1000000000",
    "1e300",
    "-5",
    "inf",
]


def test_timestamps_fast_path_equals_the_general_parser():
    text = pd.Series(TIMES * 3, index=range(100, 100 + 3 * len(TIMES)), dtype="str")
    fast = parse_timestamps(text, "Europe/Stockholm")
    general = _parse_general(text, "Europe/Stockholm")
    pd.testing.assert_series_equal(fast, general, check_names=False)
    unreadable = {
        "2026-02-30T09:00:00Z",
        "2026-13-40T99:00:00Z",
        "",
        "soon",
        "2100-02-29T00:00:00Z",
        "2026-10-05T24:00:00Z",
        "2026-10-05 09:60:00",
        "2026-10-05T09:00:60Z",
        "2026-1O-05T09:00:00Z",
        "2026-10-05x09:00:00Z",
        "1000000000",
        "1e300",
        "-5",
        "inf",
        "2026-03-29 02:30:00",  # skipped by the clock
    }
    # an epoch or a huge serial is no crash
    assert fast.isna().tolist() == [value in unreadable for value in text]


def test_durations_and_statuses_fast_paths_equal_the_general_parsers():
    durations = pd.Series(
        ["60", "0", "007", "-5", "60.0", "1e2", "", "x", "61.5", "999999999999999"],
        index=range(5, 15),
        dtype="str",
    )
    pd.testing.assert_series_equal(
        parse_durations(durations, "seconds"), _parse_durations(durations, "seconds", ".")
    )
    assert parse_durations(durations, "seconds").fillna(-1).tolist()[:6] == [
        60,
        0,
        7,
        -5,
        60,
        -1,  # "1e2": no exponents
    ]
    statuses = pd.Series(
        ["0", "1", "2", "3", "4", "1.0", "", "x", " 2"], index=range(3, 12), dtype="str"
    )
    assert parse_statuses(statuses).tolist() == [0, 1, 2, 3, pd.NA, 1, pd.NA, pd.NA, 2]
    assert str(parse_statuses(statuses).dtype) == "Int8"


def test_a_row_with_more_fields_than_the_header_is_kept_flagged_at_its_line(tmp_path):
    path = tmp_path / "long_row.csv"
    path.write_text(HEADER + "\n" + row("T1") + "\n" + row("T2") + ",extra\n")
    assert read._read_csv_arrow(path, PROFILE) is not None
    frame = read.read_cdr_file(path, PROFILE)
    assert frame[["transaction_id", "source_row", "fields_match_header"]].values.tolist() == [
        ["T1", 2, True],
        ["T2", 3, False],
    ]


def test_a_file_without_a_final_line_break_is_refused_as_cut_off(tmp_path):
    path = tmp_path / "cut.csv"
    path.write_text(HEADER + "\n" + row("T1") + "\n" + row("T2"))
    with pytest.raises(
        read.FileReadError, match="cut.csv: the last line has no line break: the file looks cut off"
    ):
        read.read_cdr_file(path, PROFILE)
