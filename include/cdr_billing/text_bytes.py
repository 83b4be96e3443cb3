"""Text columns as numpy bytes, for the parses that Arrow's string kernels do in many passes.

A column of one shape (timestamps of one width) is parsed with a handful of whole-array numpy
operations on its UTF-8 bytes instead. Each hand-rolled kernel here is kept because a
measurement shows the library slower on the benchmark month's values (docs/performance.md,
"Hand-rolled kernels and the libraries", measured by the devkit's `bench_kernels`), and each has
a property test against the library or the standard library (tests/unit/test_kernels_*.py):

- `iso_timestamps`: Arrow's strict cast to timestamp refuses a whole column for one impossible
  value, its `strptime` accepts 2026-02-30 (as March 2), pandas' ISO parser takes 5-6x as long;
- `without_separators`: one bytes scan before the regex, which most columns do not need;
- `control_character_rows`: one scan of the column's bytes before the regex, likewise.

Where Arrow was as fast or faster (`plain_numbers`, `replace_prefixes`), its functions are used.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

DIGIT_ZERO = ord("0")


def one_array(text: pd.Series) -> pa.Array:
    """A text column as one large_string array (chunks joined), nulls as ""."""
    values = pc.fill_null(pa.array(text, type=pa.large_string()), "")
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


SEPARATORS = (
    b" \t\n\v\f\r-()."  # what may be written between a phone number's digits: "+46 (70) 123-45.67"
)


def without_separators(numbers: pa.Array) -> pa.Array:
    """Phone numbers without the separators people write in them; `numbers`: one large_string
    array (returned as it is when no value holds one, the usual case: one bytes scan)."""
    written = offsets_and_data(numbers).data.tobytes()
    if not any(byte in written for byte in SEPARATORS):
        return numbers
    return pc.replace_substring_regex(numbers, r"[\s\-().]", "")


class ValueBytes(NamedTuple):
    """A string array's value offsets (len + 1, from 0) and the bytes they index."""

    offsets: np.ndarray
    data: np.ndarray


def offsets_and_data(values: pa.Array) -> ValueBytes:
    """The value offsets (len + 1, from 0) and the bytes they index, of a large_string array."""
    _, offset_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(
        offset_buffer, dtype=np.int64, count=len(values) + 1, offset=values.offset * 8
    )
    data = np.frombuffer(data_buffer or b"", dtype=np.uint8)[offsets[0] : offsets[-1]]
    return ValueBytes(offsets - offsets[0], data)


class FixedWidthRows(NamedTuple):
    """An (n, width) byte matrix of the values of one width (other rows zero), and their mask."""

    matrix: np.ndarray
    fits: np.ndarray


def fixed_width_rows(values: pa.Array, width: int) -> FixedWidthRows:
    """The values `width` bytes long as an (n, width) byte matrix (other rows zero), and a
    mask of those rows. No copy when every value has that width, the usual case."""
    offsets, data = offsets_and_data(values)
    fits = np.diff(offsets) == width
    if fits.all():
        return FixedWidthRows(data.reshape(len(values), width), fits)
    matrix = np.zeros((len(values), width), dtype=np.uint8)
    starts = offsets[:-1][fits]
    matrix[fits] = data[starts[:, None] + np.arange(width)]
    return FixedWidthRows(matrix, fits)


_MONTH_DAYS = np.array(
    [
        [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31],
        [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31],
    ]
)
_DAYS_BEFORE_MONTH = np.cumsum(_MONTH_DAYS, axis=1) - _MONTH_DAYS  # [leap, month]
_YEARS = np.arange(10_000)
_LEAP = (((_YEARS % 4 == 0) & (_YEARS % 100 != 0)) | (_YEARS % 400 == 0)).astype(np.int64)
_DAYS_BEFORE_YEAR = np.concatenate([[0], np.cumsum(365 + _LEAP)[:-1]])
_DAYS_BEFORE_YEAR -= _DAYS_BEFORE_YEAR[1970]  # days since 1970-01-01 of each year's first day
# Indexed by year * 13 + month (month 0: no days): days since 1970-01-01 before the month, and
# days in it.
_DAYS_BEFORE_YEAR_MONTH = (_DAYS_BEFORE_YEAR[:, None] + _DAYS_BEFORE_MONTH[_LEAP]).ravel()
_DAYS_IN_YEAR_MONTH = _MONTH_DAYS[_LEAP].ravel()


