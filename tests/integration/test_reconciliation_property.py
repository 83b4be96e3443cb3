"""Property: over generated months, every row read has exactly one outcome, and the billing
lines add up to the billed calls to the cent and to an independent computation.

Runs the domain stages (read, validate, price, attribute, aggregate) on a SQLite billing
database; the Great Expectations suites and SFTP are covered by the DAG tests."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from cdr_billing import (
    aggregate,
    attribute,
    dedupe,
    entitlements,
    hashing,
    rate,
    read,
    report,
    tariff,
    validate,
)
from cdr_billing.config import load_config
from cdr_billing.migrations import upgrade
from cdr_billing.money import from_minor_units
from cdr_billing.months import BillingMonth
from cdr_devkit.sample_data import generate_month
from oracle import expected_lines, expected_revenue_share


def _bill(root: Path, month: BillingMonth, engine) -> tuple[dict, dict]:
    """The month through the domain stages; return (counts, frames)."""
    config = load_config()
    checked, read_rows = [], 0
    for source in config.sources:
        (path,) = (root / source.remote_dir.lstrip("/")).glob(source.pattern_for(str(month)))
        raw = read.read_cdr_file(path, config.profile_for(source.name)).assign(source=source.name)
        read_rows += len(raw)
        checked.append(
            validate.check_rows(raw, config.profile_for(source.name), month, config.billing)
        )
    again = hashing.repeated_per_file(
        [c.call_hashes for c in checked], lambda n, rows: checked[n].accepted.iloc[rows]
    )
    calls = pd.concat(
        [c.accepted[~repeated] for c, repeated in zip(checked, again, strict=True)],
        ignore_index=True,
    )
    tariff.load_file(engine, sorted((root / "reference").glob("tariff*.csv"))[-1], config.billing)
    combined_calls, merged = dedupe.combine_partial_calls(calls)
    priced, unbillable, failed = rate.rate_calls(
        combined_calls, tariff.all_rates(engine), config.billing, config.markups()
    )
    newest = sorted((root / "reference").glob("entitlements_*.csv"))[-1]
    snapshot = entitlements.snapshot_for_month(
        engine,
        str(month),
        lambda: entitlements.from_file(newest, datetime.now(UTC), config.billing.timezone),
        False,
    )
    attributed, suspense, user_codes = attribute.attribute_calls(
        priced, entitlements.history(engine, snapshot), snapshot
    )
    user_lines = aggregate.aggregate_users(attributed, user_codes)
    counts = {
        "read": read_rows,
        "billed": len(attributed),
        "quarantined": sum(len(c.quarantined) for c in checked),
        "duplicates": sum(
            len(c.duplicates) + int(repeated.sum())
            for c, repeated in zip(checked, again, strict=True)
        ),
        "not_billable": len(failed),
        "unbillable": len(unbillable),
        "suspense": len(suspense),
        "combined": len(merged),
    }
    frames = {
        "attributed": attributed,
        "user_lines": user_lines,
        "lines": aggregate.aggregate_lines(user_lines),
        "shares": aggregate.revenue_share(aggregate.revenue_share_sums(attributed)),
    }
    return counts, frames


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
    tmp_path_factory, seed, year, month, carrier_calls, conference_legs, pbx_calls
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
    engine = create_engine(f"sqlite:///{root / 'billing.sqlite'}")
    upgrade(engine)
    counts, frames = _bill(root, billing_month, engine)

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
    engine.dispose()
