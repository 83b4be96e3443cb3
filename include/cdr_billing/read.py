"""Read a provider's CDR file into a text table with canonical column names.

Every value is read as text (ids and phone numbers keep leading zeros and "+");
typing happens in `validate`. Excel goes through fastexcel (Rust, calamine), which reads
about 16x faster than openpyxl here.
"""

from __future__ import annotations

import codecs
import csv
import functools
import logging
import mmap
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cdr_billing.canonical import FIELDS_MATCH_HEADER, TEXT_FIELDS, required_fields
from cdr_billing.config import SourceProfile
from cdr_billing.text_bytes import control_character_rows

HEADER_SEARCH_ROWS = 30
log = logging.getLogger(__name__)


class FileReadError(ValueError):
    """A CDR file cannot be read as its source profile says."""


def _normalise_header(name: object) -> str:
    return str(name).strip().casefold()


def _find_header_row(preview: pd.DataFrame, wanted: set[str], path: Path) -> int:
    """Return the index of the first row holding every wanted header."""
    for index, row in preview.iterrows():
        if wanted <= {_normalise_header(v) for v in row if isinstance(v, str)}:
            return int(index)
    raise FileReadError(
        f"{path.name}: no header row with columns {sorted(wanted)} "
        f"in the first {HEADER_SEARCH_ROWS} rows"
    )


_SHEET_ENTRY = re.compile(r'<(?:\w+:)?sheet\b[^>]*?\bname="([^"]*)"[^>]*?\br:id="([^"]+)"')
_RELATION = re.compile(
    r'<Relationship\b[^>]*?\bId="([^"]+)"[^>]*?\bTarget="([^"]+)"'
    r'|<Relationship\b[^>]*?\bTarget="([^"]+)"[^>]*?\bId="([^"]+)"'
)
_FIRST_VALUE_CELL = re.compile(
    r'<(?:\w+:)?c\b[^>]*?\br="[A-Z]+(\d+)"[^>]*?(?<!/)>'
    r"(?:(?!</(?:\w+:)?c>).)*?<(?:\w+:)?(?:v|is)\b",
    re.S,
)


def _sheet_member(archive: zipfile.ZipFile, sheet: str | int) -> str:
    """The archive member of a sheet, by name or position, from the workbook and its relations."""
    sheets = _SHEET_ENTRY.findall(archive.read("xl/workbook.xml").decode("utf-8", "replace"))
    relations = {
        m[0] or m[3]: m[1] or m[2]
        for m in _RELATION.findall(archive.read("xl/_rels/workbook.xml.rels").decode())
    }
    rel_id = sheets[sheet][1] if isinstance(sheet, int) else dict(sheets)[sheet]
    target = relations[rel_id].lstrip("/")
    return target if target.startswith("xl/") else f"xl/{target}"


def _first_data_row(path: Path, sheet: str | int) -> int:
    """The sheet line of the first cell with a value (calamine drops the empty lines above it)."""
    with zipfile.ZipFile(path) as archive, archive.open(_sheet_member(archive, sheet)) as handle:
        head = handle.read(1 << 20).decode("utf-8", "replace")
    match = _FIRST_VALUE_CELL.search(head)
    return int(match.group(1)) if match else 1


# Caps on an xlsx file before calamine reads it: calamine allocates the rectangle from the
# first to the last cell used (32 bytes a cell), so one cell at XFD1048576 asked for 512 GiB
# and aborted the process. Excel's own limit is 1,048,576 rows.
MAX_XLSX_ROWS = 1_048_576
MAX_XLSX_COLUMNS = 64
MAX_XLSX_CELLS = 50_000_000  # cells written, and the rectangle they span (about 1.6 GB in calamine)
MAX_XLSX_UNCOMPRESSED = 2_000_000_000  # bytes, all members together
MAX_COMPRESSION_RATIO = (
    200  # a member's size over its compressed size, for members above RATIO_FREE_BYTES
)
RATIO_FREE_BYTES = 1 << 20
SHEET_CHUNK = 1 << 22
_DIMENSION = re.compile(
    rb'<(?:\w+:)?dimension\b[^>]*?\bref="\$?([A-Z]+)\$?([0-9]+)(?::\$?([A-Z]+)\$?([0-9]+))?"'
)
_ROOT_PREFIX = re.compile(rb"<(\w+:)?worksheet\b")
_REFERENCE = re.compile(rb'r="([A-Z]*)([0-9]+)"')  # a cell's or a row's