def _two_digit_table(low: int, high: int) -> np.ndarray:
    """Two bytes read as a little-endian uint16 -> the number their two ASCII digits make
    when it is from low to high, else -1."""
    table = np.full(1 << 16, -1, dtype=np.int16)
    for number in range(low, high + 1):
        table[(DIGIT_ZERO + number // 10) | (DIGIT_ZERO + number % 10) << 8] = number
    return table


# The two-digit fields of "YYYY-MM-DD?HH:MM:SS": (first column, the table that reads and
# range-checks them).
_CENTURY, _YEAR_OF_CENTURY, _MONTH, _DAY, _HOUR, _MINUTE, _SECOND = (
    (0, _two_digit_table(0, 99)),
    (2, _two_digit_table(0, 99)),
    (5, _two_digit_table(1, 12)),
    (8, _two_digit_table(1, 31)),
    (11, _two_digit_table(0, 23)),
    (14, _two_digit_table(0, 59)),
    (17, _two_digit_table(0, 59)),
)
_PUNCTUATION_COLUMNS = (4, 7, 10, 13, 16, 19)


def _two_digits(matrix: np.ndarray, field: tuple[int, np.ndarray]) -> np.ndarray:
    """A two-digit field of each row of a C-contiguous byte matrix (-1: not digits or out of
    range): one table lookup of its two bytes read as one uint16."""
    column, table = field
    rows, width = matrix.shape
    if not rows:
        return np.zeros(0, dtype=np.int16)
    return table.take(
        np.ndarray((rows,), dtype="<u2", buffer=matrix, offset=column, strides=(width,))
    )


class IsoTimestamps(NamedTuple):
    """Microseconds since the epoch (0 where not parsed), and a mask of the rows parsed."""

    micros: np.ndarray
    parsed: np.ndarray


def iso_timestamps(values: pa.Array, separator: str, zulu: bool) -> IsoTimestamps:
    """Microseconds since the epoch of "YYYY-MM-DD?HH:MM:SS" text (`separator` between date
    and time, "Z" after it when `zulu`), and a mask of the rows that are exactly that shape
    with a real date and time, proleptic Gregorian (others: 0). `values`: one large_string array."""
    matrix, fits = fixed_width_rows(values, 19 + zulu)
    fields = [
        _two_digits(matrix, f)
        for f in (_CENTURY, _YEAR_OF_CENTURY, _MONTH, _DAY, _HOUR, _MINUTE, _SECOND)
    ]
    ok = fits & (np.minimum.reduce(fields) >= 0)
    for column, mark in zip(
        _PUNCTUATION_COLUMNS, "-- ::".replace(" ", separator) + "Z" * zulu, strict=False
    ):
        ok &= matrix[:, column] == ord(mark)
    century, year_of_century, month, day, hour, minute, second = (
        field.astype(np.int32) for field in fields
    )
    year = century * 100 + year_of_century
    ok &= year >= 1
    year_month = np.where(ok, year * 13 + month, 1970 * 13 + 1)  # in the tables' range
    ok &= day <= _DAYS_IN_YEAR_MONTH[year_month]
    days = _DAYS_BEFORE_YEAR_MONTH[year_month] + (day - 1)
    seconds = days * 86_400 + (hour * 3_600 + minute * 60 + second)
    return IsoTimestamps(np.where(ok, seconds * 1_000_000, 0), ok)


def replace_prefixes(values: pa.Array, replacements: list[tuple[str, str]]) -> pa.Array:
    """Each value with its prefix replaced by the first (prefix, replacement) whose prefix it
    starts with; others as they are. `values`: one large_string array; so is the result.
    Arrow's functions, the last rule first so that an earlier one overrides it."""
    result = values
    for prefix, replacement in reversed(replacements):
        replaced = pc.binary_replace_slice(values, 0, len(prefix.encode()), replacement)
        result = pc.if_else(pc.starts_with(values, prefix), replaced, result)
    return result


class PlainNumbers(NamedTuple):
    """Values' numbers (0 where not plain digits), their lengths in bytes, a mask of the plain."""

    numbers: np.ndarray
    lengths: np.ndarray
    plain: np.ndarray


def plain_numbers(values: pa.Array, max_digits: int, leading_zero: bool = False) -> PlainNumbers:
    """Values of 1 to `max_digits` ASCII digits (not starting with 0 unless `leading_zero`): their
    numbers (0 elsewhere), the value lengths in bytes, a mask of those values. `values`: one
    large_string array. Arrow's functions (`ascii_is_decimal`: non-empty, ASCII digits only)."""
    lengths = pc.binary_length(values)
    fits = pc.and_(pc.ascii_is_decimal(values), pc.less_equal(lengths, max_digits))
    if not leading_zero:
        fits = pc.and_(fits, pc.invert(pc.starts_with(values, "0")))
    fits = pc.fill_null(fits, False)
    digits = values if pc.all(fits).as_py() else pc.if_else(fits, values, "0")
    return PlainNumbers(
        pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False),
        pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False),
        fits.to_numpy(zero_copy_only=False),
    )


CONTROL_CHARACTER = r"[\x00-\x08\x0a-\x1f\x7f]"  # RE2: a control character but tab


def control_character_rows(values: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """Which values hold a control character other than tab (None: none does). The column's bytes
    are scanned first, at memory speed (a control character is one byte below 0x20 or 0x7F in UTF-8,
    never part of another character); the regex runs only on a column where one may be."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    if not any(_may_hold_control_byte(chunk) for chunk in chunks):
        return None
    return pc.fill_null(pc.match_substring_regex(values, CONTROL_CHARACTER), False).to_numpy(
        zero_copy_only=False
    )


CACHED_BYTES = 1 << 18


def _may_hold_control_byte(chunk: pa.Array) -> bool:
    """Whether the data buffer of a string array (all of it: a slice's neighbours too) has a byte
    below 0x20 (tab included) or 0x7F; in slices of 256 KiB, which stay in the cache."""
    data = chunk.buffers()[2]
    if data is None:
        return False
    bytes_ = np.frombuffer(data, dtype=np.uint8)
    parts = (bytes_[start : start + CACHED_BYTES] for start in range(0, len(bytes_), CACHED_BYTES))
    return any(part.min() < 0x20 or (part == 0x7F).any() for part in parts)
