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
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cdr_billing.canonical import TEXT_FIELDS, required_fields
from cdr_billing.config import SourceProfile

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
    raise FileReadError(f"{path.name}: no header row with columns {sorted(wanted)} in the first {HEADER_SEARCH_ROWS} rows")


_SHEET_ENTRY = re.compile(r'<(?:\w+:)?sheet\b[^>]*?\bname="([^"]*)"[^>]*?\br:id="([^"]+)"')
_RELATION = re.compile(
    r'<Relationship\b[^>]*?\bId="([^"]+)"[^>]*?\bTarget="([^"]+)"|<Relationship\b[^>]*?\bTarget="([^"]+)"[^>]*?\bId="([^"]+)"'
)
_FIRST_VALUE_CELL = re.compile(
    r'<(?:\w+:)?c\b[^>]*?\br="[A-Z]+(\d+)"[^>]*?(?<!/)>(?:(?!</(?:\w+:)?c>).)*?<(?:\w+:)?(?:v|is)\b', re.S
)


def _first_data_row(path: Path, sheet: str | int) -> int:
    """The sheet line of the first cell with a value (calamine drops the empty lines above it)."""
    with zipfile.ZipFile(path) as archive:
        sheets = _SHEET_ENTRY.findall(archive.read("xl/workbook.xml").decode("utf-8", "replace"))
        relations = {m[0] or m[3]: m[1] or m[2] for m in _RELATION.findall(archive.read("xl/_rels/workbook.xml.rels").decode())}
        rel_id = sheets[sheet][1] if isinstance(sheet, int) else dict(sheets)[sheet]
        target = relations[rel_id].lstrip("/")
        with archive.open(target if target.startswith("xl/") else f"xl/{target}") as handle:
            head = handle.read(1 << 20).decode("utf-8", "replace")
    match = _FIRST_VALUE_CELL.search(head)
    return int(match.group(1)) if match else 1


def _read_xlsx(path: Path, profile: SourceProfile, wanted: set[str]) -> tuple[pd.DataFrame, int]:
    import fastexcel

    sheet = profile.sheet if profile.sheet is not None else 0
    try:
        grid = fastexcel.read_excel(str(path)).load_sheet(sheet, header_row=None, dtypes="string").to_pandas()
        first_line = _first_data_row(path, sheet)
    except Exception as exc:  # fastexcel and zipfile raise their own families of errors
        raise FileReadError(f"{path.name}: not a readable xlsx file ({exc})") from exc
    header_row = _find_header_row(grid.head(HEADER_SEARCH_ROWS), wanted, path)
    frame = grid.iloc[header_row + 1 :].reset_index(drop=True)
    frame.columns = [value if isinstance(value, str) else f"column {n + 1}" for n, value in enumerate(grid.iloc[header_row])]
    return frame, first_line + header_row


def _read_csv_exact(path: Path, profile: SourceProfile) -> tuple[pa.Table, np.ndarray]:
    """The reader for every CSV: Python's csv module, which counts the lines of each record
    (a quoted field may hold line breaks); short rows padded, blank lines skipped."""
    try:
        with path.open(newline="", encoding="utf-8-sig" if _is_utf8(profile.encoding) else profile.encoding) as handle:
            records = csv.reader(handle, delimiter=profile.delimiter)
            header = next((record for record in records if record), None)  # blank lines above it skipped
            if header is None:
                raise FileReadError(f"{path.name}: not a readable CSV file (it is empty)")
            rows, lines, line = [], [], records.line_num + 1
            for record in records:
                if len(record) > len(header):
                    raise FileReadError(f"{path.name}: line {line} has {len(record)} fields, the header {len(header)}")
                if record:
                    rows.append(record + [""] * (len(header) - len(record)))
                    lines.append(line)
                line = records.line_num + 1
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FileReadError(f"{path.name}: not a readable CSV file ({exc})") from exc
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(header)
    return pa.table([pa.array(c, pa.large_string()) for c in columns], names=header), np.array(lines, dtype=np.int64)


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8")


Trim = Callable[[pa.ChunkedArray], pa.ChunkedArray]
_TRIMMED_BY_ASCII_TRIM = b" \t\x0b\x0c"  # besides the line ends
_KEPT_BY_ASCII_TRIM = b"\x1c\x1d\x1e\x1f"  # trimmed by str.strip() and the UTF-8 trim, kept by the ASCII trim
_NOTABLE = b"\n\r" + _TRIMMED_BY_ASCII_TRIM + _KEPT_BY_ASCII_TRIM
_PLAIN_ASCII = bytes(byte for byte in range(128) if byte not in _NOTABLE)