def _column_number(letters: bytes) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + letter - 64
    return number


# With the letters of a sheet's XML made "A" and its digits "0", a reference with a column beyond Z
# or a row from 1,000,000 on is one of these strings: rare (then every reference is read); without
# them the cells span less than 26 x 1,000,000, within MAX_XLSX_CELLS.
_AS_A_AND_0 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", b"A" * 26 + b"0" * 10)
_FAR_REFERENCES = (b'r="AA', b'r="A0000000', b'r="0000000')
_OVERLAP = 16


def _check_xlsx_archive(path: Path, sheet: str | int) -> None:
    """Refuse an xlsx file that would make calamine allocate beyond the caps, before it reads it:
    not a zip, members too large or too compressed (a zip bomb), a declared or used sheet area
    too large. Only the zip's directory and a streamed pass over the sheet (and over any member
    whose real size could exceed its declared one by much) are read, in bounded chunks."""
    if not zipfile.is_zipfile(path):
        raise FileReadError(f"{path.name}: not a readable xlsx file (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_members(path, archive.infolist())
            member = _sheet_member(archive, sheet)
            _check_sheet(path, archive, member)
            for info in archive.infolist():
                if info.filename != member and info.compress_size > RATIO_FREE_BYTES // 1024:
                    _drain(archive, info)  # zipfile stops at the declared size and checks the CRC
    except (
        zipfile.BadZipFile,
        KeyError,
        IndexError,
        OSError,
        EOFError,
        NotImplementedError,
    ) as exc:
        raise FileReadError(f"{path.name}: not a readable xlsx file ({exc})") from exc


def _check_members(path: Path, members: list[zipfile.ZipInfo]) -> None:
    total = sum(info.file_size for info in members)
    if total > MAX_XLSX_UNCOMPRESSED:
        raise FileReadError(
            f"{path.name}: the xlsx file unpacks to {total:,} bytes, "
            f"above the cap of {MAX_XLSX_UNCOMPRESSED:,}"
        )
    for info in members:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FREE_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise FileReadError(
                f"{path.name}: member {info.filename} is compressed {ratio:,.0f} to 1, "
                f"above the cap of {MAX_COMPRESSION_RATIO} (a zip bomb?)"
            )


def _drain(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    with archive.open(info) as handle:
        while handle.read(SHEET_CHUNK):
            pass


def _check_sheet(path: Path, archive: zipfile.ZipFile, member: str) -> None:
    """The sheet's declared dimension, then its cells: their count (cell tags; a few others such as
    <col> counted too) and, when a reference reaches beyond column Z or row 999,999, every
    reference. One pass in chunks (C-speed counts and finds, 0.7 s for a 146 MB sheet)."""
    cells, prefix, carry, far = 0, None, b"", False
    with archive.open(member) as handle:
        while chunk := handle.read(SHEET_CHUNK):
            if prefix is None:
                found = _ROOT_PREFIX.search(chunk)
                prefix = (found.group(1) or b"") if found else b""
                _check_dimension(path, _DIMENSION.search(chunk))
            cells += chunk.count(b"<" + prefix + b"c")
            if not far:
                shapes = (carry + chunk).translate(_AS_A_AND_0)
                far = any(reference in shapes for reference in _FAR_REFERENCES)
                carry = chunk[-_OVERLAP:]
    if cells > MAX_XLSX_CELLS:
        raise FileReadError(
            f"{path.name}: the sheet has {cells:,} cells, above the cap of {MAX_XLSX_CELLS:,}"
        )
    if far:
        _check_used_area(path, archive, member)


def _check_dimension(path: Path, dimension: re.Match | None) -> None:
    if dimension is None:
        return
    last_column, last_row = (
        dimension.group(3) or dimension.group(1),
        dimension.group(4) or dimension.group(2),
    )
    rows, columns = int(last_row), _column_number(last_column)
    if rows > MAX_XLSX_ROWS or columns > MAX_XLSX_COLUMNS or rows * columns > MAX_XLSX_CELLS:
        raise FileReadError(
            f"{path.name}: the sheet declares {rows:,} rows x {columns:,} columns, "
            f"above the cap of {MAX_XLSX_ROWS:,} rows, "
            f"{MAX_XLSX_COLUMNS} columns and {MAX_XLSX_CELLS:,} cells"
        )


def _check_used_area(path: Path, archive: zipfile.ZipFile, member: str) -> None:
    """The last row and column any reference uses (calamine allocates the rectangle of the cells
    used), reference by reference: a slow pass, for the rare sheet that reaches that far."""
    rows = columns = 0
    carry = b""
    with archive.open(member) as handle:
        while chunk := handle.read(SHEET_CHUNK):
            text, _, carry = (carry + chunk).rpartition(b">")
            for letters, digits in _REFERENCE.findall(text):
                rows, columns = max(rows, int(digits or 0)), max(columns, _column_number(letters))
    if rows > MAX_XLSX_ROWS or columns > MAX_XLSX_COLUMNS or rows * columns > MAX_XLSX_CELLS:
        raise FileReadError(
            f"{path.name}: the sheet uses cells up to row {rows:,}, column {columns:,}, "
            f"above the cap of {MAX_XLSX_ROWS:,} "
            f"rows, {MAX_XLSX_COLUMNS} columns and {MAX_XLSX_CELLS:,} cells"
        )


class _XlsxRows(NamedTuple):
    """A sheet's rows below the header, named by it, and the header's line in the sheet."""

    frame: pd.DataFrame
    header_line: int


def _read_xlsx(path: Path, profile: SourceProfile, wanted: set[str]) -> _XlsxRows:
    import fastexcel

    sheet = profile.sheet if profile.sheet is not None else 0
    _check_xlsx_archive(path, sheet)
    try:
        grid = (
            fastexcel.read_excel(str(path))
            .load_sheet(sheet, header_row=None, dtypes="string")
            .to_pandas()
        )
        first_line = _first_data_row(path, sheet)
    except Exception as exc:  # fastexcel and zipfile raise their own families of errors
        raise FileReadError(f"{path.name}: not a readable xlsx file ({exc})") from exc
    header_row = _find_header_row(grid.head(HEADER_SEARCH_ROWS), wanted, path)
    frame = grid.iloc[header_row + 1 :].reset_index(drop=True)
    frame.columns = [
        value if isinstance(value, str) else f"column {n + 1}"
        for n, value in enumerate(grid.iloc[header_row])
    ]
    return _XlsxRows(frame, first_line + header_row)


class _CsvRecords(NamedTuple):
    """A CSV file's records as text columns, each one's line, whether each fits the header."""

    table: pa.Table
    lines: np.ndarray
    fields_match: np.ndarray


def _read_csv_exact(path: Path, profile: SourceProfile) -> _CsvRecords:
    """The reader for every CSV: Python's csv module, which counts the lines of each record
    (a quoted field may hold line breaks); blank lines skipped. A record with another number
    of fields than the header is kept, flagged (False in `fields_match`), never padded into a
    bill."""
    try:
        with path.open(
            newline="", encoding="utf-8-sig" if _is_utf8(profile.encoding) else profile.encoding
        ) as handle:
            records = csv.reader(handle, delimiter=profile.delimiter)
            header = next(
                (record for record in records if record), None
            )  # blank lines above it skipped
            if header is None:
                raise FileReadError(f"{path.name}: not a readable CSV file (it is empty)")
            rows, lines, line = [], [], records.line_num + 1
            for record in records:
                if record:
                    rows.append(record)
                    lines.append(line)
                line = records.line_num + 1
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FileReadError(f"{path.name}: not a readable CSV file ({exc})") from exc
    fitted = [_fitted(record, len(header)) for record in rows]
    columns = list(zip(*fitted, strict=True)) if rows else [()] * len(header)
    table = pa.table([pa.array(c, pa.large_string()) for c in columns], names=header)
    fields_match = np.array([len(record) == len(header) for record in rows], dtype=bool)
    return _CsvRecords(table, np.array(lines, dtype=np.int64), fields_match)


def _exact_text_table(path: Path, profile: SourceProfile) -> _TextTable:
    """The exact reader's records, trimmed by the full UTF-8 whitespace trim."""
    records = _read_csv_exact(path, profile)
    return _TextTable(records.table, records.lines, pc.utf8_trim_whitespace, records.fields_match)


def _fitted(record: list[str], width: int) -> list[str]:
    """A record's fields by position in the header's width, only to show a quarantined row's
    values."""
    return record[:width] + [""] * (width - len(record))


def _require_final_line_break(path: Path) -> None:
    """A CSV file is complete only when its last line ends in a line break (LF, CRLF, or CR in a
    file of CR line ends): a transfer cut off mid-row must not bill the row's first fields."""
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(size - len(codecs.BOM_UTF8), 0))
        tail = handle.read()
    if size == 0 or tail == codecs.BOM_UTF8:
        return  # empty: the reader says so
    if tail[-1:] not in (b"\n", b"\r"):
        raise FileReadError(
            f"{path.name}: the last line has no line break: "
            "the file looks cut off (incomplete), not read"
        )


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8")


Trim = Callable[[pa.ChunkedArray], pa.ChunkedArray]
_TRIMMED_BY_ASCII_TRIM = b" \t\x0b\x0c"  # besides the line ends
_KEPT_BY_ASCII_TRIM = (
    b"\x1c\x1d\x1e\x1f"  # trimmed by str.strip() and the UTF-8 trim, kept by the ASCII trim
)
_OTHER_CONTROLS = bytes([*range(0x00, 0x09), *range(0x0E, 0x1C), 0x7F])
_NOTABLE = b"\n\r" + _TRIMMED_BY_ASCII_TRIM + _KEPT_BY_ASCII_TRIM + _OTHER_CONTROLS
_PLAIN_ASCII = bytes(byte for byte in range(128) if byte not in _NOTABLE)


# A file's bytes: a memory map of it (a view without its BOM), or bytes.
FileBytes = bytes | memoryview
_NOTABLE_CHUNK = 1 << 23  # bytes translated at a time (a heap block, reused chunk by chunk)


def _file_bytes(path: Path) -> FileBytes:
    """The file's bytes without a UTF-8 BOM, memory-mapped: the page cache's pages, where reading
    them into a new 130 MB buffer (a 1M-call file) cost a fresh task process 0.1-0.4 s of
    system time faulting its pages in, and that much more memory."""
    with path.open("rb") as handle:
        if handle.seek(0, 2) == 0:
            return b""  # an empty file cannot be mapped
        view = memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
    return view[len(codecs.BOM_UTF8) :] if view[:3] == codecs.BOM_UTF8 else view


def _first_line_end(data: FileBytes) -> int:
    """The position of the first line feed, -1 if none (a memory view has no find)."""
    for start in range(0, len(data), 1 << 16):
        found = bytes(data[start : start + (1 << 16)]).find(b"\n")
        if found >= 0:
            return start + found
    return -1


def _notable_bytes(data: FileBytes) -> bytes:
    """The file's line feeds, carriage returns, whitespace, control and non-ASCII bytes, in one
    pass (0.1 s for 60 MB): usually a line feed per line and nothing else."""
    return b"".join(
        bytes(data[start : start + _NOTABLE_CHUNK]).translate(None, _PLAIN_ASCII)
        for start in range(0, len(data), _NOTABLE_CHUNK)
    )


def _record_lines(data: FileBytes, notable: bytes, records: int) -> np.ndarray | None:
    """The 1-based line of the header and of each of `records` records when each is one line
    (blank lines skipped): no bare carriage return, no blank first line; None otherwise."""
    if b"\r" in notable:
        whole = bytes(data)
        if whole.count(b"\r") != whole.count(b"\r\n"):
            return None
    total = notable.count(b"\n") + (data[-1:] != b"\n")
    if records == total - 1:  # a record per line: no blank line, no line break inside a field
        return np.arange(1, total + 1, dtype=np.int64)
    bytes_ = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(bytes_ == 10)
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [len(bytes_)]))
    lengths = stops - starts
    lengths -= (lengths > 0) & (bytes_[np.maximum(stops - 1, 0)] == 13)
    lines = np.flatnonzero(lengths > 0) + 1
    return lines if len(lines) == records + 1 and lines[0] == 1 else None


