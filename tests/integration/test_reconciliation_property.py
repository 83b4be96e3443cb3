"""Property: over generated months, every row read has exactly one outcome, and the billing
lines add up to the billed calls to the cent and to an independent computation.

Runs the DAG's task functions (tasks.chain: ledger, references, row checks, duplicates,
partial calls, rating, attribution, aggregation and their proofs) on a SQLite billing
database; the Great Expectations suites and SFTP are covered by the DAG tests."""

import dataclasses
import json
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from cdr_billing import aggregate, report, workdir
from cdr_billing.config import load_config
from cdr_billing.contracts import Run
from cdr_billing.migrations import upgrade
from cdr_billing.money import from_minor_units
from cdr_billing.months import BillingMonth
from cdr_billing.tasks import chain
from cdr_devkit.sample_data import generate_month
from oracle import expected_lines, expected_revenue_share


def _bill(root: Path, month: BillingMonth) -> tuple[dict, dict]:
    """The month through the DAG's task functions (tasks.chain, the suites left out); return
    (counts, frames)."""
    shipped = load_config()  # the generated flaws pass the rejection limit of small files
    config = dataclasses.replace(
        shipped, billing=dataclasses.replace(shipped.billing, max_rejected_share=1.0)
    )
    files = [
        ("cdr", source.name, path)
        for source in config.sources
        for path in (root / source.remote_dir.lstrip("/")).glob(source.pattern_for(str(month)))
    ]
    files.append(("tariff", "tariff", sorted((root / "reference").glob("tariff*.csv"))[-1]))
    newest = sorted((root / "reference").glob("entitlements_*.csv"))[-1]
    files.append(("entitlements", "entitlements", newest))
    run = Run(str(month), root.name, str(root / "work"))
    lines = chain.bill_month(config, chain.fetched_locally(config, run, files), expectations=False)
    frames = {
        "attributed": workdir.read_parts(run, [f.dir for f in lines.month.files], "attributed"),
        "user_lines": workdir.read(run, "user_lines"),
        "lines": workdir.read(run, "lines"),
        "shares": workdir.read(run, "revenue_share"),
    }
    return dataclasses.asdict(lines.counts), frames


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    year=st.integers(2025, 2027),
    month=st.integers(1, 12),
    carrier_calls=st.integers(440, 1500),
    conference_legs=st.integers(1, 600),
    pbx_calls=st.integers(1, 400),
)
def test_every_row_is_accounted_for_and_the_money_adds_up(
    tmp_path_factory, monkeypatch, seed, year, month, carrier_calls, conference_legs, pbx_calls
):
    root = tmp_path_factory.mktemp("month")
    billing_month = BillingMonth(year, month)
    generate_month(
        root,
        billing_month,
        seed=seed,
        carrier_calls=carrier_calls,
        conference_legs=conference_legs,
        pbx_calls=pbx_calls,
    )
    database = {"conn_type": "sqlite", "host": str(root / "billing.sqlite")}
    monkeypatch.setenv("AIRFLOW_CONN_BILLING_DB", json.dumps(database))  # this example's own
    upgrade(create_engine(f"sqlite:///{root / 'billing.sqlite'}"))
    counts, frames = _bill(root, billing_month)

    report.reconcile(
        counts
    )  # read = billed + quarantined + duplicates + not billable + unbillable + suspense + combined
    assert (
        counts["quarantined"] >= 3 and counts["duplicates"] == 3 and counts["combined"] == 20
    )  # the generated flaws
    lines, attributed = frames["lines"], frames["attributed"]
    report.check_totals(lines, aggregate.call_totals(attributed))
    assert lines["call_count"].sum() == len(attributed)
    assert frames["user_lines"]["total_minor"].sum() == lines["total_minor"].sum()
    got = {
        (r.customer_id, r.sequence_number): from_minor_units(r.total_minor, r.currency)
        for r in lines.itertuples()
    }
    assert got == expected_lines(root, year, month)
    shares = {
        (r.service_provider, Decimal(r.share_basis_points) / 100): (
            from_minor_units(r.billed_minor, r.currency),
            from_minor_units(r.share_minor, r.currency),
        )
        for r in frames["shares"].itertuples()
    }
    assert shares == expected_revenue_share(root, year, month)
