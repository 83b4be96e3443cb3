"""Property tests of `text_bytes` against the library or the standard library.

The hand-rolled kernels (`iso_timestamps`, `without_separators`, `control_character_rows`) are
kept because they measured faster than the library (docs/performance.md, "Hand-rolled kernels
and the libraries"): each must give what Python's `datetime` or Arrow's regex gives, on any
text. The functions built from Arrow's (`plain_numbers`, `replace_prefixes`) must give what
Python's string methods give.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from cdr_billing.text_bytes import (
    CACHED_BYTES,
    CONTROL_CHARACTER,
    control_character_rows,
    iso_timestamps,
    plain_numbers,
    replace_prefixes,
    without_separators,
)

EPOCH = datetime(1970, 1, 1)
SHAPES = {("T", True), (" ", False)}


def _array(values: list[str], sliced: bool) -> pa.Array:
    """`values` as a large_string array; `sliced`: a slice of a longer one (an offset other
    than 0, and neighbours the kernel must not read)."""
    if not sliced:
        return pa.array(values, pa.large_string())
    return pa.array(["\x00 2026-01-01T00:00:00Z", *values, "\x7f"], pa.large_string())[1:-1]


# --- iso_timestamps against datetime ------------------------------------------------------


def _by_datetime(value: str, separator: str, zulu: bool) -> int | None:
    """Microseconds since the epoch of "YYYY-MM-DD?HH:MM:SS[Z]" by Python's `datetime`; None when
    the text is not exactly that shape (ASCII digits, this separator, "Z" after it when `zulu`)
    or not a real date and time (year 0 included: `datetime` has none)."""
    shape = rf"[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}{separator}[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}"
    if re.fullmatch(shape + ("Z" if zulu else ""), value) is None:
        return None
    try:
        moment = datetime.fromisoformat(f"{value[:10]}T{value[11:19]}")
    except ValueError:
        return None
    return (moment - EPOCH) // timedelta(microseconds=1)


def _written(moment: datetime, separator: str, zulu: bool) -> str:
    return moment.replace(microsecond=0).isoformat(sep=separator) + ("Z" if zulu else "")


moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))


def _field(low: int, high: int, edges: list[int]) -> st.SearchStrategy[int]:
    """A field's number: in its range, or at an edge of it (a number one past it included)."""
    return st.integers(low, high) | st.sampled_from(edges)


# A date and a time, each real or with a field at an edge: impossible dates (2026-02-30,
# 2100-02-29) with real times, and impossible times (24:00:00, 10:60:00, 10:00:60).
years = _field(0, 9999, [0, 1, 4, 100, 1600, 1900, 2000, 2024, 2026, 2100, 9999])
dates = st.tuples(
    years, _field(1, 12, [0, 1, 2, 4, 12, 13, 99]), _field(1, 31, [0, 1, 28, 29, 32, 99])
) | st.tuples(years, st.integers(1, 12), st.sampled_from([29, 30, 31]))  # a month's end
times = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)) | st.tuples(
    _field(0, 23, [0, 23, 24, 99]), _field(0, 59, [0, 59, 60, 99]), _field(0, 59, [0, 59, 60, 99])
)
CHARACTERS = "0123456789T Z-:/.+a\x00\t\u00e9\u0661\uff10"


@st.composite
def timestamp_texts(draw, separator: str, zulu: bool) -> str:
    """Text near the shape: a real moment, fields out of range, one character changed, added
    or removed, the other shape, or any text."""
    moment = draw(moments)
    kind = draw(st.sampled_from(["fields", "fields", "real", "changed", "other shape", "any"]))
    if kind == "real":
        return _written(moment, separator, zulu)
    if kind == "fields":
        (year, month, day), (hour, minute, second) = draw(dates), draw(times)
        text = f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}"
        return text + ("Z" if zulu else "")
    if kind == "other shape":
        return _written(moment, "T" if separator == " " else " ", not zulu)
    if kind == "any":
        return draw(st.text(max_size=22))
    text = _written(moment, separator, zulu)
    at = draw(st.integers(0, len(text)))
    character = draw(st.sampled_from(CHARACTERS))
    edit = draw(st.sampled_from(["replace", "insert", "delete"]))
    if edit == "insert":
        return text[:at] + character + text[at:]
    if edit == "delete":
        return text[:at] + text[at + 1 :]
    return text[:at] + character + text[at + 1 :]


@st.composite
def timestamp_columns(draw) -> tuple[list[str], str, bool, bool]:
    separator, zulu = draw(st.sampled_from(sorted(SHAPES)))
    texts = timestamp_texts(separator, zulu)
    if draw(st.booleans()):  # every value of the shape's width: the kernel's no-copy path
        texts = moments.map(lambda moment: _written(moment, separator, zulu))
    return draw(st.lists(texts, max_size=60)), separator, zulu, draw(st.booleans())


@settings(max_examples=400)
@given(timestamp_columns())
def test_iso_timestamps_equal_datetime_and_refuse_what_it_refuses(column):
    values, separator, zulu, sliced = column
    micros, parsed = iso_timestamps(_array(values, sliced), separator, zulu)
    expected = [_by_datetime(value, separator, zulu) for value in values]
    assert parsed.tolist() == [value is not None for value in expected]
    assert micros.tolist() == [0 if value is None else value for value in expected]