def _trim_for(notable: bytes) -> Trim:
    """The cheapest whitespace trim that equals `pc.utf8_trim_whitespace` on this file's
    values (records of one line each; `notable`: its _notable_bytes): none when no value can
    start or end with whitespace."""
    if not notable.isascii() or any(bytes([byte]) in notable for byte in _KEPT_BY_ASCII_TRIM):
        return pc.utf8_trim_whitespace
    if any(bytes([byte]) in notable for byte in _TRIMMED_BY_ASCII_TRIM):
        return pc.ascii_trim_whitespace
    return lambda values: values


@dataclass(frozen=True)
class _TextTable:
    """A file's cells as text columns; each row's line in the file; how to trim the cells;
    whether each row has the header's number of fields; whether a cell may hold a control
    character."""

    table: pa.Table
    lines: np.ndarray
    trim: Trim
    fields_match: np.ndarray
    may_hold_controls: bool = True


def _holds_control_characters(notable: bytes) -> bool:
    """Whether a file of one-line records (`notable`: its _notable_bytes) has a control
    character other than tab in some value (its line ends aside)."""
    return any(
        bytes([byte]) in notable for byte in b"\x0b\x0c" + _KEPT_BY_ASCII_TRIM + _OTHER_CONTROLS
    )


@dataclass(frozen=True)
class _InvalidRows:
    """The records pyarrow's parser skipped for their number of fields: 1-based record numbers
    (the header is 1, blank lines not counted; None when parsed in parallel) and texts."""

    numbers: list[int | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def skip(self, row: pacsv.InvalidRow) -> str:
        self.numbers.append(row.number)
        self.texts.append(row.text)
        return "skip"


class _ArrowParse(NamedTuple):
    """The records pyarrow's parser read, and those it skipped for their number of fields."""

    table: pa.Table
    invalid: _InvalidRows


def _parse_arrow(
    data: FileBytes, header: list[str], delimiter: str, use_threads: bool
) -> _ArrowParse:
    invalid = _InvalidRows()
    table = pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pacsv.ReadOptions(use_threads=use_threads),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid.skip),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.large_string())),
    )
    return _ArrowParse(table, invalid)


