"""Type and check canonical CDR rows: accepted rows, quarantined rows, duplicates.

Row checks run vectorised in pandas and give each bad row a reason code; Great
Expectations then validates every file's accepted rows against the profile's suite as an
independent proof, and its results are kept as JSON next to the run's data. Both come from
one table of row rules (ROW_RULES: reason code, column, check), so GX re-proves a rule with
the very check the row checks apply.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cdr_billing import hashing, text_bytes
from cdr_billing.canonical import (
    CARRIED_FIELDS,
    COMPLETION_STATUSES,
    FIELDS_MATCH_HEADER,
    LINEAGE_FIELDS,
    TEXT_FIELDS,
)
from cdr_billing.config import BillingSettings, SourceProfile
from cdr_billing.frames import rows_where
from cdr_billing.money import (
    MAX_CALL_COST,
    MICRO,
    MoneyError,
    iso_currencies,
    percent_to_basis_points,
    to_micro_units,
)
from cdr_billing.months import BillingMonth
from cdr_billing.privacy import mask_number

EXCEL_EPOCH = np.datetime64("1899-12-30T00:00:00", "s")
EXCEL_LAST_DAY = 2_958_465  # the serial of 9999-12-31
PHONE_NUMBER = r"^\+?[0-9]{4,17}$"
DURATION_FACTORS = {"seconds": 1, "minutes": 60}
# The grammar of numeric values, after the profile's decimal separator became ".": no sign but
# where stated, no exponent, no inf or nan, no thousands separators.
DECIMAL_NUMBER = re.compile(
    r"-?[0-9]+(?:\.[0-9]+)?"
)  # costs and durations (a negative one is out of range)
HMS_DURATION = re.compile(r"(-?)([0-9]+):([0-5][0-9]):([0-5][0-9])")
STATUS_NUMBER = re.compile(r"([0-3])(?:\.0+)?")  # "1.0": a status written as a number
PERCENTAGE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
PART_NUMBER = r"^[0-9]*$"  # digits, or empty
# A typed value beyond any range check: a duration, or a cost just past MAX_CALL_COST, stands in for
# a larger written one, so the range check names it and no integer overflows.
DURATION_BEYOND_RANGE = 10**15
COST_BEYOND_RANGE = MAX_CALL_COST * MICRO + 1

# Reason codes, in the order rows are checked; a row carries every reason it fails.
REASONS = {
    "BAD_FIELD_COUNT": "the CSV row has fewer or more fields than the header",
    "BAD_CHARACTER": (
        "a text field holds a control character (U+0000-U+001F but tab, or U+007F; "
        "a line break too)"
    ),
    "MISSING_TRANSACTION_ID": "transaction id is empty",
    "MISSING_ACCOUNT": "user/account id is empty",
    "BAD_TIMESTAMP": "start time is not a date and time",
    "NONEXISTENT_LOCAL_TIME": (
        "start time is a wall time the spring clock change skips in the profile's timezone"
    ),
    "AMBIGUOUS_LOCAL_TIME": (
        "start time is a wall time the autumn clock change repeats, and the profile rejects those"
    ),
    "OUTSIDE_MONTH": "start time is outside the billing month",
    "BAD_DURATION": "duration is not a whole number of seconds",
    "DURATION_OUT_OF_RANGE": "duration is negative or above the maximum",
    "BAD_COMPLETION_STATUS": "completion status is not 0, 1, 2 or 3",
    "BAD_NUMBER": "destination number is not a phone number",
    "BAD_REVENUE_SHARE": (
        "revenue share is not a percentage from 0 to 100 with at most two decimals"
    ),
    "BAD_PART_NUMBER": "transaction part number is not a whole number",
    "BAD_COST": "provider cost is not a decimal number with at most six decimals",
    "COST_OUT_OF_RANGE": f"provider cost is above {MAX_CALL_COST:,} in its currency",
    "NEGATIVE_COST": "provider cost is negative and the source's profile allows no credits",
    "BAD_CURRENCY": "currency is not an ISO 4217 currency code",
}


class FileValidationError(ValueError):
    """A whole CDR file fails validation; the message names the file and the failures."""

    def __init__(
        self,
        file_name: str,
        problem: str,
        expectations: tuple[str, ...] = (),
        samples: tuple[str, ...] = (),
    ):
        super().__init__(
            f"{file_name}: {problem}" + (f"; e.g. {'; '.join(samples)}" if samples else "")
        )
        self.file_name, self.problem, self.expectations, self.samples = (
            file_name,
            problem,
            expectations,
            samples,
        )


@dataclass(frozen=True)
class FileCheck:
    """Outcome of checking one file: rows accepted, rows quarantined, and the good rows that
    repeat a call earlier in the file (the first delivery is accepted); the accepted rows' call
    hashes."""

    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    duplicates: pd.DataFrame
    call_hashes: np.ndarray


WHOLE_SECONDS_DIGITS = 15


def _fill_rest(
    result: pd.Series, rest: np.ndarray, text: pd.Series, general: Callable[[pd.Series], pd.Series]
) -> pd.Series:
    """Give the rows the fast path left (`rest`) the general parser's values."""
    if rest.any():
        result.iloc[np.flatnonzero(rest)] = general(text[rest]).array
    return result


