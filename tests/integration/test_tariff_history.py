"""Tariff versions in a real PostgreSQL: a load adds a version and never changes history."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import create_engine

from cdr_billing.config import BillingSettings
from cdr_billing.migrations import upgrade
from cdr_billing.tariff import all_rates, load_file

RULES = BillingSettings("billing_db", "Europe/Stockholm", "46", "0", "00", 86400, 0, 0.01)
HEADER = (
    "prefix,destination,price_per_minute,connection_fee,first_increment,next_increment,"
    "minimum_charge,currency,valid_from\n"
)


def test_loads_add_versions_and_keep_history(postgres, tmp_path):
    engine = create_engine(postgres.url_of(postgres.create_database("tariff_history")))
    upgrade(engine)
    first, second = tmp_path / "tariff_2026-10.csv", tmp_path / "tariff_2026-11.xlsx"
    first.write_text(
        HEADER + "46,Sweden,0.0200,0,60,60,0,EUR,\n467,Mobile,0.0900,0.05,60,60,0.10,EUR,\n"
    )
    pd.DataFrame(
        [
            {
                "prefix": "467",
                "destination": "Mobile",
                "price_per_minute": "0.0700",
                "connection_fee": "0.05",
                "first_increment": "60",
                "next_increment": "60",
                "minimum_charge": "0.10",
                "currency": "EUR",
                "valid_from": "2026-11-01",
            }
        ]
    ).to_excel(second, index=False)
    v1 = load_file(engine, first, RULES)
    before = all_rates(engine)
    v2 = load_file(engine, second, RULES)
    assert (v1, v2) == (1, 2)
    assert load_file(engine, first, RULES) == v1  # the same file again: its version, nothing added
    after = all_rates(engine)
    assert (
        after[after["version_id"] == v1]
        .reset_index(drop=True)
        .equals(before.reset_index(drop=True))
    )
    new = after[after["version_id"] == v2].iloc[0]
    assert (new["prefix"], new["price_micro"], str(new["valid_from"])) == (
        "467",
        70_000,
        "2026-10-31 23:00:00+00:00",
    )


def test_a_stored_rate_keeps_its_normalised_prefix_and_the_moment_as_written(postgres, tmp_path):
    engine = create_engine(postgres.url_of(postgres.create_database("tariff_normalised")))
    upgrade(engine)
    path = tmp_path / "tariff_denmark.csv"
    path.write_text(HEADER + "0045,Denmark,0.0300,,60,60,,dkk,2026-10-25T02:30:00+01:00\n")
    load_file(engine, path, RULES)
    stored = all_rates(engine).iloc[0]
    assert (stored["prefix"], stored["currency"], stored["fee_micro"]) == ("45", "DKK", 0)
    assert str(stored["valid_from"]) == "2026-10-25 01:30:00+00:00"
