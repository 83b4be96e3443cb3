"""A corpus of hostile CDR files and values, made here in each shipped profile's format and read
and checked as the validate stage does. Each case states its exact outcome: the rows accepted,
each quarantined row's line and reasons, or the file-level FileReadError (which names the file).
The xlsx attacks are also read in a process under a 2 GiB address-space limit: a clear error, no
signal."""

from __future__ import annotations

import io
import re
import resource
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from openpyxl import Workbook

from carrier_rows import HEADER, row
from cdr_billing import read
from cdr_billing.config import load_config
from cdr_billing.months import BillingMonth
from cdr_billing.read import FileReadError, read_cdr_file
from cdr_billing.validate import REASONS, check_rows
from cdr_devkit.sample_data import CONFERENCING_HEADER

CONFIG = load_config()
OCTOBER = BillingMonth(2026, 10)
PBX_HEADER = "Samtals-ID;Anknytning;Uppringt nummer;Starttid;Längd;Status;Kommentar"
LEG = [
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


def carrier(*lines: str, end: str = "\n") -> bytes:
    return end.join([HEADER, *lines, ""]).encode()


def pbx_row(
    transaction: str, start: str = "05.10.2026 09:00:00", length: str = "0:01:00", comment: str = ""
) -> str:
    return f"{transaction};EXT-1;0701234567;{start};{length};ANSWERED;{comment}"


def pbx(*lines: str) -> bytes:
    return "\n".join([PBX_HEADER, *lines, ""]).encode("latin-1")


def workbook(rows: list[list], header: list[str] = CONFERENCING_HEADER) -> bytes:
    book = Workbook()
    book.active.append(["Usage report"])
    book.active.append(header)
    for values in rows:
        book.active.append(values)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def with_member(xlsx: bytes, name: str, edit: Callable[[bytes], bytes]) -> bytes:
    """The xlsx with one archive member rewritten (raw XML an Excel writer would not make)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(xlsx)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info.filename, edit(data) if info.filename == name else data)
    return out.getvalue()


SHEET = "xl/worksheets/sheet1.xml"


def far_cell(xlsx: bytes, reference: str, dimension: str | None = "A1:I4") -> bytes:
    """A value cell at `reference` added to the last row, the declared dimension set (or
    removed)."""

    def edit(xml: bytes) -> bytes:
        xml = xml.replace(
            b"</row></sheetData>",
            f'<c r="{reference}" t="inlineStr"><is><t>x</t></is></c></row></sheetData>'.encode(),
        )
        replacement = b"" if dimension is None else f'<dimension ref="{dimension}"/>'.encode()
        return re.sub(rb"<dimension [^>]*/>", replacement, xml)

    return with_member(xlsx, SHEET, edit)


def inline_cell(xlsx: bytes, cell: str, text: str) -> bytes:
    """The xlsx with the text of one cell replaced by an inline string, as written (escapes
    kept)."""
    pattern = re.compile(rf'<c r="{cell}"[^>]*?(?:/>|>.*?</c>)'.encode())
    return with_member(
        xlsx,
        SHEET,
        lambda xml: pattern.sub(
            f'<c r="{cell}" t="inlineStr"><is><t>{text}</t></is></c>'.encode(), xml
        ),
    )


def zip_bomb() -> bytes:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(workbook([LEG]))) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        target.writestr("xl/media/padding.bin", b"\0" * (64 << 20))  # 64 MiB in about 64 KiB
    return out.getvalue()


@dataclass(frozen=True)
class Rows:
    """The file is read: `accepted` rows, and these lines quarantined with these reasons."""

    accepted: int
    quarantined: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    """The file is refused whole: a FileReadError whose message starts with the file name and
    matches."""

    message: str


@dataclass(frozen=True)
class Case:
    profile: str
    content: Callable[[], bytes]
    outcome: Rows | Refused
    month: BillingMonth = OCTOBER


XLSX = "conferencing_xlsx"
CASES: dict[str, Case] = {
    # --- incomplete files, short and long rows
    "cut after the last row's last field": Case(
        "carrier_csv", lambda: carrier(row("T1"), row("T2"))[:-1], Refused("looks cut off")
    ),
    "cut inside a row": Case(
        "carrier_csv", lambda: carrier(row("T1"), row("T2"))[:-20], Refused("looks cut off")
    ),
    "header only, cut": Case("carrier_csv", lambda: HEADER.encode(), Refused("looks cut off")),
    "header only": Case("carrier_csv", lambda: carrier(), Rows(0)),
    "empty": Case("carrier_csv", lambda: b"", Refused("not a readable CSV file \\(it is empty\\)")),
    "a byte-order mark only": Case("carrier_csv", lambda: b"\xef\xbb\xbf", Refused("it is empty")),
    "a short row": Case(
        "carrier_csv",
        lambda: carrier(row("T1"), "T2,S2,voice", row("T3")),
        Rows(2, {3: "BAD_FIELD_COUNT"}),
    ),
    "a row one field short (a share would shift)": Case(
        "carrier_csv",
        lambda: carrier(row("T1", revenue_share_percentage="12.5").replace(",,", ",", 1)),
        Rows(0, {2: "BAD_FIELD_COUNT"}),
    ),
    "a long row (an unquoted comma)": Case(
        "carrier_csv",
        lambda: carrier(row("T1"), row("T2", additional_info="late, retried"), row("T3")),
        Rows(2, {3: "BAD_FIELD_COUNT"}),
    ),
    "short and long rows among blank lines": Case(
        "carrier_csv",
        lambda: carrier("", row("T1"), "", "T2", row("T3") + ",,", "", row("T4")),
        Rows(2, {5: "BAD_FIELD_COUNT", 6: "BAD_FIELD_COUNT"}),
    ),
    "a latin-1 short row": Case(
        "pbx_csv",
        lambda: pbx(pbx_row("P1"), "P2;EXT-1", pbx_row("P3")),
        Rows(2, {3: "BAD_FIELD_COUNT"}),
    ),
    "a latin-1 file cut off": Case(
        "pbx_csv", lambda: pbx(pbx_row("P1"), pbx_row("P2"))[:-1], Refused("looks cut off")
    ),
    "only blank and delimiter-only lines": Case(
        "carrier_csv", lambda: carrier("", ",,,", "   "), Rows(0)
    ),
    # --- control characters
    "a NUL in a transaction id": Case(
        "carrier_csv", lambda: carrier(row("T1\x00"), row("T2")), Rows(1, {2: "BAD_CHARACTER"})
    ),
    "a NUL at the end of an account (not trimmed away)": Case(
        "carrier_csv",
        lambda: carrier(row("T1", user_id="SUB-1\x00"), row("T2")),
        Rows(1, {2: "BAD_CHARACTER"}),
    ),
    "a vertical tab around an account": Case(
        "carrier_csv",
        lambda: carrier(row("T1", user_id="\x0bSUB-1\x0c"), row("T2")),
        Rows(1, {2: "BAD_CHARACTER"}),
    ),
    "DEL in a number": Case(
        "carrier_csv",
        lambda: carrier(row("T1", destination_party="+4670\x7f1234567")),
        Rows(0, {2: "BAD_CHARACTER;BAD_NUMBER"}),
    ),
    "an escape sequence in a text field": Case(
        "carrier_csv",
        lambda: carrier(row("T1", additional_info="\x1b[31mred"), row("T2")),
        Rows(1, {2: "BAD_CHARACTER"}),
    ),
    "a line feed in a quoted field": Case(
        "carrier_csv",
        lambda: carrier(row("T1", additional_info='"two\nlines"'), row("T2")),
        Rows(1, {2: "BAD_CHARACTER"}),
    ),
    "a CRLF in a quoted field of a CRLF file": Case(
        "carrier_csv",
        lambda: carrier(row("T1"), row("T2", additional_info='"a\r\nb"'), row("T3"), end="\r\n"),
        Rows(2, {3: "BAD_CHARACTER"}),
    ),
    "a tab inside and around values is fine": Case(
        "carrier_csv",
        lambda: carrier(row("T1", additional_info="a\tb", user_id="\tSUB-1")),
        Rows(1),
    ),
    "a NUL in a latin-1 comment": Case(
        "pbx_csv",
        lambda: pbx(pbx_row("P1", comment="V\xe4x\x00el"), pbx_row("P2")),
        Rows(1, {2: "BAD_CHARACTER"}),
    ),
    "a NUL in an xlsx cell (_x0000_)": Case(
        XLSX,
        lambda: inline_cell(workbook([LEG, ["C1", "L2", *LEG[2:]]]), "B4", "L1_x0000_"),
        Rows(1, {4: "BAD_CHARACTER"}),
    ),
    # --- line ends, encodings, headers
    "CR-only line ends": Case(
        "carrier_csv", lambda: carrier(row("T1"), row("T2"), end="\r"), Rows(2)
    ),
    "mixed LF and CRLF line ends": Case(
        "carrier_csv",
        lambda: (HEADER + "\r\n" + row("T1") + "\n" + row("T2") + "\r\n").encode(),
        Rows(2),
    ),
    "a UTF-8 byte-order mark": Case(
        "carrier_csv", lambda: b"\xef\xbb\xbf" + carrier(row("T1")), Rows(1)
    ),
    "UTF-16 under a UTF-8 profile": Case(
        "carrier_csv",
        lambda: carrier(row("T1")).decode().encode("utf-16"),
        Refused("not a readable CSV file"),
    ),
    "Latin-1 under a UTF-8 profile": Case(
        "carrier_csv",
        lambda: carrier(row("T1", additional_info="V\xe4xel")).decode().encode("latin-1"),
        Refused("not a readable CSV file"),
    ),
    "a column named twice (the first one counts)": Case(
        "carrier_csv", lambda: (HEADER + ",user_id\n" + row("T1") + ",SUB-2\n").encode(), Rows(1)
    ),
    "a missing required column": Case(
        "carrier_csv",
        lambda: carrier().replace(b"destination_party", b"destination"),
        Refused("missing required columns: destination_party"),
    ),
    "a header with stray spaces and capitals": Case(
        "carrier_csv", lambda: carrier(row("T1")).replace(b"user_id", b" USER_ID "), Rows(1)
    ),
    "a 100 KB cell on the Arrow path": Case(
        "carrier_csv", lambda: carrier(row("T1", additional_info="x" * 100_000)), Rows(1)
    ),
    "a 100 KB cell on the exact path": Case(
        "pbx_csv", lambda: pbx(pbx_row("P1", comment="x" * 100_000)), Rows(1)
    ),
    "a giant cell (10 MB), beyond pyarrow's block": Case(
        "carrier_csv",
        lambda: carrier(row("T1", additional_info="x" * 10_000_000)),
        Refused("field larger than field limit \\(131072\\)"),
    ),
    "a giant cell (1 MB) on the exact path": Case(
        "pbx_csv",
        lambda: pbx(pbx_row("P1", comment="x" * 1_000_000)),
        Refused("field larger than field limit"),
    ),
    # --- values
    "huge and odd durations": Case(
        "carrier_csv",
        lambda: carrier(
            *(
                row(f"T{n}", duration_of_usage=v)
                for n, v in enumerate(["inf", "1e400", "12345678901234567890", "-0", " 60 ", "+60"])
            )
        ),
        Rows(
            2, {2: "BAD_DURATION", 3: "BAD_DURATION", 4: "DURATION_OUT_OF_RANGE", 7: "BAD_DURATION"}
        ),
    ),
    "an hms duration of 20 digits of hours": Case(
        "pbx_csv",
        lambda: pbx(pbx_row("P1", length="99999999999999999999:00:00"), pbx_row("P2")),
        Rows(1, {2: "DURATION_OUT_OF_RANGE"}),
    ),
    "statuses and part numbers": Case(
        "carrier_csv",
        lambda: carrier(
            row("T1", completion_status="1e0"),
            row("T2", transaction_part_number="-1"),
            row("T3", completion_status="1.0"),
        ),
        Rows(1, {2: "BAD_COMPLETION_STATUS", 3: "BAD_PART_NUMBER"}),
    ),
    "timestamps: an epoch, a huge serial, February 30th": Case(
        "carrier_csv",
        lambda: carrier(
            *(
                row(f"T{n}", start_of_usage=v)
                for n, v in enumerate(["1790000000", "3000000", "2026-02-30T09:00:00Z"])
            )
        ),
        Rows(0, {2: "BAD_TIMESTAMP", 3: "BAD_TIMESTAMP", 4: "BAD_TIMESTAMP"}),
    ),
    "a local time the autumn change repeats": Case(
        "pbx_csv", lambda: pbx(pbx_row("P1", start="25.10.2026 02:30:00")), Rows(1)
    ),
    "a local time in the spring gap": Case(
        "pbx_csv",
        lambda: pbx(pbx_row("P1", start="29.03.2026 02:30:00")),
        Rows(0, {2: "NONEXISTENT_LOCAL_TIME"}),
        BillingMonth(2026, 3),
    ),
    "an xlsx cost of 9.3 trillion": Case(
        XLSX,
        lambda: workbook([[*LEG[:7], 9_300_000_000_000, "EUR"]]),
        Rows(0, {3: "COST_OUT_OF_RANGE"}),
    ),
    "xlsx dates as numbers out of range": Case(
        XLSX,
        lambda: workbook([[*LEG[:4], 3_000_000, *LEG[5:]], ["C1", "L2", *LEG[2:4], -5, *LEG[5:]]]),
        Rows(0, {3: "BAD_TIMESTAMP", 4: "BAD_TIMESTAMP"}),
    ),
    "an xlsx formula without a cached value": Case(
        XLSX, lambda: workbook([[*LEG[:7], "=G3*0.00075", "EUR"]]), Rows(0, {3: "BAD_COST"})
    ),
    # --- files that attack the xlsx reader
    "one cell at XFD1048576": Case(
        XLSX,
        lambda: far_cell(workbook([LEG]), "XFD1048576", "A1:XFD1048576"),
        Refused("declares 1,048,576 rows x 16,384 columns"),
    ),
    "a far cell under a small declared dimension": Case(
        XLSX,
        lambda: far_cell(workbook([LEG]), "XFD1048576"),
        Refused("uses cells up to row 1,048,576, column 16,384"),
    ),
    "a far row and no dimension": Case(
        XLSX,
        lambda: far_cell(workbook([LEG]), "A2000000", None),
        Refused("uses cells up to row 2,000,000"),
    ),
    "64 columns and 781,250 rows are allowed": Case(
        XLSX, lambda: far_cell(workbook([LEG]), "BL781250", None), Rows(1)
    ),
    "65 columns": Case(
        XLSX, lambda: far_cell(workbook([LEG]), "BM4", None), Refused("column 65, above the cap")
    ),
    "a zip bomb member": Case(
        XLSX,
        zip_bomb,
        Refused("member xl/media/padding.bin is compressed .* to 1, above the cap of 200"),
    ),
    "a CSV named .xlsx": Case(
        XLSX,
        lambda: carrier(row("T1")),
        Refused("not a readable xlsx file \\(not a zip archive\\)"),
    ),
    "a truncated xlsx": Case(
        XLSX, lambda: workbook([LEG])[:-200], Refused("not a readable xlsx file")
    ),
    "a sheet with no rows": Case(
        XLSX,
        lambda: with_member(
            workbook([]), SHEET, lambda x: re.sub(rb"<sheetData>.*</sheetData>", b"<sheetData/>", x)
        ),
        Refused("no header row"),
    ),
}


def outcome(path: Path, profile_name: str, month: BillingMonth) -> Rows:
    """Read and check a file; every row read is accounted for."""
    profile = CONFIG.profiles[profile_name]
    raw = read_cdr_file(path, profile).assign(source=profile_name)
    checked = check_rows(raw, profile, month, CONFIG.billing)
    assert len(raw) == len(checked.accepted) + len(checked.quarantined) + len(checked.duplicates)
    assert set(";".join(checked.quarantined["reasons"]).split(";")) - {""} <= set(REASONS)
    return Rows(
        len(checked.accepted),
        dict(zip(checked.quarantined["source_row"], checked.quarantined["reasons"], strict=True)),
    )


def written(tmp_path: Path, name: str, case: Case) -> Path:
    suffix = ".xlsx" if case.profile == XLSX else ".csv"
    path = tmp_path / (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + suffix)
    path.write_bytes(case.content())
    return path


@pytest.mark.parametrize("name", CASES)
def test_hostile_file(name, tmp_path):
    case = CASES[name]
    path = written(tmp_path, name, case)
    if isinstance(case.outcome, Refused):
        with pytest.raises(
            FileReadError, match=rf"^{re.escape(path.name)}: .*{case.outcome.message}"
        ):
            outcome(path, case.profile, case.month)
    else:
        assert outcome(path, case.profile, case.month) == case.outcome


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40


def test_a_quarantined_short_row_keeps_its_fields_by_position_and_no_row_shifts(tmp_path):
    path = tmp_path / "short.csv"
    path.write_bytes(
        carrier(
            row("T1", revenue_share_percentage="12.5"),
            "T2,S2",
            row("T3", revenue_share_percentage="12.5"),
        )
    )
    raw = read_cdr_file(path, CONFIG.profiles["carrier_csv"])
    assert raw[["transaction_id", "session_id", "user_id", "source_row"]].values.tolist() == [
        ["T1", "", "SUB-1", 2],
        ["T2", "S2", "", 3],
        ["T3", "", "SUB-1", 4],
    ]
    checked = check_rows(
        raw.assign(source="carrier_csv"), CONFIG.profiles["carrier_csv"], OCTOBER, CONFIG.billing
    )
    assert checked.accepted["revenue_share_bp"].tolist() == [1250, 1250]


def test_the_arrow_path_reads_a_file_with_a_bad_row_as_the_exact_reader_does(tmp_path, monkeypatch):
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        carrier(
            row("T1"), "T2,S2", "", row("T3") + ",x", row("T4\x00"), row("T5", user_id=" SUB-5 ")
        )
    )
    profile = CONFIG.profiles["carrier_csv"]
    assert read._read_csv_arrow(path, profile) is not None
    fast = read_cdr_file(path, profile)
    monkeypatch.setattr(read, "_read_csv_arrow", lambda *_: None)
    pd.testing.assert_frame_equal(fast, read_cdr_file(path, profile))


MEMORY_LIMIT = 2 << 30
READ_IN_A_CHILD = """
import sys
from pathlib import Path
from cdr_billing import read
from cdr_billing.config import load_config
if sys.argv[2] == "unguarded":
    read._check_xlsx_archive = lambda *_: None
try:
    read.read_cdr_file(Path(sys.argv[1]), load_config().profiles["conferencing_xlsx"])
except read.FileReadError as exc:
    print(exc)
    sys.exit(3)
"""


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def read_under_memory_limit(path: Path, mode: str = "guarded") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", READ_IN_A_CHILD, str(path), mode],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_address_space,
    )


@pytest.mark.parametrize(
    "name",
    ["one cell at XFD1048576", "a far cell under a small declared dimension", "a zip bomb member"],
)
def test_an_xlsx_attack_is_a_clear_error_within_2_gib(name, tmp_path):
    path = written(tmp_path, name, CASES[name])
    done = read_under_memory_limit(path)
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout.startswith(f"{path.name}: ")


def test_without_the_checks_the_far_cell_kills_the_reader(tmp_path):
    """The test above proves something: unguarded, calamine asks for 512 GiB and aborts."""
    path = written(tmp_path, "far", CASES["a far cell under a small declared dimension"])
    done = read_under_memory_limit(path, "unguarded")
    assert done.returncode == -signal.SIGABRT