def _nullable_ints(
    values: np.ndarray, missing: np.ndarray, index: pd.Index, dtype: str
) -> pd.Series:
    """Integers as a nullable pandas column; `missing`: the null mask."""
    return pd.Series(pd.arrays.IntegerArray(values, missing.copy()), index=index).astype(dtype)


def parse_timestamps(
    text: pd.Series, timezone: str, timestamp_format: str | None = None, ambiguous: str = "earliest"
) -> pd.Series:
    """Parse ISO text (with or without an offset) or Excel serial dates; return UTC.

    Times without an offset are wall times in `timezone`; a wall time that occurs twice
    (autumn DST change) is its first occurrence (`ambiguous` "earliest"), its second ("latest")
    or NaT ("reject"); one that does not exist (spring) is NaT. Unparsable text gives NaT. With a
    `timestamp_format` (strptime), text must follow it exactly. "YYYY-MM-DDTHH:MM:SSZ" and
    "YYYY-MM-DD HH:MM:SS", the usual shapes, are parsed from their bytes; the rest by pandas.
    """
    if timestamp_format:
        parsed = pd.to_datetime(text, format=timestamp_format, errors="coerce")
        return _localise(parsed, timezone, ambiguous)
    utc, rest = _iso_timestamps(text, "T", zulu=True)
    return _fill_rest(
        utc.dt.tz_localize("UTC"),
        rest,
        text,
        lambda rows: _parse_without_z(rows, timezone, ambiguous),
    )


class _IsoShapeParse(NamedTuple):
    """The rows of one ISO shape parsed (naive, NaT elsewhere) and a mask of the rows left."""

    timestamps: pd.Series
    rest: np.ndarray


def _iso_timestamps(text: pd.Series, separator: str, zulu: bool) -> _IsoShapeParse:
    """The rows of one ISO shape parsed from their bytes (naive, NaT elsewhere), and a mask of
    the rows left."""
    micros, parsed = text_bytes.iso_timestamps(text_bytes.one_array(text), separator, zulu)
    return _IsoShapeParse(
        pd.Series(micros.view("datetime64[us]"), index=text.index).where(parsed), ~parsed
    )


def _parse_without_z(text: pd.Series, timezone: str, ambiguous: str = "earliest") -> pd.Series:
    wall, general = _iso_timestamps(text, " ", zulu=False)
    return _fill_rest(
        _localise(wall, timezone, ambiguous),
        general,
        text,
        lambda rows: _parse_general(rows, timezone, ambiguous),
    )


def _parse_general(text: pd.Series, timezone: str, ambiguous: str = "earliest") -> pd.Series:
    numeric = pd.to_numeric(text, errors="coerce")
    is_text = numeric.isna()
    serial = numeric[~is_text].where(
        (numeric >= 0) & (numeric <= EXCEL_LAST_DAY)
    )  # others (an epoch in seconds?) NaT
    has_offset = is_text & text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True)
    aware = pd.to_datetime(text[has_offset], format="ISO8601", errors="coerce", utc=True)
    naive = pd.concat(
        [
            pd.to_datetime(text[is_text & ~has_offset], format="ISO8601", errors="coerce"),
            _excel_serials(serial),
        ]
    )
    return pd.concat(
        [aware.astype("datetime64[us, UTC]"), _localise(naive, timezone, ambiguous)]
    ).reindex(text.index)


def _excel_serials(serial: pd.Series) -> pd.Series:
    """Excel serial days (up to 9999-12-31) as naive date-times, to the second: in whole seconds
    on numpy's second clock, which reaches year 9999 (pandas' nanosecond timedeltas end at 292
    years)."""
    seconds = np.round(serial.to_numpy(np.float64) * 86_400).astype("timedelta64[s]")
    return pd.Series((EXCEL_EPOCH + seconds).astype("datetime64[us]"), index=serial.index)


AMBIGUOUS_TIMES = (
    "earliest",
    "latest",
    "reject",
)  # a profile's choice for a wall time the autumn change repeats


