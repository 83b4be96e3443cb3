"""`python -m cdr_devkit.bench_kernels`: each hand-rolled kernel against its library alternative.

On one file of the benchmark month (`bench_data`: 1,000,000 calls, 1,000,100 rows, read by
`read_cdr_file` as the pipeline reads it) every kernel of `cdr_billing.text_bytes` and the
ISO timestamp path of `cdr_billing.validate` is timed against what pyarrow, pandas or Python
offer for the same job, best of 5 runs, the two runs of a round one after the other. Each
alternative is also checked: its results must equal the kernel's on the column and on a few
hostile values (impossible dates, separators, non-ASCII digits); one that differs, or that
raises on the column, is no replacement whatever its speed. The decision: the library where it
is equivalent and at most 10 % slower, else the kernel.

The kernels replaced after this measurement (`plain_numbers`, `replace_prefixes`) are kept
here as they were, so the decision can be measured again.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cdr_billing import read, text_bytes, validate
from cdr_billing.canonical import TEXT_FIELDS
from cdr_billing.config import load_config
from cdr_devkit.bench_data import ensure_month

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE = PROJECT_ROOT / ".bench" / "pipeline"
SLOWER_ALLOWED = 1.10  # the library is taken when it is at most 10 % slower
UTC_SECONDS, WALL_SECONDS = pa.timestamp("s", "UTC"), pa.timestamp("s")
ZULU_FORMAT, WALL_FORMAT = "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S"
# Values of the exact shape that are no date and time (or not this kernel's): each library
# alternative must refuse them as the kernel does.
IMPOSSIBLE_ZULU = [
    "2026-02-30T09:00:00Z",
    "2100-02-29T00:00:00Z",
    "2026-04-31T10:00:00Z",
    "2026-03-14T09:26:60Z",
    "2026-03-14T24:00:00Z",
    "2026-03-14T09:26:53Z",
]
IMPOSSIBLE_WALL = [value.replace("T", " ").rstrip("Z") for value in IMPOSSIBLE_ZULU]
NUMBERS = ["+46 70-123 45.67", "(08) 123", "0046\t70", "+4670١٢٣", "0", "", "+", "00", "٣"]
CONTROLS = ["a\x00b", "tab\tonly", "line\nbreak", "\x7f", "plain", "é\x1f", ""]


# --- the kernels replaced after this measurement, as they were ---------------------------


def kernel_replace_prefixes(values: pa.Array, replacements: list[tuple[str, str]]) -> pa.Array:
    """The hand-rolled prefix replacement (numpy over the UTF-8 bytes), replaced by Arrow's."""
    offsets, data = text_bytes.offsets_and_data(values)
    starts, lengths = offsets[:-1], np.diff(offsets)
    longest = max((len(prefix.encode()) for prefix, _ in replacements), default=0)
    ended = np.append(data, np.uint8(0))
    heads = [ended[np.minimum(starts + n, len(data))] for n in range(longest)]
    rule = np.full(len(values), len(replacements))
    for n, (prefix, _) in enumerate(replacements):
        found = lengths >= len(prefix.encode())
        for head, byte in zip(heads, prefix.encode(), strict=False):
            found &= head == byte
        rule[(rule == len(replacements)) & found] = n
    dropped = np.array([len(prefix.encode()) for prefix, _ in replacements] + [0])[rule]
    added = np.array([len(replacement.encode()) for _, replacement in replacements] + [0])[rule]
    new_offsets = np.concatenate([[0], np.cumsum(lengths - dropped + added)])
    kept = np.ones(len(data), dtype=bool)
    for n in range(int(dropped.max(initial=0))):
        kept[starts[dropped > n] + n] = False
    result = np.empty(int(new_offsets[-1]), dtype=np.uint8)
    inserted = np.zeros(int(new_offsets[-1]), dtype=bool)
    for n, (_, replacement) in enumerate(replacements):
        for position, byte in enumerate(replacement.encode()):
            at = new_offsets[:-1][rule == n] + position
            result[at], inserted[at] = byte, True
    result[~inserted] = data[kept]
    return pa.LargeStringArray.from_buffers(
        len(values), pa.py_buffer(new_offsets), pa.py_buffer(result)
    )


