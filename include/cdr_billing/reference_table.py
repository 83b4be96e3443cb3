"""Reference tables (tariff, entitlements) read as text, each row indexed by its line in the file.

CSV files must be UTF-8 (a byte-order mark is allowed): a file in another encoding would
otherwise be read as wrong text or fail with a bare UnicodeDecodeError, so it is refused
with the file, what was found and the line. Every cell is text, exactly as written (no
number or missing-value guessing); a short row gets empty cells, a long one is refused.
Excel files (.xlsx, .xlsm) are read with fastexcel, the first sheet, every cell as text.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import pandas as pd

EXCEL_SUFFIXES = (".xlsx", ".xlsm")
# UTF-32 LE first: its mark begins with UTF-16 LE's.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
EXPECTED = "reference files must be UTF-8"


def read_table(path: Path, error: type[ValueError]) -> pd.DataFrame:
    """The file's rows as text columns, indexed by the line (CSV) or row (Excel) each row
    starts on, the header being line 1; problems raise `error` naming the file."""
    if path.suffix.lower() in EXCEL_SUFFIXES:
        return _read_excel(path)
    return _read_csv(path, _utf8_text(path, path.read_bytes(), error), error)


def _read_excel(path: Path) -> pd.DataFrame:
    import fastexcel

    sheet = fastexcel.read_excel(str(path)).load_sheet(0, dtypes="string").to_pandas().fillna("")
    return sheet.set_axis(pd.RangeIndex(2, len(sheet) + 2), axis="index")


def _utf8_text(path: Path, data: bytes, error: type[ValueError]) -> str:
    """The file's text; anything but UTF-8 is refused with what was found."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            raise error(f"{path.name}: starts with a {encoding} byte-order mark; {EXPECTED}")
    body = data.removeprefix(codecs.BOM_UTF8)
    skipped = len(data) - len(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skipped + exc.start
        raise error(
            f"{path.name} line {_line_at(data, offset)}: "
            f"byte {offset} (0x{data[offset]:02x}) is not UTF-8 "
            f"(Latin-1 or Windows-1252?); {EXPECTED}"
        ) from None
    if "\x00" in text:
        offset = data.index(b"\x00")
        raise error(
            f"{path.name} line {_line_at(data, offset)}: a NUL byte at byte {offset} "
            f"(UTF-16 without a byte-order mark?); {EXPECTED}"
        )
    return text


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _read_csv(path: Path, text: str, error: type[ValueError]) -> pd.DataFrame:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise error(f"{path.name}: the file is empty (no header line)")
    # unnamed columns are ignored
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise error(f"{path.name} line 1: columns {repeated} appear more than once in the header")
    rows, lines, line = [], [], reader.line_num
    for row in reader:
        line, first_line = reader.line_num, line + 1
        if not row:  # a blank line
            continue
        if len(row) > len(header):
            raise error(
                f"{path.name} line {first_line}: "
                f"{len(row)} values, the header has {len(header)} columns"
            )
        rows.append(row + [""] * (len(header) - len(row)))
        lines.append(first_line)
    return pd.DataFrame(rows, index=pd.Index(lines, dtype="int64"), columns=header, dtype="str")