def _localise(naive: pd.Series, timezone: str, ambiguous: str = "earliest") -> pd.Series:
    """Wall times in a zone to UTC: a repeated one as the profile says (AMBIGUOUS_TIMES), one
    that does not exist is NaT."""
    choice = (
        "NaT" if ambiguous == "reject" else np.full(len(naive), ambiguous == "earliest")
    )  # True: the first (DST)
    local = naive.dt.tz_localize(timezone, ambiguous=choice, nonexistent="NaT")
    return local.dt.tz_convert("UTC").astype("datetime64[us, UTC]")


def local_time_problems(text: pd.Series, profile: SourceProfile) -> pd.Series:
    """For start times that did not parse (few): NONEXISTENT_LOCAL_TIME or AMBIGUOUS_LOCAL_TIME
    where the text is a wall time the clock change skips or repeats (and the profile rejects
    repeated ones), else "" (not a date and time at all)."""
    wall = parse_timestamps(text, "UTC", profile.timestamp_format).dt.tz_localize(
        None
    )  # read as written, no zone
    skipped = (
        wall.notna()
        & wall.dt.tz_localize(profile.timezone, ambiguous=True, nonexistent="NaT").isna()
    )
    return pd.Series(
        np.select([skipped, wall.notna()], ["NONEXISTENT_LOCAL_TIME", "AMBIGUOUS_LOCAL_TIME"], ""),
        index=text.index,
        dtype="str",
    )


def parse_durations(text: pd.Series, unit: str, decimal: str = ".") -> pd.Series:
    """Parse durations (seconds, minutes or "h:mm:ss") into whole seconds; NA when bad.
    Whole seconds written as plain digits, the usual case, are read from their bytes."""
    if unit == "seconds":
        whole, _, plain = text_bytes.plain_numbers(
            text_bytes.one_array(text), WHOLE_SECONDS_DIGITS, leading_zero=True
        )
        seconds = _nullable_ints(whole, ~plain, text.index, "Int64")
        return _fill_rest(seconds, ~plain, text, lambda rows: _parse_durations(rows, unit, decimal))
    return _parse_durations(text, unit, decimal)


def _parse_durations(text: pd.Series, unit: str, decimal: str) -> pd.Series:
    if unit == "hms":
        return _convert_distinct(text, _hms_seconds, "Int64")
    factor = DURATION_FACTORS[unit]
    return _convert_distinct(
        with_decimal_point(text, decimal), lambda value: _decimal_seconds(value, factor), "Int64"
    )


def with_decimal_point(text: pd.Series, decimal: str) -> pd.Series:
    """Numbers written with the profile's decimal separator, with a point instead; in a file
    with decimal commas a point (a thousands separator?) makes the value fail the grammar."""
    if decimal == ".":
        return text
    return text.str.replace(".", "!", regex=False).str.replace(decimal, ".", regex=False)


def _hms_seconds(text: str) -> int | None:
    """ "h:mm:ss" (any number of hours, a sign allowed) in seconds; None when not that shape."""
    parts = HMS_DURATION.fullmatch(text.strip())
    if parts is None:
        return None
    sign, hours, minutes, seconds = parts.groups()
    total = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return _within_duration_range(-total if sign else total)


def _decimal_seconds(text: str, factor: int) -> int | None:
    """A decimal number of seconds or minutes as whole seconds; None when not the grammar or not
    whole."""
    text = text.strip()
    if DECIMAL_NUMBER.fullmatch(text) is None:
        return None
    seconds = Decimal(text) * factor
    return _within_duration_range(int(seconds)) if seconds == seconds.to_integral_value() else None


def _within_duration_range(seconds: int) -> int:
    return max(-DURATION_BEYOND_RANGE, min(seconds, DURATION_BEYOND_RANGE))


def parse_statuses(text: pd.Series) -> pd.Series:
    """Completion statuses 0-3 (nullable Int8); a digit from its byte, anything else ("1.0") by
    pandas."""
    digit, _, plain = text_bytes.plain_numbers(text_bytes.one_array(text), 1, leading_zero=True)
    rest = ~(plain & np.isin(digit, COMPLETION_STATUSES))
    return _fill_rest(_nullable_ints(digit, rest, text.index, "Int8"), rest, text, _parse_statuses)


def _parse_statuses(text: pd.Series) -> pd.Series:
    return _convert_distinct(text, _status, "Int8")


def _status(text: str) -> int | None:
    matched = STATUS_NUMBER.fullmatch(text.strip())
    return None if matched is None else int(matched.group(1))


def _convert_distinct(
    text: pd.Series, convert: Callable[[str], int | None], dtype: str
) -> pd.Series:
    """`convert` applied once per distinct value (None: not valid), as a nullable integer column."""
    arrow = pa.array(text, type=pa.large_string())
    distinct = pc.unique(arrow)
    converted = pa.array(
        [None if value is None else convert(value) for value in distinct.to_pylist()],
        type=pa.int64(),
    )
    values = pc.take(converted, pc.index_in(arrow, value_set=distinct))
    missing = pc.is_null(values).to_numpy(zero_copy_only=False)
    return _nullable_ints(
        pc.fill_null(values, 0).to_numpy(zero_copy_only=False), missing, text.index, dtype
    )