def test_impossible_dates_are_refused_as_datetime_refuses_them():
    written = ["2026-02-30", "2100-02-29", "2026-04-31", "1900-02-29", "2000-02-29", "2024-02-29"]
    values = [f"{day}T10:00:00Z" for day in written]
    _, parsed = iso_timestamps(pa.array(values, pa.large_string()), "T", zulu=True)
    assert parsed.tolist() == [False, False, False, False, True, True]
    assert parsed.tolist() == [_by_datetime(v, "T", True) is not None for v in values]


# --- without_separators against Arrow's regex -----------------------------------------------

NUMBER_CHARACTERS = "0123456789+ \t\n\v\f\r-().,/#x\u00e9\u00a0\u2003\u0661"


def _texts_of_some(characters: str, max_size: int, max_values: int) -> st.SearchStrategy:
    """Lists of texts written with a few of `characters`, chosen per list: so that a list may
    hold one kind of separator or control character and no other."""
    return st.sets(st.sampled_from(characters), min_size=1).flatmap(
        lambda chosen: st.lists(
            st.text(alphabet=sorted(chosen), max_size=max_size), max_size=max_values
        )
    )


@settings(max_examples=300)
@given(_texts_of_some(NUMBER_CHARACTERS, 14, 30), st.booleans())
def test_without_separators_equals_the_regex_on_every_value(values, sliced):
    numbers = _array(values, sliced)
    removed = without_separators(numbers)
    assert removed.to_pylist() == pc.replace_substring_regex(numbers, r"[\s\-().]", "").to_pylist()
    # RE2's \s is ASCII: tab, line feed, form feed, carriage return, space (not \v)
    assert removed.to_pylist() == [re.sub(r"[\t\n\f\r \-().]", "", value) for value in values]


# --- control_character_rows against Arrow's regex and str ----------------------------------

TEXT_CHARACTERS = "ab1 ,;\t\u00e9\u2028\x00\x01\x08\n\x0b\x1c\x1f\x7f\x80\x9f"


def _has_control(value: str) -> bool:
    return any((ord(ch) < 0x20 and ch != "\t") or ch == "\x7f" for ch in value)


@settings(max_examples=300)
@given(
    st.lists(_texts_of_some(TEXT_CHARACTERS, 8, 12), min_size=1, max_size=4),
    st.booleans(),
)
def test_control_character_rows_equal_the_regex_and_str(chunks, sliced):
    values = pa.chunked_array([_array(chunk, sliced) for chunk in chunks], pa.large_string())
    flat = [value for chunk in chunks for value in chunk]
    found = control_character_rows(values)
    rows = np.zeros(len(flat), dtype=bool) if found is None else found
    by_regex = pc.match_substring_regex(values, CONTROL_CHARACTER).to_numpy(zero_copy_only=False)
    assert rows.tolist() == by_regex.tolist() == [_has_control(value) for value in flat]
    if found is None:  # None only where no value holds one
        assert not any(_has_control(value) for value in flat)


def test_a_control_character_past_the_first_cached_slice_is_found():
    values = ["x" * 1000] * (3 * CACHED_BYTES // 1000) + ["late\x1b"]
    found = control_character_rows(pa.array(values, pa.large_string()))
    assert found is not None and np.flatnonzero(found).tolist() == [len(values) - 1]


# --- plain_numbers and replace_prefixes (Arrow's functions) against str ---------------------

DIGIT_CHARACTERS = "0123456789+ -a\u00e9\u0661\u00b2\uff11"


@settings(max_examples=300)
@given(
    _texts_of_some(DIGIT_CHARACTERS, 17, 30),
    st.integers(1, 15),
    st.booleans(),
    st.booleans(),
)
def test_plain_numbers_equal_str_isdigit(values, max_digits, leading_zero, sliced):
    numbers, lengths, plain = plain_numbers(_array(values, sliced), max_digits, leading_zero)
    fits = [
        v.isascii()
        and v.isdigit()
        and 1 <= len(v) <= max_digits
        and (leading_zero or not v.startswith("0"))
        for v in values
    ]
    assert plain.tolist() == fits
    assert numbers[plain].tolist() == [int(v) for v, f in zip(values, fits, strict=True) if f]
    assert lengths.tolist() == [len(v.encode()) for v in values]


@settings(max_examples=300)
@given(
    st.lists(st.text(alphabet="+0123\u00e9 ", max_size=8), max_size=30),
    st.lists(
        st.tuples(
            st.text(alphabet="+0\u00e9", max_size=3), st.text(alphabet="46\u00e9", max_size=3)
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_replace_prefixes_equals_str_slicing(values, rules, sliced):
    def expected(value: str) -> str:
        rule = next(((p, r) for p, r in rules if value.startswith(p)), ("", ""))
        return rule[1] + value[len(rule[0]) :]

    replaced = replace_prefixes(_array(values, sliced), rules)
    replaced.validate(full=True)
    assert replaced.type == pa.large_string()
    assert replaced.to_pylist() == [expected(value) for value in values]


def test_every_day_of_the_calendar_equals_numpy():
    """Each day from 0001-01-01 to 9999-12-31, at its last second, as numpy's calendar has it."""
    seconds = np.arange(np.datetime64("0001-01-01"), np.datetime64("10000-01-01")).astype(
        "datetime64[s]"
    ) + np.timedelta64(86_399, "s")
    text = pa.array(np.datetime_as_string(seconds, unit="s"), pa.large_string())
    micros, parsed = iso_timestamps(text, "T", zulu=False)
    assert parsed.all()
    assert np.array_equal(micros, seconds.astype(np.int64) * 1_000_000)