class _RestoredRecords(NamedTuple):
    """Every record in its place, and a mask of those with the header's number of fields."""

    table: pa.Table
    fields_match: np.ndarray


def _with_invalid_rows(table: pa.Table, invalid: _InvalidRows, delimiter: str) -> _RestoredRecords:
    """The parsed records with the skipped ones put back in their places (their fields by position,
    to show in quarantine), and which records have the header's number of fields."""
    total = table.num_rows + len(invalid.texts)
    places = np.array(invalid.numbers, dtype=np.int64) - 2  # the header is record 1
    fields_match = np.ones(total, dtype=bool)
    fields_match[places] = False
    width = table.num_columns
    fitted = [
        _fitted(next(csv.reader([text], delimiter=delimiter), []), width) for text in invalid.texts
    ]
    skipped = pa.table(
        [pa.array(column, pa.large_string()) for column in zip(*fitted, strict=True)],
        names=table.column_names,
    )
    order = np.empty(total, dtype=np.int64)
    order[fields_match] = np.arange(table.num_rows)
    order[places] = table.num_rows + np.arange(len(places))
    return _RestoredRecords(pa.concat_tables([table, skipped]).take(order), fields_match)


def _read_csv_arrow(path: Path, profile: SourceProfile) -> _TextTable | None:
    """pyarrow's multi-threaded parser, every column as text, for a UTF-8 file whose records
    are one line each (checked: records = non-blank lines after the header); None when the
    file needs the exact reader (other encodings, multi-line fields, ...). Records with another
    number of fields than the header are skipped by the parser and, when there are any, the file
    is parsed again on one thread, which numbers them, to put them back flagged."""
    if not _is_utf8(profile.encoding):
        return None
    data = _file_bytes(path)
    if not data or data[:1] in (b"\n", b"\r"):
        return None
    try:
        end = _first_line_end(data)
        header = next(
            csv.reader(
                [bytes(data[:end] if end >= 0 else data).decode()], delimiter=profile.delimiter
            )
        )
        if len(set(header)) != len(header):
            return None
        table, invalid = _parse_arrow(data, header, profile.delimiter, use_threads=True)
        if invalid.texts:
            table, invalid = _parse_arrow(data, header, profile.delimiter, use_threads=False)
    except (UnicodeDecodeError, csv.Error, pa.ArrowInvalid):
        return None
    notable = _notable_bytes(data)
    lines = _record_lines(data, notable, table.num_rows + len(invalid.texts))
    if (
        lines is None
        or any(not pa.types.is_large_string(t) for t in table.schema.types)
        or None in invalid.numbers
    ):
        return None
    fields_match = np.ones(table.num_rows, dtype=bool)
    if invalid.texts:
        table, fields_match = _with_invalid_rows(table, invalid, profile.delimiter)
    return _TextTable(
        table, lines[1:], _trim_for(notable), fields_match, _holds_control_characters(notable)
    )