def _micro_units(cost: str) -> int | None:
    """A provider cost in integer micro-units; None when not the grammar or too precise. A cost
    beyond MAX_CALL_COST becomes COST_BEYOND_RANGE (with its sign) for the range check."""
    cost = cost.strip()
    if DECIMAL_NUMBER.fullmatch(cost) is None:
        return None
    try:
        micro = to_micro_units(cost)
    except MoneyError:
        return None
    return max(-COST_BEYOND_RANGE, min(micro, COST_BEYOND_RANGE))


def _basis_points(percentage: str) -> int | None:
    """A revenue share percentage in basis points; None when empty, not the grammar, more than
    two decimals or outside 0-100."""
    if PERCENTAGE.fullmatch(percentage.strip()) is None:
        return None
    try:
        points = percent_to_basis_points(percentage)
    except MoneyError:
        return None
    return points if 0 <= points <= 10_000 else None


def _control_character_rows_of(raw: pd.DataFrame, fields: tuple[str, ...]) -> np.ndarray:
    """Rows with a control character in any of the text fields (BAD_CHARACTER)."""
    found = np.zeros(len(raw), dtype=bool)
    for name in fields:
        if name in raw:
            rows = text_bytes.control_character_rows(pa.array(raw[name], type=pa.large_string()))
            if rows is not None:
                found |= rows
    return found


def _matches(text: pd.Series, pattern: str) -> np.ndarray:
    """Whether each text matches an anchored pattern (RE2 in Arrow; pandas' fullmatch first
    checks whether the pattern needs Python's re, which took half the time)."""
    matched = pc.match_substring_regex(pa.array(text, type=pa.large_string()), pattern)
    return pc.fill_null(matched, False).to_numpy(zero_copy_only=False)


# --- The row rules: one table, from which the row checks and the GX suite are built ---------


@dataclass(frozen=True)
class Limits:
    """What the row rules compare values with, for one billing month and the billing rules."""

    earliest_start: datetime  # the month's first moment less the tolerance
    end_of_month: datetime  # the next month's first moment plus the tolerance (excluded)
    max_call_seconds: int
    max_cost: int  # micro-units, either sign
    min_cost: int
    statuses: tuple[int, ...]
    currencies: tuple[str, ...]  # sorted

    @classmethod
    def of(cls, month: BillingMonth, rules: BillingSettings) -> Limits:
        start, end = month.bounds(rules.timezone)
        tolerance = timedelta(hours=rules.month_tolerance_hours)
        return cls(
            start - tolerance,
            end + tolerance,
            rules.max_call_seconds,
            MAX_CALL_COST * MICRO,
            -MAX_CALL_COST * MICRO,
            COMPLETION_STATUSES,
            tuple(sorted(iso_currencies())),
        )

    def value(self, bound: int | str | None) -> object:
        """A bound as given (a number, None: no bound), or the limit it names."""
        return getattr(self, bound) if isinstance(bound, str) else bound


@dataclass
class RowValues:
    """What the row checks read: the text as written (`raw`), the typed values, the profile and
    the limits; the clock-change problems of the start times that did not parse, when asked."""

    raw: pd.DataFrame
    typed: pd.DataFrame
    profile: SourceProfile
    limits: Limits

    @cached_property
    def clock_changes(self) -> pd.Series:
        """NONEXISTENT_LOCAL_TIME or AMBIGUOUS_LOCAL_TIME for a start time that did not parse
        because of a clock change, else ""."""
        unparsed = self.typed["start_utc"].isna().to_numpy()
        problems = pd.Series("", index=self.raw.index, dtype="str")
        if unparsed.any():
            problems[unparsed] = local_time_problems(
                self.raw["start_of_usage"][unparsed], self.profile
            ).to_numpy()
        return problems


# A GX expectation as data: its class in `great_expectations.expectations` and its arguments;
# GX itself is imported only where a suite runs (it takes seconds).
Expectation = tuple[str, dict]
NOT_NULL = "ExpectColumnValuesToNotBeNull"


@dataclass(frozen=True)
class Written:
    """The text is not empty (read writes "" for a missing value). In GX: not null."""

    def failing(self, rows: RowValues, column: str) -> object:
        return rows.typed[column] == ""

    def expectations(self, column: str, limits: Limits) -> list[Expectation]:
        return [(NOT_NULL, {"column": column})]


