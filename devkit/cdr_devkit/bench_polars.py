"""The Polars peer of `make bench-pipeline`: the DuckDB peer's rules in Polars' lazy API.

The issue asks that the project be compared with the fastest engine a Python user would pick:
Polars (Rust, multi-threaded, a query optimiser). Every value is read as text
(`scan_csv(..., infer_schema=False)`), then typed and checked like `validate.check_rows` for the
carrier profile, exactly as `bench_pipeline.run_duckdb` does in SQL: the first of each
transaction id by file and row, partial parts merged per session, E.164, the longest prefix
with a rate valid at the start, increments, the cost in micro-units rounded half up once,
attribution with the default sequence number, suspense, aggregation. The benchmark month is
carrier CSV only (the DuckDB peer reads no Excel either).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from iso4217 import Currency

from cdr_billing.months import BillingMonth
from cdr_devkit.bench_data import MONTH

if TYPE_CHECKING:
    import polars as pl

SOURCE = "carrier"
ENTITLED = ("true", "1", "yes", "y", "t")
NOT_ENTITLED = ("false", "0", "no", "n", "f")
SEPARATORS = r"[\t\n\f\r \-().]"  # DuckDB's (RE2's) \s is ASCII without \v: the same class
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)  # an open validity's end


class PolarsRun(NamedTuple):
    """What the peer returns, as `run_duckdb` does: the lines (pandas), the counts, the stages."""

    lines: object
    counts: dict[str, int]
    stage_seconds: dict[str, float]


def _text(name: str) -> pl.Expr:
    """A value as DuckDB's `coalesce(trim(x), '')` gives it: spaces (only) trimmed, '' for none."""
    import polars as pl

    return pl.col(name).str.strip_chars(" ").fill_null("")


def _start_utc(text: pl.Expr, zone: str) -> pl.Expr:
    """A start as UTC: a number is an Excel serial day in the profile's zone; else ISO 8601 with
    'T' and an offset or 'Z', or naive ('T' or space) in the profile's zone."""
    import polars as pl

    serial = text.cast(pl.Float64, strict=False)
    serial_time = (
        pl.lit(datetime(1899, 12, 30))
        + pl.duration(seconds=(serial * 86_400).round(0).cast(pl.Int64, strict=False))
    ).dt.replace_time_zone(zone, ambiguous="null", non_existent="null")
    aware = text.str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_unit="us", time_zone="UTC"
    )
    naive = pl.coalesce(
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us"),
    ).dt.replace_time_zone(zone, ambiguous="null", non_existent="null")
    return (
        pl.when(serial.is_finite())
        .then(serial_time)
        .otherwise(pl.coalesce(aware, naive))
        .dt.convert_time_zone("UTC")
    )


def _checked(files: Sequence[Path], month: BillingMonth, config) -> pl.LazyFrame:
    """Every row read as text, typed and checked as `check_rows` does (`rejected`: any check
    failed); `rid` is the file order, then the row order."""
    import polars as pl

    rules, profile = config.billing, config.profile_for(SOURCE)
    start, end = month.bounds(rules.timezone)
    tolerance = timedelta(hours=rules.month_tolerance_hours)
    first, last = (start - tolerance).astimezone(UTC), (end + tolerance).astimezone(UTC)
    column = profile.columns
    raw = pl.scan_csv(
        [str(f) for f in files],
        infer_schema=False,
        separator=profile.delimiter,
        row_index_name="rid",
    ).select(
        "rid",
        **{
            field: _text(column[field])
            for field in (
                "transaction_id",
                "session_id",
                "user_id",
                "start_of_usage",
                "duration_of_usage",
                "completion_status",
                "transaction_part_number",
                "revenue_share_percentage",
            )
        },
        destination_party=_text(column["destination_party"]).str.replace_all(SEPARATORS, ""),
    )
    duration, status = pl.col("duration_of_usage"), pl.col("completion_status")
    share, part = pl.col("revenue_share_percentage"), pl.col("transaction_part_number")
    typed = raw.with_columns(
        start_utc=_start_utc(pl.col("start_of_usage"), profile.timezone),
        seconds=pl.when(duration.str.contains(r"^-?[0-9]+(\.0+)?$"))
        .then(duration.str.replace(r"\.0+$", "").cast(pl.Float64, strict=False))
        .otherwise(None),
        status_number=pl.when(status.str.contains(r"^[0-3](\.0+)?$"))
        .then(status.str.slice(0, 1).cast(pl.Int8))
        .otherwise(None),
    )
    seconds, maximum = pl.col("seconds"), int(rules.max_call_seconds)
    in_range = seconds.is_between(0, maximum)
    ok = (
        (pl.col("transaction_id") != "")  # MISSING_TRANSACTION_ID
        & (pl.col("user_id") != "")  # MISSING_ACCOUNT
        & pl.col("start_utc").is_not_null()  # BAD_TIMESTAMP
        & (pl.col("start_utc") >= first)  # OUTSIDE_MONTH
        & (pl.col("start_utc") < last)
        & in_range  # BAD_DURATION (null), DURATION_OUT_OF_RANGE
        & pl.col("status_number").is_not_null()  # BAD_COMPLETION_STATUS
        & part.str.contains(r"^[0-9]*$")  # BAD_PART_NUMBER
        & (  # BAD_REVENUE_SHARE: 0-100, at most two decimals
            (share == "")
            | (
                share.str.contains(r"^[0-9]+(\.[0-9]{1,2}0*)?$")
                & share.cast(pl.Float64, strict=False).is_between(0, 100)
            )
        )
        & pl.col("destination_party").str.contains(r"^\+?[0-9]{4,17}$")  # BAD_NUMBER
    )
    return typed.select(
        "rid",
        "transaction_id",
        "session_id",
        "user_id",
        "start_utc",
        duration_seconds=pl.when(in_range).then(seconds.cast(pl.Int64)),
        completion_status="status_number",
        destination_party="destination_party",
        part_number="transaction_part_number",
        rejected=~ok.fill_null(False),
    )


