"""The tariff: read from a CSV or Excel file, kept as versions in the billing database.

Every load adds a version and never changes an earlier one. For a prefix at a moment, the
rate of the newest version whose row is valid then (valid_from <= t < valid_to, weekday and
hour band in the billing timezone) applies; a version may hold a whole tariff or only the
rows that change (a new number range, a price from a date).

File columns: prefix, destination, price_per_minute, connection_fee, first_increment,
next_increment, minimum_charge, currency; optional valid_from, valid_to (dates or date-
times in the billing timezone; empty: open), band (a name), weekdays (1=Mon..7=Sun, e.g.
"12345"), start_hour and end_hour (the band's hours, [start, end)).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from cdr_billing import database
from cdr_billing.money import MoneyError, to_micro_units
from cdr_billing.schema import tariff_rate, tariff_version, to_records

REQUIRED_COLUMNS = (
    "prefix", "destination", "price_per_minute", "connection_fee", "first_increment", "next_increment", "minimum_charge",
    "currency",
)  # fmt: skip
OPTIONAL_COLUMNS = {"valid_from": "", "valid_to": "", "band": "all", "weekdays": "1234567", "start_hour": "0", "end_hour": "24"}
MONEY_COLUMNS = {"price_per_minute": "price_micro", "connection_fee": "fee_micro", "minimum_charge": "minimum_micro"}
OPEN_START = pd.Timestamp("1970-01-01", tz="UTC")


class TariffError(ValueError):
    """The tariff file is unusable; the message names the file and line."""


def _line_error(path: Path, line: int, reason: str) -> TariffError:
    return TariffError(f"{path.name} line {line}: {reason}")


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        import fastexcel

        return fastexcel.read_excel(str(path)).load_sheet(0, dtypes="string").to_pandas().fillna("")
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")


def _micro_column(path: Path, lines: pd.Series, texts: pd.Series, column: str) -> np.ndarray:
    values = []
    for line, text in zip(lines, texts, strict=True):
        try:
            values.append(to_micro_units(text or "0"))
        except MoneyError as exc:
            raise _line_error(path, line, f"{column}: {exc}") from exc
    return np.array(values, dtype=np.int64)


def _int_column(path: Path, lines: pd.Series, texts: pd.Series, column: str, low: int, high: int) -> np.ndarray:
    values = pd.to_numeric(texts, errors="coerce")
    bad = values.isna() | (values < low) | (values > high) | (values != values.round())
    if bad.any():
        raise _line_error(path, int(lines[bad].iloc[0]), f"{column} must be a whole number from {low} to {high}")
    return values.astype(np.int64).to_numpy()


def _moments(path: Path, lines: pd.Series, texts: pd.Series, column: str, timezone: str) -> pd.Series:
    parsed = pd.to_datetime(texts.where(texts != ""), format="ISO8601", errors="coerce")
    bad = parsed.isna() & (texts != "")
    if bad.any():
        raise _line_error(path, int(lines[bad].iloc[0]), f"{column} {texts[bad].iloc[0]!r} is not a date")
    return parsed.dt.tz_localize(timezone).dt.tz_convert("UTC")


def read_tariff_file(path: Path, timezone: str) -> pd.DataFrame:
    """Read and check a tariff file: exact integer money, UTC validity, weekday/hour bands."""
    raw = _read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise TariffError(f"{path.name}: missing columns {missing}")
    raw = raw.assign(**{c: d for c, d in OPTIONAL_COLUMNS.items() if c not in raw.columns}).apply(lambda c: c.str.strip())
    raw = raw.replace({"band": {"": "all"}, "weekdays": {"": "1234567"}, "start_hour": {"": "0"}, "end_hour": {"": "24"}})
    lines = pd.Series(np.arange(len(raw)) + 2, index=raw.index)
    tariff = pd.DataFrame({"line": lines, "prefix": raw["prefix"].str.lstrip("+"), "destination": raw["destination"],
                           "currency": raw["currency"].str.upper(), "band": raw["band"]})  # fmt: skip
    not_digits = ~tariff["prefix"].str.fullmatch(r"\d{1,15}")
    if not_digits.any():
        raise _line_error(path, int(lines[not_digits].iloc[0]), f"prefix {tariff['prefix'][not_digits].iloc[0]!r} is not digits")
    for column, micro in MONEY_COLUMNS.items():
        tariff[micro] = _micro_column(path, lines, raw[column], column)
    tariff["first_increment"] = _int_column(path, lines, raw["first_increment"], "first_increment", 1, 86400)
    tariff["next_increment"] = _int_column(path, lines, raw["next_increment"], "next_increment", 1, 86400)
    tariff["start_hour"] = _int_column(path, lines, raw["start_hour"], "start_hour", 0, 23)
    tariff["end_hour"] = _int_column(path, lines, raw["end_hour"], "end_hour", 1, 24)
    bad_days = ~raw["weekdays"].str.fullmatch(r"[1-7]{1,7}")
    if bad_days.any():
        raise _line_error(path, int(lines[bad_days].iloc[0]), "weekdays must be digits 1 (Monday) to 7 (Sunday)")
    tariff["weekday_mask"] = raw["weekdays"].map(lambda days: sum(1 << (int(d) - 1) for d in set(days))).astype(np.int64)
    tariff["valid_from"] = _moments(path, lines, raw["valid_from"], "valid_from", timezone).fillna(OPEN_START)
    tariff["valid_to"] = _moments(path, lines, raw["valid_to"], "valid_to", timezone)
    inverted = (tariff["start_hour"] >= tariff["end_hour"]) | (tariff["valid_to"] <= tariff["valid_from"])
    if inverted.any():
        raise _line_error(path, int(lines[inverted].iloc[0]), "a band or validity period ends before it starts")
    repeated = tariff.duplicated(subset=["prefix", "valid_from", "weekday_mask", "start_hour"], keep=False)
    if repeated.any():
        raise _line_error(path, int(lines[repeated].iloc[-1]), f"prefix {tariff['prefix'][repeated].iloc[0]} is listed twice")
    return tariff


def store_version(engine: Engine, tariff: pd.DataFrame, source_name: str, sha256: str) -> int:
    """Store a tariff as a new version (the same file content again: its existing version)."""
    with engine.begin() as conn:
        database.hold_lock(conn, "tariff_version")
        existing = conn.execute(select(tariff_version.c.version_id).where(tariff_version.c.sha256 == sha256)).scalar()
        if existing is not None:
            return existing
        version_id = conn.execute(
            insert(tariff_version).values(source_name=source_name, sha256=sha256, rate_count=len(tariff))
        ).inserted_primary_key[0]
        conn.execute(insert(tariff_rate), to_records(tariff, version_id=version_id))
    return version_id


def load_file(engine: Engine, path: Path, timezone: str) -> int:
    """Read a tariff file and store it as a version; return the version id."""
    return store_version(engine, read_tariff_file(path, timezone), path.name, hashlib.sha256(path.read_bytes()).hexdigest())


def all_rates(engine: Engine) -> pd.DataFrame:
    """Every rate of every version, for rating (newest version wins per prefix and moment)."""
    with engine.connect() as conn:
        rows = conn.execute(select(tariff_rate).order_by(tariff_rate.c.version_id, tariff_rate.c.line)).mappings().all()
    rates = pd.DataFrame(rows, columns=[c.name for c in tariff_rate.columns])
    for column in ("valid_from", "valid_to"):
        rates[column] = pd.to_datetime(rates[column], utc=True)
    integers = ["price_micro", "fee_micro", "minimum_micro", "first_increment", "next_increment", "start_hour", "end_hour"]
    return rates.astype(dict.fromkeys([*integers, "weekday_mask", "version_id", "line"], "int64"))


def main() -> None:
    """`python -m cdr_billing.tariff load FILE`: add a tariff version to the billing database."""
    from cdr_billing.config import load_config
    from cdr_billing.database import billing_engine
    from cdr_billing.migrations import upgrade

    parser = argparse.ArgumentParser(description="Load a tariff file as a new version (history is never changed).")
    parser.add_argument("action", choices=["load"])
    parser.add_argument("file", type=Path)
    args = parser.parse_args()
    config = load_config()
    engine = billing_engine(config.billing.connection)
    upgrade(engine)
    version = load_file(engine, args.file, config.billing.timezone)
    print(f"{args.file.name}: tariff version {version}")


if __name__ == "__main__":
    main()