@dataclass(frozen=True)
class Parsed:
    """The typed value is there: the text parsed. In GX: not null."""

    def failing(self, rows: RowValues, column: str) -> object:
        return rows.typed[column].isna()

    def expectations(self, column: str, limits: Limits) -> list[Expectation]:
        return [(NOT_NULL, {"column": column})]


@dataclass(frozen=True)
class ParsedStart(Parsed):
    """The start time parsed; of those that did not, the ones with this clock-change problem
    ("": none, not a date and time at all)."""

    problem: str = ""

    def failing(self, rows: RowValues, column: str) -> object:
        unparsed = rows.typed[column].isna().to_numpy()
        return unparsed & (rows.clock_changes == self.problem).to_numpy()


@dataclass(frozen=True)
class ParsedUnlessBlank:
    """The typed value is there where its text (`text`, as written) is not empty; not in GX (an
    optional value's null is no failure there)."""

    text: str

    def failing(self, rows: RowValues, column: str) -> object:
        return (rows.raw[self.text] != "") & rows.typed[column].isna()


@dataclass(frozen=True)
class Between:
    """The typed value, where there is one, from `low` to `high` (None: no bound; a name: that
    limit), `high` itself excluded when `strict_max`. In GX: between."""

    low: int | str | None
    high: int | str | None
    strict_max: bool = False

    def failing(self, rows: RowValues, column: str) -> object:
        values, low, high = rows.typed[column], *map(rows.limits.value, (self.low, self.high))
        outside = pd.Series(False, index=values.index)
        if low is not None:
            outside = outside | (values < low)
        if high is not None:
            outside = outside | ((values >= high) if self.strict_max else (values > high))
        return values.notna() & outside

    def expectations(self, column: str, limits: Limits) -> list[Expectation]:
        bounds = {"min_value": limits.value(self.low), "max_value": limits.value(self.high)}
        strict = {"strict_max": True} if self.strict_max else {}
        return [("ExpectColumnValuesToBeBetween", {"column": column, **bounds, **strict})]


@dataclass(frozen=True)
class InSet:
    """The typed value is one of a limit's values (`values`: its name). In GX: in set."""

    values: str

    def failing(self, rows: RowValues, column: str) -> object:
        return ~rows.typed[column].isin(rows.limits.value(self.values)).to_numpy(dtype=bool)

    def expectations(self, column: str, limits: Limits) -> list[Expectation]:
        value_set = list(limits.value(self.values))
        return [("ExpectColumnValuesToBeInSet", {"column": column, "value_set": value_set})]


@dataclass(frozen=True)
class Matches:
    """The typed text matches an anchored pattern (RE2). In GX: matches the regex."""

    pattern: str

    def failing(self, rows: RowValues, column: str) -> object:
        return ~_matches(rows.typed[column], self.pattern)

    def expectations(self, column: str, limits: Limits) -> list[Expectation]:
        return [("ExpectColumnValuesToMatchRegex", {"column": column, "regex": self.pattern})]


@dataclass(frozen=True)
class FieldsMatchHeader:
    """The CSV record has the header's number of fields (the reader's column; none: it does)."""

    def failing(self, rows: RowValues, column: str) -> object:
        return ~rows.raw[column].to_numpy(dtype=bool) if column in rows.raw else False


@dataclass(frozen=True)
class NoControlCharacter:
    """No text field, as written, holds a control character (`column`: the fields)."""

    def failing(self, rows: RowValues, column: tuple[str, ...]) -> object:
        return _control_character_rows_of(rows.raw, column)


@dataclass(frozen=True)
class RowRule:
    """One row rule: the reason code of a row that fails it, the column it checks and its
    checks (a row fails the rule when it fails any of them). `gx`: Great Expectations re-proves
    it on the accepted rows with the checks' expectations (each check then has one); `priced`:
    for priced sources only (True) or unpriced ones only (False); `credits`: only for profiles
    that allow credits (True) or that do not (False); `unless`: a rule whose failure makes this
    one say nothing."""

    reason: str
    column: str | tuple[str, ...]
    checks: tuple
    gx: bool
    priced: bool | None = None
    credits: bool | None = None
    unless: str | None = None

    def __post_init__(self) -> None:
        if self.gx and not all(hasattr(check, "expectations") for check in self.checks):
            raise TypeError(f"{self.reason}: GX cannot re-prove a check without an expectation")

    def applies_to(self, profile: SourceProfile) -> bool:
        return self.priced in (None, profile.priced) and self.credits in (
            None,
            profile.allow_credits,
        )

    def failing(self, rows: RowValues) -> object:
        """Where a row fails the rule (a mask, a column, or False for none)."""
        masks = [check.failing(rows, self.column) for check in self.checks]
        return functools.reduce(operator.or_, masks)

    def expectations(self, limits: Limits) -> list[Expectation]:
        return [e for check in self.checks for e in check.expectations(self.column, limits)]