def _text_table(path: Path, profile: SourceProfile, wanted: set[str]) -> _TextTable:
    if profile.format != "xlsx":
        text = _read_csv_arrow(path, profile) or _exact_text_table(path, profile)
        _require_final_line_break(
            path
        )  # after the read: a file in another encoding is named as such
        return text
    frame, header_line = _read_xlsx(path, profile, wanted)
    columns = [
        pa.array(frame.iloc[:, n].fillna("").astype(str), type=pa.large_string())
        for n in range(frame.shape[1])
    ]
    table = pa.table(columns, names=[str(name) for name in frame.columns])
    rows = frame.index.to_numpy() + header_line + 1
    return _TextTable(table, rows, pc.utf8_trim_whitespace, np.ones(len(rows), dtype=bool))


def _canonical_column(
    table: pa.Table, position: int | None, field: str, profile: SourceProfile, text: _TextTable
) -> pa.ChunkedArray | pa.Array:
    """One canonical field: the mapped column stripped (or the profile's default), with the value
    map applied. A value holding a control character keeps it at either end, for the row check to
    see."""
    if position is None:
        return pa.repeat(
            pa.scalar(profile.defaults.get(field, ""), pa.large_string()), table.num_rows
        )
    written = pc.fill_null(table.column(position), "")
    values = text.trim(written)
    controls = control_character_rows(written) if text.may_hold_controls else None
    if controls is not None:
        values = pc.if_else(controls, written, values)
    mapping = profile.value_maps.get(field)
    if mapping:
        found = pc.index_in(values, value_set=pa.array(list(mapping), pa.large_string()))
        values = pc.if_else(
            pc.is_null(found),
            values,
            pc.take(pa.array(list(mapping.values()), pa.large_string()), found),
        )
    return values


