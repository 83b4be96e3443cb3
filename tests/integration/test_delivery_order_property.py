"""Properties of "first delivery wins": a month's lines are the same for any order in which
the servers list the same files, and for any split of the same rows into files (named in row
order, fetched together). Runs the functions the DAG's tasks run, on real PostgreSQL."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdr_billing.config import load_config
from cdr_billing.months import BillingMonth
from cdr_devkit.sample_data import generate_month
from stage_chain import bill_month, item, lines_of

MONTH = BillingMonth(2026, 10)
COUNTER = itertools.count()


@pytest.fixture(scope="module")
def month_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("month")
    generate_month(root, MONTH, seed=7, carrier_calls=600, conference_legs=40, pbx_calls=30)
    return root


def _config():
    """The shipped config, with no file-level rejection limit: a small piece of a file may hold
    all of the month's few invalid rows."""
    config = load_config()
    return replace(config, billing=replace(config.billing, max_rejected_share=1.0))


def _bill(
    postgres, root: Path, work: Path, carrier_files: list[Path], listing: list[int] | None = None
) -> pd.DataFrame:
    """The month's lines in a billing database of its own, the CDR files listed in `listing`
    order."""
    database = postgres.create_database(f"delivery{next(COUNTER)}")
    os.environ["AIRFLOW_CONN_BILLING_DB"] = json.dumps(postgres.connection(database))
    cdr = [item("cdr", "carrier", path) for path in carrier_files]
    cdr += [
        item("cdr", "conferencing", next((root / "cdr/conferencing").glob("*.xlsx"))),
        item("cdr", "pbx", next((root / "cdr/pbx").glob("*.csv"))),
    ]
    if listing is not None:
        cdr = [cdr[n] for n in listing]
    references = [
        item("tariff", "tariff", next((root / "reference").glob("tariff*.csv"))),
        item(
            "entitlements",
            "entitlements",
            sorted((root / "reference").glob("entitlements_*.csv"))[-1],
        ),
    ]
    return lines_of(bill_month(_config(), str(MONTH), work, cdr, references))


@pytest.fixture(scope="module")
def whole_month_lines(postgres, month_root, tmp_path_factory, pipeline_connections) -> pd.DataFrame:
    carrier = next((month_root / "cdr/carrier").glob("*.csv"))
    return _bill(postgres, month_root, tmp_path_factory.mktemp("whole") / "work", [carrier])


def _split(carrier: Path, cuts: list[int], folder: Path) -> list[Path]:
    """The carrier file's rows cut into pieces at `cuts` (row positions), named in row order."""
    header, *rows = carrier.read_text().splitlines(keepends=True)
    bounds = [0, *sorted(set(cuts)), len(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    pieces = []
    for n, (start, stop) in enumerate(itertools.pairwise(bounds)):
        piece = folder / f"{carrier.stem}_{n:02d}.csv"
        piece.write_text(header + "".join(rows[start:stop]))
        pieces.append(piece)
    return pieces


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_the_lines_do_not_depend_on_listing_order_or_on_how_rows_are_split_into_files(
    data, postgres, month_root, whole_month_lines, tmp_path_factory
):
    carrier = next((month_root / "cdr/carrier").glob("*.csv"))
    rows = len(carrier.read_text().splitlines()) - 1
    cuts = data.draw(st.lists(st.integers(1, rows - 1), min_size=1, max_size=3), label="cuts")
    folder = tmp_path_factory.mktemp("split")
    pieces = _split(carrier, cuts, folder / "files")
    listing = data.draw(st.permutations(range(len(pieces) + 2)), label="listing order")
    lines = _bill(postgres, month_root, folder / "work", pieces, listing)
    pd.testing.assert_frame_equal(
        lines.reset_index(drop=True), whole_month_lines.reset_index(drop=True)
    )