def kernel_plain_numbers(
    values: pa.Array, max_digits: int, leading_zero: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hand-rolled digits-only test (a reduceat over the bytes), replaced by Arrow's."""
    offsets, data = text_bytes.offsets_and_data(values)
    starts, lengths = offsets[:-1], np.diff(offsets)
    ended = np.append(data, np.uint8(text_bytes.DIGIT_ZERO))
    other_bytes = (
        np.logical_or.reduceat((ended - np.uint8(text_bytes.DIGIT_ZERO)) > 9, starts)
        if len(values)
        else lengths > 0
    )
    fits = (
        (lengths >= 1)
        & (lengths <= max_digits)
        & ~other_bytes
        & (leading_zero | (ended[starts] != text_bytes.DIGIT_ZERO))
    )
    digits = values if fits.all() else pc.if_else(pa.array(fits), values, "0")
    return pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False), lengths, fits


# --- library alternatives -------------------------------------------------------------------


def cast_per_value(values: pa.Array, type_: pa.DataType) -> pa.Array:
    """Arrow's strict cast, which refuses a whole array for one value it cannot parse, made to
    answer per value: an array that fails is halved until each refused value stands alone."""
    try:
        return values.cast(type_)
    except pa.ArrowInvalid:
        if len(values) <= 1:
            return pa.nulls(len(values), type_)
        half = len(values) // 2
        return pa.concat_arrays(
            [
                cast_per_value(values.slice(0, half), type_),
                cast_per_value(values.slice(half), type_),
            ]
        )


def _as_micros(parsed: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A timestamp array as the kernel answers: microseconds since the epoch (0 where null), and
    the mask of values parsed."""
    ok = pc.is_valid(parsed).to_numpy(zero_copy_only=False)
    seconds = pc.fill_null(parsed.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    return np.where(ok, seconds * 1_000_000, 0), ok


def _pandas_micros(text: pd.Series, utc: bool) -> tuple[np.ndarray, np.ndarray]:
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=utc)
    ok = parsed.notna().to_numpy()
    micros = parsed.dt.tz_localize(None) if utc else parsed
    micros = micros.astype("datetime64[us]").to_numpy().view(np.int64)
    return np.where(ok, micros, 0), ok


def _series(values: pa.Array) -> pd.Series:
    """Text as the pipeline's frames hold it (pandas' str dtype)."""
    return pd.Series(values.to_pylist(), dtype="str")


def _separators_regex(numbers: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(numbers, r"[\s\-().]", "")


def _control_regex(columns: list[pa.Array]) -> list[np.ndarray]:
    return [
        pc.fill_null(pc.match_substring_regex(c, text_bytes.CONTROL_CHARACTER), False).to_numpy(
            zero_copy_only=False
        )
        for c in columns
    ]


def _control_kernel(columns: list[pa.Array]) -> list[np.ndarray]:
    found = (text_bytes.control_character_rows(c) for c in columns)
    return [np.zeros(len(c), bool) if f is None else f for c, f in zip(columns, found, strict=True)]


# --- the comparison ---------------------------------------------------------------------


@dataclass
class Contest:
    """One kernel against one alternative: what each computes, and the values they are
    compared on besides the column (`probe`: the column's arguments made from hostile values)."""

    kernel: str
    alternative: str
    run_kernel: Callable[[], object]
    run_library: Callable[[], object]
    same: Callable[[object, object], bool]
    probe_kernel: Callable[[], object] | None = None
    probe_library: Callable[[], object] | None = None
    note: str = ""


def best_of(contest: Contest, repeat: int) -> tuple[float, float | None, str]:
    """Fastest kernel and library runs (None: the library raises on the column) and whether the
    library's results equal the kernel's."""
    kernel_times, library_times, failure = [], [], ""
    for _ in range(repeat):
        started = time.perf_counter()
        ours = contest.run_kernel()
        kernel_times.append(time.perf_counter() - started)
        if failure:
            continue
        started = time.perf_counter()
        try:
            theirs = contest.run_library()
        except pa.ArrowInvalid as exc:
            failure = "raises on the column (" + str(exc).split(" as a scalar")[0] + ")"
            continue
        library_times.append(time.perf_counter() - started)
    if failure:
        return min(kernel_times), None, failure
    if not contest.same(ours, theirs):
        return min(kernel_times), min(library_times), "differs on the column"
    if contest.probe_kernel is not None and not contest.same(
        contest.probe_kernel(), contest.probe_library()
    ):
        return min(kernel_times), min(library_times), "differs on hostile values"
    return min(kernel_times), min(library_times), ""


def _same_arrays(ours, theirs) -> bool:
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    return all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, theirs, strict=True)
    )


