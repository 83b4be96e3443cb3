"""A refused tariff file stores nothing, in a real PostgreSQL: the versions and rates stay as
they were."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from sqlalchemy import create_engine, func, select

from cdr_billing.config import BillingSettings
from cdr_billing.migrations import upgrade
from cdr_billing.schema import tariff_rate, tariff_version
from cdr_billing.tariff import TariffError, load_file

RULES = BillingSettings("billing_db", "Europe/Stockholm", "46", "0", "00", 86400, 0, 0.01)
HEADER = (
    "prefix,destination,price_per_minute,connection_fee,first_increment,next_increment,"
    "minimum_charge,currency,valid_from\n"
)
GOOD = "46,Sweden,0.0200,0,60,60,0,EUR,\n"
# (case, the row after a good one (line 3), the column named)
REFUSED = [
    ("empty price", "47,Norway,,0,60,60,0,EUR,", "price_per_minute"),
    ("negative fee", "47,Norway,0.02,-0.05,60,60,0,EUR,", "connection_fee"),
    ("exponent increment", "47,Norway,0.02,0,1e1,60,0,EUR,", "first_increment"),
    ("not a currency", "47,Norway,0.02,0,60,60,0,EURO,", "currency"),
    ("prefix that cannot match", "+0047,Norway,0.02,0,60,60,0,EUR,", "prefix"),
    ("overlapping rows", "+46,Sweden again,0.03,0,60,60,0,EUR,", "prefix"),
    ("repeated wall time", "47,Norway,0.02,0,60,60,0,EUR,2026-10-25 02:30", "valid_from"),
]


class Stored(NamedTuple):
    """How many tariff versions and rates the database holds."""

    versions: int
    rates: int


def counts(engine) -> Stored:
    with engine.connect() as conn:
        versions, rates = (
            conn.execute(select(func.count()).select_from(table)).scalar()
            for table in (tariff_version, tariff_rate)
        )
    return Stored(versions, rates)


@pytest.fixture(scope="module")
def engine(postgres):
    engine = create_engine(postgres.url_of(postgres.create_database("tariff_refusals")))
    upgrade(engine)
    return engine


@pytest.fixture(scope="module")
def loaded(engine, tmp_path_factory) -> Stored:
    """One good version first, so an unchanged history has rows in it."""
    path = tmp_path_factory.mktemp("good") / "tariff_good.csv"
    path.write_text(HEADER + GOOD)
    load_file(engine, path, RULES)
    return counts(engine)


@pytest.mark.parametrize(
    ("case", "bad_row", "column"), REFUSED, ids=[case for case, _, _ in REFUSED]
)
def test_a_refused_file_stores_nothing(engine, loaded, tmp_path, case, bad_row, column):
    path = tmp_path / "tariff_bad.csv"
    path.write_text(HEADER + GOOD + bad_row + "\n")
    with pytest.raises(TariffError, match=f"tariff_bad.csv line 3: {column} "):
        load_file(engine, path, RULES)
    assert counts(engine) == loaded == (1, 1), case


def test_a_file_in_another_encoding_stores_nothing(engine, loaded, tmp_path):
    path = tmp_path / "tariff_latin1.csv"
    path.write_bytes((HEADER + GOOD + "47,Göteborg,0.02,0,60,60,0,EUR,\n").encode("latin-1"))
    with pytest.raises(TariffError, match="tariff_latin1.csv line 3: byte .* is not UTF-8"):
        load_file(engine, path, RULES)
    assert counts(engine) == loaded