# The row rules, in the order a row's reasons are listed (its reason_code: the first it fails).
# GX is handed only the columns of the rules it re-proves (it fingerprints every column it is
# given); the others check the text as written, which the accepted rows no longer hold, or
# columns GX is not handed.
ROW_RULES = (
    RowRule("BAD_FIELD_COUNT", FIELDS_MATCH_HEADER, (FieldsMatchHeader(),), gx=False),
    RowRule("BAD_CHARACTER", TEXT_FIELDS, (NoControlCharacter(),), gx=False),
    RowRule("MISSING_TRANSACTION_ID", "transaction_id", (Written(),), gx=True),
    RowRule("MISSING_ACCOUNT", "user_id", (Written(),), gx=True),
    RowRule("BAD_TIMESTAMP", "start_utc", (ParsedStart(""),), gx=True),
    RowRule(
        "NONEXISTENT_LOCAL_TIME", "start_utc", (ParsedStart("NONEXISTENT_LOCAL_TIME"),), gx=True
    ),
    RowRule("AMBIGUOUS_LOCAL_TIME", "start_utc", (ParsedStart("AMBIGUOUS_LOCAL_TIME"),), gx=True),
    RowRule(
        "OUTSIDE_MONTH",
        "start_utc",
        (Between("earliest_start", "end_of_month", strict_max=True),),
        gx=True,
    ),
    RowRule("BAD_DURATION", "duration_seconds", (Parsed(),), gx=True),
    RowRule(
        "DURATION_OUT_OF_RANGE", "duration_seconds", (Between(0, "max_call_seconds"),), gx=True
    ),
    RowRule("BAD_COMPLETION_STATUS", "completion_status", (Parsed(), InSet("statuses")), gx=True),
    RowRule(
        "BAD_REVENUE_SHARE",
        "revenue_share_bp",
        (ParsedUnlessBlank("revenue_share_percentage"),),
        gx=False,
    ),
    RowRule("BAD_PART_NUMBER", "transaction_part_number", (Matches(PART_NUMBER),), gx=False),
    # separators removed from the number first
    RowRule("BAD_NUMBER", "destination_party", (Matches(PHONE_NUMBER),), gx=True, priced=False),
    RowRule("BAD_COST", "provider_cost_micro", (Parsed(),), gx=False, priced=True),
    RowRule(
        "COST_OUT_OF_RANGE",
        "provider_cost_micro",
        (Between("min_cost", "max_cost"),),
        gx=False,
        priced=True,
    ),
    RowRule(
        "NEGATIVE_COST",
        "provider_cost_micro",
        (Between(0, None),),
        gx=False,
        priced=True,
        credits=False,
        unless="COST_OUT_OF_RANGE",
    ),
    RowRule("BAD_CURRENCY", "currency", (InSet("currencies"),), gx=True, priced=True),
)
# Besides the row rules, GX proves what check_rows itself makes of the accepted rows: one row
# per call in a file (the repeated ones set aside: hashing.CALL_KEY within one source) and
# the types of the values every accepted row has.
ONE_PER_FILE = "transaction_id"
ACCEPTED_TYPES = {"duration_seconds": "int64", "completion_status": "int8"}


def row_rules(profile: SourceProfile) -> list[RowRule]:
    """The row rules of a source's profile, in order."""
    return [rule for rule in ROW_RULES if rule.applies_to(profile)]


def _failures(
    raw: pd.DataFrame,
    typed: pd.DataFrame,
    profile: SourceProfile,
    month: BillingMonth,
    rules: BillingSettings,
) -> pd.DataFrame:
    """Return one boolean column per reason code (ROW_RULES): True where the row fails it."""
    rows = RowValues(raw, typed, profile, Limits.of(month, rules))
    fails = pd.DataFrame(index=raw.index)
    for rule in row_rules(profile):
        fails[rule.reason] = rule.failing(rows)
        if rule.unless is not None:
            fails[rule.reason] = fails[rule.reason] & ~fails[rule.unless].fillna(False)
    fails = fails.fillna(False).astype(bool)
    misaligned = fails["BAD_FIELD_COUNT"].to_numpy()
    if misaligned.any():  # its values may sit under other headers: their checks would say nothing
        fails.loc[misaligned, fails.columns[1:]] = False
    return fails