def _notable_bytes(data: bytes) -> bytes:
    """The file's line feeds, carriage returns, whitespace and non-ASCII bytes, in one pass
    (0.1 s for 60 MB): usually a line feed per line and nothing else."""
    return data.translate(None, _PLAIN_ASCII)


def _record_lines(data: bytes, notable: bytes, records: int) -> np.ndarray | None:
    """The 1-based line of the header and of each of `records` records when each is one line
    (blank lines skipped): no bare carriage return, no blank first line; None otherwise."""
    if b"\r" in notable and data.count(b"\r") != data.count(b"\r\n"):
        return None
    total = notable.count(b"\n") + (not data.endswith(b"\n"))
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


def _read_csv_arrow(path: Path, profile: SourceProfile) -> tuple[pa.Table, np.ndarray, Trim] | None:
    """pyarrow's multi-threaded parser, every column as text, for a UTF-8 file whose records
    are one line each (checked: records = non-blank lines after the header); None when the
    file needs the exact reader (other encodings, short rows, multi-line fields, ...)."""
    if not _is_utf8(profile.encoding):
        return None
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    if not data or data[:1] in (b"\n", b"\r"):
        return None
    try:
        end = data.find(b"\n")
        header = next(csv.reader([(data[:end] if end >= 0 else data).decode()], delimiter=profile.delimiter))
        if len(set(header)) != len(header):
            return None
        table = pacsv.read_csv(
            pa.BufferReader(data),
            parse_options=pacsv.ParseOptions(delimiter=profile.delimiter),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.large_string())),
        )
    except (UnicodeDecodeError, csv.Error, pa.ArrowInvalid):
        return None
    notable = _notable_bytes(data)
    lines = _record_lines(data, notable, table.num_rows)
    if lines is None or any(not pa.types.is_large_string(t) for t in table.schema.types):
        return None
    return table, lines[1:], _trim_for(notable)


def _text_table(path: Path, profile: SourceProfile, wanted: set[str]) -> tuple[pa.Table, np.ndarray, Trim]:
    """The file's cells as text columns, each row's line in the file, and how to trim the cells."""
    if profile.format != "xlsx":
        return _read_csv_arrow(path, profile) or (*_read_csv_exact(path, profile), pc.utf8_trim_whitespace)
    frame, header_line = _read_xlsx(path, profile, wanted)
    columns = [pa.array(frame.iloc[:, n].fillna("").astype(str), type=pa.large_string()) for n in range(frame.shape[1])]
    table = pa.table(columns, names=[str(name) for name in frame.columns])
    return table, frame.index.to_numpy() + header_line + 1, pc.utf8_trim_whitespace


def _canonical_column(
    table: pa.Table, position: int | None, field: str, profile: SourceProfile, trim: Trim
) -> pa.ChunkedArray | pa.Array:
    """One canonical field: the mapped column stripped (or the profile's default), with the value map applied."""
    if position is None:
        return pa.repeat(pa.scalar(profile.defaults.get(field, ""), pa.large_string()), table.num_rows)
    values = trim(pc.fill_null(table.column(position), ""))
    mapping = profile.value_maps.get(field)
    if mapping:
        found = pc.index_in(values, value_set=pa.array(list(mapping), pa.large_string()))
        values = pc.if_else(pc.is_null(found), values, pc.take(pa.array(list(mapping.values()), pa.large_string()), found))
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
    no value in any mapped column are not CDR rows: they are skipped (and logged).
    """
    wanted = {_normalise_header(profile.columns[f]) for f in required_fields(profile.priced) if f in profile.columns}
    table, rows, trim = _text_table(path, profile, wanted)
    by_header: dict[str, int] = {}
    for n, name in enumerate(table.column_names):
        by_header.setdefault(_normalise_header(name), n)
    missing = [
        f"{field} (column {profile.columns.get(field)!r})"
        for field in required_fields(profile.priced)
        if field not in profile.defaults and _normalise_header(profile.columns.get(field, "")) not in by_header
    ]
    if missing:
        raise FileReadError(f"{path.name}: missing required columns: {', '.join(missing)}")
    positions = {field: by_header.get(_normalise_header(header)) for field, header in profile.columns.items()}
    canonical = {field: _canonical_column(table, positions.get(field), field, profile, trim) for field in TEXT_FIELDS}
    canonical["source_file"] = pa.repeat(pa.scalar(path.name, pa.large_string()), table.num_rows)
    canonical["source_row"] = pa.array(rows, type=pa.int64())
    blank = _blank_rows([canonical[f] for f in profile.columns if f in TEXT_FIELDS])
    skipped = 0 if blank is None else pc.sum(blank).as_py()
    table = pa.table(canonical)
    if skipped:
        log.info("%s: skipped %d blank lines (not CDR rows)", path.name, skipped)
        table = table.filter(pc.invert(blank))
    return table.to_pandas()