def _blank_rows(columns: list[pa.ChunkedArray | pa.Array]) -> pa.ChunkedArray | pa.Array | None:
    """Rows with no value in any of the columns; None when the first column rules out every row."""
    blank = pc.equal(columns[0], "")
    if not pc.any(blank).as_py():
        return None
    return functools.reduce(pc.and_, [pc.equal(column, "") for column in columns[1:]], blank)


def read_cdr_file(path: Path, profile: SourceProfile) -> pd.DataFrame:
    """Read one CDR file: canonical text columns plus source_file and source_row.

    source_row is the 1-based line of the row in the file as a person opens it. Lines with
    no value in any mapped column are not CDR rows: they are skipped (and logged). A CSV row
    with another number of fields than the header is kept, its fields by position, with
    FIELDS_MATCH_HEADER False (quarantined as BAD_FIELD_COUNT); a CSV file whose last line has
    no line break is refused as cut off.
    """
    wanted = {
        _normalise_header(profile.columns[f])
        for f in required_fields(profile.priced)
        if f in profile.columns
    }
    text = _text_table(path, profile, wanted)
    table = text.table
    by_header: dict[str, int] = {}
    for n, name in enumerate(table.column_names):
        by_header.setdefault(_normalise_header(name), n)
    missing = [
        f"{field} (column {profile.columns.get(field)!r})"
        for field in required_fields(profile.priced)
        if field not in profile.defaults
        and _normalise_header(profile.columns.get(field, "")) not in by_header
    ]
    if missing:
        raise FileReadError(f"{path.name}: missing required columns: {', '.join(missing)}")
    positions = {
        field: by_header.get(_normalise_header(header)) for field, header in profile.columns.items()
    }
    canonical = {
        field: _canonical_column(table, positions.get(field), field, profile, text)
        for field in TEXT_FIELDS
    }
    canonical["source_file"] = pa.repeat(pa.scalar(path.name, pa.large_string()), table.num_rows)
    canonical["source_row"] = pa.array(text.lines, type=pa.int64())
    canonical[FIELDS_MATCH_HEADER] = pa.array(text.fields_match, type=pa.bool_())
    blank = _blank_rows([canonical[f] for f in profile.columns if f in TEXT_FIELDS])
    skipped = 0 if blank is None else pc.sum(blank).as_py()
    table = pa.table(canonical)
    if skipped:
        log.info("%s: skipped %d blank lines (not CDR rows)", path.name, skipped)
        table = table.filter(pc.invert(blank))
    return table.to_pandas()