def _typed(raw: pd.DataFrame, profile: SourceProfile) -> pd.DataFrame:
    """The columns the later stages use, typed; the others stay in the archived file (file, row)."""
    typed = raw[["source", *CARRIED_FIELDS, *LINEAGE_FIELDS]].copy()
    typed["pre_priced"] = profile.priced
    if profile.priced:
        typed["currency"] = raw["currency"].str.strip().str.upper()
    numbers = text_bytes.without_separators(text_bytes.one_array(raw["destination_party"]))
    typed["destination_party"] = pd.Series(numbers, index=raw.index, dtype="str")
    typed["start_utc"] = parse_timestamps(
        raw["start_of_usage"], profile.timezone, profile.timestamp_format, profile.ambiguous_times
    )
    typed["duration_seconds"] = parse_durations(
        raw["duration_of_usage"], profile.duration_unit, profile.decimal
    )
    typed["completion_status"] = parse_statuses(raw["completion_status"])
    percentages = with_decimal_point(raw["revenue_share_percentage"], profile.decimal)
    typed["revenue_share_bp"] = _convert_distinct(percentages, _basis_points, "Int32")
    typed["provider_cost_micro"] = (
        _convert_distinct(
            with_decimal_point(raw["provider_cost"], profile.decimal), _micro_units, "Int64"
        )
        if profile.priced
        else pd.Series(pd.NA, index=raw.index, dtype="Int64")
    )
    return typed


def _quarantine_rows(raw: pd.DataFrame, fails: pd.DataFrame, failed: np.ndarray) -> pd.DataFrame:
    failing, bad = rows_where(fails, failed), rows_where(raw, failed)
    reasons = pd.Series("", index=failing.index, dtype=str)
    for code in failing.columns:
        reasons = reasons.where(~failing[code], reasons + code + ";")
    reasons = reasons.str.rstrip(";")
    originals = [json.dumps(record) for record in bad[list(TEXT_FIELDS)].to_dict("records")]
    return pd.DataFrame(
        {
            "source": bad["source"].astype(str),
            "source_file": bad["source_file"].astype(str),
            "source_row": bad["source_row"].astype("int64"),
            "reason_code": reasons.str.split(";").str[0].astype(str),
            "reasons": reasons,
            "original_values": pd.Series(originals, index=failing.index, dtype=str),
        }
    )


def check_rows(
    raw: pd.DataFrame, profile: SourceProfile, month: BillingMonth, rules: BillingSettings
) -> FileCheck:
    """Type one file's rows and split them into accepted, quarantined and repeated; the wide
    rows are selected once."""
    typed = _typed(raw, profile)
    fails = _failures(raw, typed, profile, month, rules)
    failed = fails.to_numpy().any(axis=1)
    good = np.flatnonzero(~failed)
    hashes = hashing.call_hashes(typed)[good]
    (again,) = hashing.repeated_per_file([hashes], lambda _, rows: typed.iloc[good[rows]])
    repeated = np.zeros(len(typed), dtype=bool)
    repeated[good[again]] = True
    kept = ~failed & ~repeated
    accepted = typed if kept.all() else rows_where(typed, kept)
    duplicates = rows_where(typed, repeated)
    return FileCheck(
        _as_accepted(accepted),
        _quarantine_rows(raw, fails, failed),
        _as_accepted(duplicates),
        hashes[~again],
    )


def _as_accepted(rows: pd.DataFrame) -> pd.DataFrame:
    """Good rows with the types their checks guarantee (no missing duration or status)."""
    for column, type_ in ACCEPTED_TYPES.items():
        rows[column] = rows[column].astype(type_)
    return rows.reset_index(drop=True)


SAMPLE_ROWS = 3


def _samples(rejected: pd.DataFrame) -> tuple[str, ...]:
    """A few rejected rows for the alert: line, reasons, numbers masked."""
    samples = []
    for row in rejected.head(SAMPLE_ROWS).itertuples():
        values = json.loads(row.original_values)
        numbers = ", ".join(
            mask_number(values[f])
            for f in ("originating_party", "destination_party")
            if values.get(f)
        )
        samples.append(
            f"line {row.source_row} {row.reasons}" + (f" ({numbers})" if numbers else "")
        )
    return tuple(samples)


def enforce_rejection_threshold(
    file_name: str, rows_read: int, rejected: pd.DataFrame, max_share: float
) -> None:
    """Fail a file whose share of quarantined rows is above the threshold."""
    if rows_read == 0:
        raise FileValidationError(file_name, "the file holds no CDR rows")
    share = len(rejected) / rows_read
    if share > max_share:
        top = rejected["reason_code"].value_counts().head(5).to_dict()
        raise FileValidationError(
            file_name,
            f"{len(rejected)} of {rows_read} rows ({share:.1%}) failed validation, "
            f"above the {max_share:.1%} limit; reasons: {top}",
            samples=_samples(rejected),
        )