def _calls(checked: pl.LazyFrame) -> pl.LazyFrame:
    """The month's calls: the first of each transaction id (by file, row); the parts of a
    partial call merged into one per session (the first by start, then part number as a number,
    then id; durations summed); `parts` the rows each call stands for."""
    import polars as pl

    firsts = checked.filter(~pl.col("rejected")).filter(
        pl.col("transaction_id").is_first_distinct()
    )
    partial = (pl.col("completion_status") == 2) & (pl.col("session_id") != "")
    columns = ["rid", "user_id", "start_utc", "completion_status", "destination_party"]
    whole = firsts.filter(~partial).select(*columns, "duration_seconds", parts=pl.lit(1, pl.UInt32))
    number = pl.col("part_number").str.strip_chars_start("0")
    heads = (
        firsts.filter(partial)
        .sort(["start_utc", number.str.len_bytes(), number, "transaction_id"])
        .group_by("session_id")
        .agg(
            *[pl.col(c).first() for c in columns],
            duration_seconds=pl.col("duration_seconds").sum(),
            parts=pl.len(),
        )
        .select(*columns, "duration_seconds", "parts")
    )
    return pl.concat([whole, heads])


def _micro(name: str) -> pl.Expr:
    """A tariff amount as integer micro-units (exact: a decimal, not a float)."""
    import polars as pl

    text = pl.col(name).str.strip_chars(" ").replace("", None).fill_null("0")
    return (text.cast(pl.Decimal(38, 6)) * 1_000_000).cast(pl.Int64)


def _too_precise(name: str) -> pl.Expr:
    """More than six decimals (the project refuses the tariff)."""
    import polars as pl

    return pl.col(name).fill_null("").str.strip_chars(" ").str.contains(r"\.[0-9]{6}0*[1-9]")


def _validity(name: str, present: bool, zone: str, otherwise: datetime) -> pl.Expr:
    """A validity bound (a date or date-time in the billing zone) as UTC; open: `otherwise`."""
    import polars as pl

    if not present:
        return pl.lit(otherwise, pl.Datetime("us", "UTC"))
    text = pl.col(name).str.strip_chars(" ").replace("", None)
    local = pl.coalesce(
        text.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False, time_unit="us"),
        text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")),
    )
    return (
        local.dt.replace_time_zone(zone)
        .dt.convert_time_zone("UTC")
        .fill_null(pl.lit(otherwise, pl.Datetime("us", "UTC")))
    )