def _same_numbers(ours, theirs) -> bool:
    (values, lengths, fits), (their_values, their_lengths, their_fits) = ours, theirs
    return (
        np.array_equal(fits, their_fits)
        and np.array_equal(lengths, their_lengths)
        and np.array_equal(values[fits], their_values[their_fits])
    )


def _same_texts(ours: pa.Array, theirs: pa.Array) -> bool:
    return ours.to_pylist() == theirs.to_pylist()


def _timestamp_contests(
    column: pa.Array,
    valid: pa.Array,
    probe: pa.Array,
    separator: str,
    type_: pa.DataType,
    format_: str,
) -> list[Contest]:
    """`iso_timestamps` of one shape against Arrow's cast and strptime and pandas' ISO parser;
    `valid`: the column's values the kernel parses."""
    zulu = separator == "T"
    kernel = "`iso_timestamps` " + ('"YYYY-MM-DDTHH:MM:SSZ"' if zulu else '"YYYY-MM-DD HH:MM:SS"')
    text, probe_text = _series(column), _series(probe)

    def ours(values: pa.Array) -> Callable[[], object]:
        return lambda: text_bytes.iso_timestamps(values, separator, zulu)

    def strptime(values: pa.Array) -> Callable[[], object]:
        return lambda: _as_micros(pc.strptime(values, format=format_, unit="s", error_is_null=True))

    return [
        Contest(kernel, f"`cast({type_})`", ours(column), lambda: column.cast(type_), _same_arrays),
        Contest(
            kernel,
            "`cast`, on the column's valid values only",
            ours(valid),
            lambda: _as_micros(valid.cast(type_)),
            _same_arrays,
            note="faster only where no value is impossible: one makes the whole cast raise",
        ),
        Contest(
            kernel,
            "`cast`, halving a refused array until each refused value stands alone",
            ours(column),
            lambda: _as_micros(cast_per_value(column, type_)),
            _same_arrays,
            ours(probe),
            lambda: _as_micros(cast_per_value(probe, type_)),
        ),
        Contest(
            kernel,
            f'`strptime("{format_}", error_is_null=True)`',
            ours(column),
            strptime(column),
            _same_arrays,
            ours(probe),
            strptime(probe),
            note="accepts 2026-02-30 as 2026-03-02, and second 60",
        ),
        Contest(
            kernel,
            '`pandas.to_datetime(format="ISO8601")`',
            ours(column),
            lambda: _pandas_micros(text, zulu),
            _same_arrays,
            ours(probe),
            lambda: _pandas_micros(probe_text, zulu),
        ),
    ]


