"""Timestamps parsed from their bytes equal Python's datetime, and every other shape is refused."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from cdr_billing.text_bytes import iso_timestamps, plain_numbers, replace_prefixes

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_every_real_date_and_time_equals_datetime():
    picks = random.Random(7)
    moments = [
        datetime(1, 1, 1, tzinfo=UTC) + timedelta(seconds=picks.randrange(315_537_897_600))
        for _ in range(20_000)
    ]
    moments += [
        datetime(year, 2, 29, 23, 59, 59, tzinfo=UTC) for year in (4, 1600, 2000, 2024, 9996)
    ]
    text = pa.array([m.replace(tzinfo=None).isoformat() + "Z" for m in moments], pa.large_string())
    micros, parsed = iso_timestamps(text, "T", zulu=True)
    assert parsed.all()
    assert micros.tolist() == [(m - EPOCH) // timedelta(microseconds=1) for m in moments]


def test_impossible_dates_and_other_shapes_are_refused():
    refused = [
        "2026-02-29 00:00:00",
        "1900-02-29 00:00:00",
        "2026-04-31 10:00:00",
        "2026-00-10 10:00:00",
        "2026-13-10 10:00:00",
        "2026-10-00 10:00:00",
        "2026-10-10 24:00:00",
        "2026-10-10 10:60:00",
        "2026-10-10 10:00:60",
        "0000-10-10 10:00:00",
        "2026-10-10T10:00:00",
        "2026/10/10 10:00:00",
        "2026-10-10 10:00:0",
        "2026-10-10 10:00:000",
        "2026-1a-10 10:00:00",
        " 2026-10-10 10:00:0",
        "",
    ]
    micros, parsed = iso_timestamps(
        pa.array([*refused, "2026-10-10 10:00:00"], pa.large_string()), " ", zulu=False
    )
    assert parsed.tolist() == [False] * len(refused) + [True]
    assert micros[-1] == (datetime(2026, 10, 10, 10, tzinfo=UTC) - EPOCH) // timedelta(
        microseconds=1
    )


NUMBERS = [
    "+46701234567",
    "0046701234567",
    "0701234567",
    "46701234567",
    "",
    "+",
    "0",
    "00",
    "000",
    "+0046",
    "abc",
    "+4a",
    " 0701",
    "007",
    "0é",
    "é+",
    "0000000000000000000",
    "+0123",
    "1234567890123456",
    "123456789012345",
]


def test_prefixes_replaced_as_string_slicing_does():
    rules = [("+", ""), ("00", ""), ("0", "46")]

    def expected(number: str) -> str:
        prefix, replacement = next(((p, r) for p, r in rules if number.startswith(p)), ("", ""))
        return replacement + number[len(prefix) :]

    for values in (NUMBERS, NUMBERS[::-1], ["", ""], [], ["0"] * 3):
        replaced = replace_prefixes(pa.array(values, pa.large_string()), rules)
        assert replaced.to_pylist() == [expected(v) for v in values]
        replaced.validate(full=True)


def test_plain_numbers_are_digits_only_without_a_leading_zero():
    for values in (NUMBERS, NUMBERS[::-1], ["7", ""], []):
        numbers, lengths, plain = plain_numbers(pa.array(values, pa.large_string()), 15)
        fits = [v.isascii() and v.isdigit() and 1 <= len(v) <= 15 and v[0] != "0" for v in values]
        assert plain.tolist() == fits
        assert numbers[plain].tolist() == [int(v) for v, f in zip(values, fits, strict=True) if f]
        assert lengths.tolist() == [len(v.encode()) for v in values]