def _tariff(path: Path, config) -> pl.DataFrame:
    """The tariff: integer micro-units, validity in UTC, `tariff_row` its line in the file."""
    import polars as pl

    frame = pl.read_csv(path, infer_schema=False)
    if set(frame.columns) & {"band", "weekdays", "start_hour", "end_hour"}:
        raise NotImplementedError("the Polars peer has no weekday/hour bands")
    zone = config.billing.timezone
    micro_per_minor = {c.code: 10 ** (6 - c.exponent) for c in Currency if c.exponent is not None}
    amounts = ("price_per_minute", "connection_fee", "minimum_charge")
    if frame.select(pl.any_horizontal(*[_too_precise(c) for c in amounts]).any()).item():
        raise ValueError("tariff: a price with more than six decimals (the project refuses it)")
    currency = pl.col("currency").str.strip_chars(" ").str.to_uppercase()
    return frame.with_row_index("tariff_row", offset=2).select(
        pl.col("tariff_row").cast(pl.Int64),
        prefix=pl.col("prefix").str.strip_chars(" ").str.strip_chars_start("+"),
        price_micro=_micro("price_per_minute"),
        fee_micro=_micro("connection_fee"),
        minimum_micro=_micro("minimum_charge"),
        first_increment=pl.col("first_increment").str.strip_chars(" ").cast(pl.Int64),
        next_increment=pl.col("next_increment").str.strip_chars(" ").cast(pl.Int64),
        currency=currency,
        micro_per_minor=currency.replace_strict(
            micro_per_minor, default=None, return_dtype=pl.Int64
        ),
        valid_from=_validity(
            "valid_from", "valid_from" in frame.columns, zone, datetime(1970, 1, 1, tzinfo=UTC)
        ),
        valid_to=_validity("valid_to", "valid_to" in frame.columns, zone, FAR_FUTURE),
    )


def _entitlements(path: Path) -> pl.DataFrame:
    """The snapshot: a user's own sequence number, else the default; refused as the project
    refuses it (a bad `entitled` flag, an account twice)."""
    import polars as pl

    frame = pl.read_csv(path, infer_schema=False)
    flag = _text("entitled").str.to_lowercase()
    snapshot = frame.select(
        account_id=_text("account_id"),
        customer_id=_text("customer_id"),
        sequence_number=pl.when(_text("sequence_number") != "")
        .then(_text("sequence_number"))
        .otherwise(_text("default_sequence_number")),
        entitled=flag.is_in(ENTITLED),
        flag_ok=flag.is_in(ENTITLED + NOT_ENTITLED),
    )
    bad_flags = snapshot.height - int(snapshot["flag_ok"].sum())
    repeated = snapshot.height - snapshot["account_id"].n_unique()
    if bad_flags or repeated:
        raise ValueError(
            f"entitlements: {bad_flags} bad 'entitled' flags, {repeated} repeated accounts"
        )
    return snapshot.drop("flag_ok")


def _e164(config) -> pl.Expr:
    """A checked number ('+'? and digits) as E.164 digits."""
    import polars as pl

    rules = config.billing
    number, international = pl.col("destination_party"), rules.international_prefix
    return (
        pl.when(number.str.starts_with("+"))
        .then(number.str.slice(1))
        .when(number.str.starts_with(international))
        .then(number.str.slice(len(international)))
        .when(number.str.starts_with(rules.national_prefix))
        .then(pl.lit(rules.country_code) + number.str.slice(len(rules.national_prefix)))
        .otherwise(number)
    )


def _best_rates(calls: pl.LazyFrame, tariff: pl.DataFrame, config) -> pl.LazyFrame:
    """Each call's rate: the longest prefix with a rate valid at its start (the later line on a
    tie), one join per prefix length (a number shorter than a prefix never matches it)."""
    import polars as pl

    numbers = (
        calls.filter(pl.col("completion_status") != 0)
        .select("rid", "start_utc", e164=_e164(config))
        .filter(pl.col("e164").str.len_bytes().is_between(1, 15))
        .filter(~pl.col("e164").str.starts_with("0"))
    )
    rates = tariff.lazy().select("tariff_row", "prefix", "valid_from", "valid_to")
    widths = sorted(set(tariff["prefix"].str.len_bytes().to_list()))
    matches = [
        numbers.filter(pl.col("e164").str.len_bytes() >= width)
        .select("rid", "start_utc", prefix=pl.col("e164").str.slice(0, width))
        .join(rates, on="prefix")
        .filter(
            (pl.col("valid_from") <= pl.col("start_utc"))
            & (pl.col("start_utc") < pl.col("valid_to"))
        )
        .select("rid", "tariff_row", rank=pl.lit(width * 1_000_000) + pl.col("tariff_row"))
        for width in widths
    ]
    return pl.concat(matches).group_by("rid").agg(pl.col("tariff_row").sort_by("rank").last())