def contests(raw: pd.DataFrame, rules) -> list[Contest]:
    """Every kernel and the alternatives it is measured against, on the file's columns."""
    zulu = text_bytes.one_array(raw["start_of_usage"])
    wall = _wall_of(zulu)
    zulu_probe = pa.array(IMPOSSIBLE_ZULU, pa.large_string())
    wall_probe = pa.array(IMPOSSIBLE_WALL, pa.large_string())
    valid_zulu = zulu.filter(pa.array(text_bytes.iso_timestamps(zulu, "T", True).parsed))
    numbers = text_bytes.one_array(raw["destination_party"])
    number_probe = pa.array(NUMBERS, pa.large_string())
    prefixes = [
        ("+", ""),
        (rules.international_prefix, ""),
        (rules.national_prefix, rules.country_code),
    ]
    e164 = text_bytes.replace_prefixes(text_bytes.without_separators(numbers), prefixes)
    durations = text_bytes.one_array(raw["duration_of_usage"])
    statuses = text_bytes.one_array(raw["completion_status"])
    texts = [pa.array(raw[name], type=pa.large_string()) for name in TEXT_FIELDS if name in raw]
    control_probe = [pa.array(CONTROLS, pa.large_string())]
    start = raw["start_of_usage"]
    zone = "Europe/Stockholm"

    timestamp_contests = [
        *_timestamp_contests(zulu, valid_zulu, zulu_probe, "T", UTC_SECONDS, ZULU_FORMAT),
        *_timestamp_contests(
            wall, _wall_of(valid_zulu), wall_probe, " ", WALL_SECONDS, WALL_FORMAT
        ),
    ]
    return [
        *timestamp_contests,
        Contest(
            "`validate.parse_timestamps` (the kernel for both shapes, then pandas for the rest)",
            "`validate._parse_general` (pandas alone, as for any other shape)",
            lambda: validate.parse_timestamps(start, zone),
            lambda: validate._parse_general(start, zone),
            lambda ours, theirs: ours.equals(theirs),
        ),
        Contest(
            "`plain_numbers` (E.164 digits, before the prefix lookup)",
            "`ascii_is_decimal`, `binary_length`, `starts_with`, `cast(int64)`",
            lambda: kernel_plain_numbers(e164, 15),
            lambda: text_bytes.plain_numbers(e164, 15),
            _same_numbers,
            lambda: kernel_plain_numbers(number_probe, 15),
            lambda: text_bytes.plain_numbers(number_probe, 15),
        ),
        Contest(
            "`plain_numbers` (whole-second durations)",
            "the same",
            lambda: kernel_plain_numbers(durations, 15, leading_zero=True),
            lambda: text_bytes.plain_numbers(durations, 15, leading_zero=True),
            _same_numbers,
        ),
        Contest(
            "`plain_numbers` (status digits)",
            "the same",
            lambda: kernel_plain_numbers(statuses, 1, leading_zero=True),
            lambda: text_bytes.plain_numbers(statuses, 1, leading_zero=True),
            _same_numbers,
        ),
        Contest(
            "`replace_prefixes` (`+`, `00`, `0` -> country code)",
            "`starts_with`, `binary_replace_slice`, `if_else`",
            lambda: kernel_replace_prefixes(numbers, prefixes),
            lambda: text_bytes.replace_prefixes(numbers, prefixes),
            _same_texts,
            lambda: kernel_replace_prefixes(number_probe, prefixes),
            lambda: text_bytes.replace_prefixes(number_probe, prefixes),
        ),
        Contest(
            "`without_separators` (a bytes scan, the regex only when a separator is there)",
            r"`replace_substring_regex(r'[\s\-().]', '')` on every column",
            lambda: text_bytes.without_separators(numbers),
            lambda: _separators_regex(numbers),
            _same_texts,
            lambda: text_bytes.without_separators(number_probe),
            lambda: _separators_regex(number_probe),
        ),
        Contest(
            f"`control_character_rows` ({len(texts)} text columns: a scan of the bytes first)",
            "`match_substring_regex(CONTROL_CHARACTER)` on every column",
            lambda: _control_kernel(texts),
            lambda: _control_regex(texts),
            lambda ours, theirs: all(map(np.array_equal, ours, theirs)),
            lambda: _control_kernel(control_probe),
            lambda: _control_regex(control_probe),
        ),
    ]


def _wall_of(zulu: pa.Array) -> pa.Array:
    """The same moments written "YYYY-MM-DD HH:MM:SS" (the impossible ones stay impossible)."""
    return pc.utf8_slice_codeunits(pc.replace_substring(zulu, "T", " "), 0, 19)


def decision(kernel_s: float, library_s: float | None, problem: str, note: str) -> str:
    if problem:
        return f"kernel kept: the library {problem}" + (f"; {note}" if note else "")
    if note:
        return f"kernel kept: {note}"
    ratio = library_s / kernel_s
    if ratio <= SLOWER_ALLOWED:
        return f"**library** ({ratio:.2f}x the kernel's time)"
    return f"kernel kept: the library takes {ratio:.1f}x as long"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    args = parser.parse_args(argv)
    config = load_config()
    month = ensure_month(args.base, args.calls, 1)
    load_before = os.getloadavg()
    raw = read.read_cdr_file(month.cdr_files[0], config.profile_for("carrier"))
    print(
        f"{len(raw):,} rows of {month.cdr_files[0].name}; pyarrow {pa.__version__}, pandas "
        f"{pd.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores; best of {args.repeat}\n",
        flush=True,
    )
    print("| kernel | library alternative | kernel s | library s | decision |")
    print("|---|---|---:|---:|---|")
    for contest in contests(raw, config.billing):
        kernel_s, library_s, problem = best_of(contest, args.repeat)
        shown = "raises" if library_s is None else f"{library_s:.3f}"
        print(
            f"| {contest.kernel} | {contest.alternative} | {kernel_s:.3f} | {shown} | "
            f"{decision(kernel_s, library_s, problem, contest.note)} |",
            flush=True,
        )
    load_after = os.getloadavg()
    print(f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