def suite(profile: SourceProfile, limits: Limits) -> list[Expectation]:
    """The profile's GX suite: the expectations of the row rules GX re-proves (each once; the
    columns they require not null must be there), then one row per call and the accepted types."""
    proved: list[Expectation] = []
    for rule in row_rules(profile):
        if rule.gx:
            proved += [e for e in rule.expectations(limits) if e not in proved]
    required = [kwargs["column"] for name, kwargs in proved if name == NOT_NULL]
    return [
        ("ExpectTableColumnsToMatchSet", {"column_set": required, "exact_match": False}),
        *proved,
        ("ExpectColumnValuesToBeUnique", {"column": ONE_PER_FILE}),
        *[
            ("ExpectColumnValuesToBeOfType", {"column": column, "type_": type_})
            for column, type_ in ACCEPTED_TYPES.items()
        ],
    ]


def _suite_columns(profile: SourceProfile) -> list[str]:
    """The columns the suite looks at: those of the row rules GX re-proves."""
    return list(dict.fromkeys(rule.column for rule in row_rules(profile) if rule.gx))


def _expectations(gx, profile: SourceProfile, month: BillingMonth, rules: BillingSettings) -> list:
    """The suite as GX expectations (`gx`: the great_expectations module)."""
    return [
        getattr(gx.expectations, name)(**kwargs)
        for name, kwargs in suite(profile, Limits.of(month, rules))
    ]


DATA_DOCS_INDEX = "data_docs/index.html"  # under an ExpectationRunner's results_dir


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _without_batch_fingerprint() -> None:
    """Skip the fingerprint GX marks a pandas batch with: an MD5 of `hash_pandas_object` over
    every value it is handed (0.9 s of a 1M-row file's 1.6 s of validation, most of it hashing
    the near-unique transaction ids and numbers). It checks nothing (each expectation still sees
    every row, so every result is the same), GX itself leaves it out for frames over its
    threshold (1 GB), and the file is known by its SHA-256 in the ledger. Only that threshold
    in GX's pandas engine decides it."""
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0


class ExpectationRunner:
    """Runs a Great Expectations suite per file in one ephemeral GX context; keeps each
    result as JSON and renders Data Docs (HTML) under results_dir."""

    def __init__(self, results_dir: Path) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        _without_batch_fingerprint()
        self._gx = gx
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.docs_dir = (results_dir / DATA_DOCS_INDEX).parent
        self._context.add_data_docs_site(
            site_name="cdr_billing",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(self.docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        self._source = self._context.data_sources.add_pandas("cdr_files")
        self._results_dir = results_dir
        results_dir.mkdir(parents=True, exist_ok=True)

    def validate_file(
        self,
        accepted: pd.DataFrame,
        file_name: str,
        profile: SourceProfile,
        month: BillingMonth,
        rules: BillingSettings,
    ) -> Path:
        """Validate one file's accepted rows (every row; only the columns the suite looks at:
        each column GX is handed costs it work); keep the result JSON; raise on failure."""
        gx = self._gx
        accepted = accepted[
            [column for column in _suite_columns(profile) if column in accepted.columns]
        ]
        name = _safe_name(file_name)
        batch = self._source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(
            "whole_file"
        )
        suite = self._context.suites.add(gx.ExpectationSuite(name=f"{profile.name}.{name}"))
        for expectation in _expectations(gx, profile, month, rules):
            suite.add_expectation(expectation)
        definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        checkpoint = self._context.checkpoints.add(
            gx.Checkpoint(
                name=f"checkpoint.{name}",
                validation_definitions=[definition],
                actions=[
                    gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["cdr_billing"])
                ],
                result_format="SUMMARY",
            )
        )
        result = next(
            iter(checkpoint.run(batch_parameters={"dataframe": accepted}).run_results.values())
        )
        result_path = self._results_dir / f"{name}.json"
        result_path.write_text(
            json.dumps(result.to_json_dict(), default=str, indent=1), encoding="utf-8"
        )
        if not result.success:
            failed = [r.expectation_config.type for r in result.results if not r.success]
            raise FileValidationError(
                file_name,
                f"failed expectations {failed} (details in gx_results/{result_path.name})",
                expectations=tuple(failed),
            )
        return result_path


def write_docs_index(path, docs: dict[str, str]):
    """One page linking each file's Data Docs (every file is validated in a task of its own);
    path: a local path or an ObjectStoragePath in the run's work directory."""
    folder = str(path.parent) + "/"
    items = "".join(
        f'<li><a href="{html.escape(index.removeprefix(folder))}">{html.escape(name)}</a></li>'
        for name, index in docs.items()
    )
    path.write_text(
        f"<html><body><h1>Great Expectations Data Docs</h1><ul>{items}</ul></body></html>",
        encoding="utf-8",
    )
    return path