def _costed(calls: pl.LazyFrame, tariff: pl.DataFrame, config) -> pl.LazyFrame:
    """Billed seconds (first increment, then whole next increments) and the cost: fee + price x
    seconds / 60, at least the minimum, in micro-units, rounded half up to the minor unit once."""
    import polars as pl

    seconds, first, following = (
        pl.col("duration_seconds"),
        pl.col("first_increment"),
        pl.col("next_increment"),
    )
    billed = (
        pl.when(seconds > 0)
        .then(
            first + (pl.max_horizontal(seconds - first, 0) + following - 1) // following * following
        )
        .otherwise(0)
    )
    sixty = pl.max_horizontal(
        pl.col("fee_micro") * 60 + pl.col("price_micro") * pl.col("billed_seconds"),
        pl.col("minimum_micro") * 60,
    )
    unit = pl.col("micro_per_minor")
    return (
        _best_rates(calls, tariff, config)
        .join(calls.select("rid", "duration_seconds"), on="rid")
        .join(tariff.lazy(), on="tariff_row")
        .with_columns(billed_seconds=billed)
        .select(
            "rid",
            "currency",
            "billed_seconds",
            cost_minor=sixty.sign() * ((sixty.abs() + unit * 30) // (unit * 60)),
        )
    )


def _outcomes(calls: pl.LazyFrame, tariff: pl.DataFrame, snapshot: pl.DataFrame, config):
    """Each call's outcome (not billable, unbillable, suspense, billed) and its line."""
    import polars as pl

    entitled = snapshot.lazy().with_columns(known=pl.lit(True))
    return (
        calls.select("rid", "user_id", "completion_status", "parts")
        .join(_costed(calls, tariff, config), on="rid", how="left")
        .join(entitled, left_on="user_id", right_on="account_id", how="left")
        .select(
            "parts",
            "customer_id",
            "sequence_number",
            "currency",
            "cost_minor",
            "billed_seconds",
            outcome=pl.when(pl.col("completion_status") == 0)
            .then(pl.lit("not_billable"))
            .when(pl.col("cost_minor").is_null())
            .then(pl.lit("unbillable"))
            .when(
                pl.col("known").is_null()
                | ~pl.col("entitled")
                | (pl.col("customer_id") == "")
                | (pl.col("sequence_number") == "")
            )
            .then(pl.lit("suspense"))
            .otherwise(pl.lit("billed")),
        )
    )


def _lines(outcomes: pl.LazyFrame) -> pl.LazyFrame:
    import polars as pl

    return (
        outcomes.filter(pl.col("outcome") == "billed")
        .group_by("customer_id", "sequence_number", "currency")
        .agg(
            total_minor=pl.col("cost_minor").sum(),
            call_count=pl.len().cast(pl.Int64),
            billed_seconds=pl.col("billed_seconds").sum(),
        )
        .sort("customer_id", "sequence_number", "currency")
    )


def _counts(checked: pl.DataFrame, calls: pl.DataFrame, outcomes: pl.DataFrame) -> dict[str, int]:
    """The row accounting, as `COUNTS_SQL`."""
    quarantined = int(checked["rejected"].sum())
    parts = int(calls["parts"].sum())
    per_outcome = dict(outcomes["outcome"].value_counts().iter_rows())
    return {
        "read": checked.height,
        "quarantined": quarantined,
        "duplicates": checked.height - quarantined - parts,
        "combined": parts - calls.height,
        **{
            k: int(per_outcome.get(k, 0))
            for k in ("billed", "not_billable", "unbillable", "suspense")
        },
        "prepaid": 0,  # the benchmark's month has no prepaid account
    }


def run_polars(
    files: Sequence[Path],
    tariff_path: Path,
    entitlements_path: Path,
    month: BillingMonth = MONTH,
    *,
    threads: int = 2,
    progress: Callable[[str], None] | None = None,
) -> PolarsRun:
    """The same month in Polars' lazy API by the project's rules, the stages the DuckDB peer's;
    returns (lines, counts, stage_seconds)."""
    os.environ.setdefault("POLARS_MAX_THREADS", str(int(threads)))  # before the first import
    from cdr_billing.config import load_config
    from cdr_devkit.bench_pipeline import LINE_COLUMNS, Stopwatch

    config = load_config()
    clock = Stopwatch("polars", progress)
    with clock.stage("read+check"):
        checked = _checked(files, month, config).collect()
    with clock.stage("dedupe+combine"):
        calls = _calls(checked.lazy()).collect()
    with clock.stage("reference"):
        tariff = _tariff(Path(tariff_path), config)
        snapshot = _entitlements(Path(entitlements_path))
    with clock.stage("rate+attribute"):
        outcomes = _outcomes(calls.lazy(), tariff, snapshot, config).collect()
    with clock.stage("aggregate"):
        lines = _lines(outcomes.lazy()).collect()
        counts = _counts(checked, calls, outcomes)
    return PolarsRun(lines.to_pandas()[LINE_COLUMNS], counts, clock.seconds)
