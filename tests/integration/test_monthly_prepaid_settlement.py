"""The monthly run and prepaid accounts, on a real PostgreSQL: the month's tasks (tasks.chain, as
the DAG orders them) on a generated month where three accounts are prepaid. Their calls leave
the post-paid lines for the row outcome `prepaid`, the rows still reconcile, settle_prepaid
debits each call once, a re-run posts nothing, and a re-run after a tariff fix posts exactly
one reversal and one new debit per call whose cost changed. Expected calls and costs come from
tests/oracle.py (csv, openpyxl and Decimal, no cdr_billing)."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from cdr_billing import report, workdir
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import LedgerPostings, Run
from cdr_billing.migrations import upgrade
from cdr_billing.money import from_minor_units
from cdr_billing.months import BillingMonth
from cdr_billing.prepaid import accounts
from cdr_billing.prepaid.balances import ledger_balance
from cdr_billing.schema import balance_entry, prepaid_account
from cdr_billing.tasks import chain
from cdr_billing.tasks.prepaid_settlement import settle_prepaid
from cdr_devkit.sample_data import generate_month
from oracle import PrepaidCall, expected_lines, expected_prepaid

MONTH = BillingMonth(2026, 10)
# a carrier account (tariff-priced), a carrier account the snapshot does not entitle (a prepaid
# account pays its own calls) and a conferencing account (priced by the provider)
PREPAID = frozenset({"SUB-00061", "SUB-00093", "0000003"})
FIXED_PREFIX, FIXED_PRICE = "467", "0.1900"  # Sweden mobile, 0.0900 per minute before the fix
LEVELS = accounts.AccountSettings(
    currency="EUR",
    low_balance_minor=0,
    topup_minor=2000,
    lock_level_minor=-1_000_000,
    unlock_level_minor=0,
)


@dataclasses.dataclass(frozen=True)
class Month:
    """The generated month, its billing database and the pipeline config billing it."""

    root: Path
    engine: Engine
    config: PipelineConfig


@pytest.fixture(scope="module")
def month(postgres, tmp_path_factory) -> Month:
    root = tmp_path_factory.mktemp("prepaid_month")
    generate_month(root, MONTH, seed=26, carrier_calls=1200, conference_legs=300, pbx_calls=150)
    database = postgres.create_database("monthly_prepaid")
    with pytest.MonkeyPatch.context() as patch:  # the tasks' billing_db, for the module
        patch.setenv("AIRFLOW_CONN_BILLING_DB", json.dumps(postgres.connection(database)))
        engine = create_engine(postgres.url_of(database))
        upgrade(engine)
        with engine.begin() as conn:
            for account in sorted(PREPAID):
                accounts.add(conn, account, LEVELS, "test")
        shipped = load_config()  # the generated flaws pass the rejection limit of small files
        config = dataclasses.replace(
            shipped, billing=dataclasses.replace(shipped.billing, max_rejected_share=1.0)
        )
        yield Month(root, engine, config)


def run_month(month: Month, run_id: str) -> chain.BilledMonth:
    """The month's tasks on its files, the newest tariff file as the month's tariff."""
    files = [
        ("cdr", source.name, path)
        for source in month.config.sources
        for path in (month.root / source.remote_dir.lstrip("/")).glob(
            source.pattern_for(str(MONTH))
        )
    ]
    files.append(("tariff", "tariff", newest(month.root, "tariff*.csv")))
    files.append(("entitlements", "entitlements", newest(month.root, "entitlements_*.csv")))
    run = Run(str(MONTH), run_id, str(month.root / "work" / run_id))
    fetched = chain.fetched_locally(month.config, run, files)
    return chain.run_month(month.config, fetched, expectations=False)


def newest(root: Path, pattern: str) -> Path:
    return sorted((root / "reference").glob(pattern))[-1]


def entries(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(balance_entry)).mappings()]


def minor(cost: Decimal) -> int:
    return int(cost * 100)  # EUR


def line_totals(billed: chain.BilledMonth) -> dict[tuple[str, str], Decimal]:
    """The run's billing lines: {(customer id, sequence number): total}."""
    return {
        (r.customer_id, r.sequence_number): from_minor_units(r.total_minor, r.currency)
        for r in workdir.read(billed.lines.run, "lines").itertuples()
    }


def assert_balances_are_minus_the_costs(engine: Engine, expected: dict[str, PrepaidCall]):
    owed = Counter()
    for call in expected.values():
        owed[call.account] += minor(call.cost)
    with engine.connect() as conn:
        cached = dict(
            conn.execute(
                select(prepaid_account.c.account_id, prepaid_account.c.balance_minor)
            ).all()
        )
        assert {a: ledger_balance(conn, a) for a in PREPAID} == {a: -owed[a] for a in PREPAID}
    assert cached == {a: -owed[a] for a in PREPAID}


@pytest.fixture(scope="module")
def first(month: Month) -> chain.BilledMonth:
    return run_month(month, "first")


def test_prepaid_calls_leave_the_lines_and_the_rows_still_reconcile(month, first):
    expected = expected_prepaid(month.root, 2026, 10, PREPAID)
    assert {c.account for c in expected.values()} == PREPAID  # each has priced calls
    counts = dataclasses.asdict(first.lines.counts)
    report.reconcile(counts)
    assert counts["prepaid"] == len(expected)
    run, dirs = first.lines.run, [f.dir for f in first.lines.month.files]
    attributed = workdir.read_parts(run, dirs, "attributed")
    assert not set(attributed["user_id"]) & PREPAID
    assert not set(workdir.read_parts(run, dirs, "suspense")["user_id"]) & PREPAID
    got = line_totals(first)
    assert got == expected_lines(month.root, 2026, 10, prepaid=PREPAID)
    assert got != expected_lines(month.root, 2026, 10)  # the prepaid calls were billed before


def test_each_prepaid_call_is_debited_once_and_the_balances_are_minus_the_costs(month, first):
    expected = expected_prepaid(month.root, 2026, 10, PREPAID)
    assert first.settlement.postings == LedgerPostings(
        debited=len(expected),
        rerated=0,
        unchanged=0,
        redelivered=0,
        reversed=0,
        refused=0,
        accounts=3,
    )
    debits = Counter(e["call_key"] for e in entries(month.engine) if e["kind"] == "debit")
    assert debits == Counter(list(expected))  # each call exactly once, no other call
    assert {e["kind"] for e in entries(month.engine)} == {"debit"}
    assert_balances_are_minus_the_costs(month.engine, expected)


def test_a_rerun_and_a_retried_settlement_post_nothing(month, first):
    before = entries(month.engine)
    again = run_month(month, "again")
    retried = settle_prepaid(again.lines, month.config)
    unchanged = len(expected_prepaid(month.root, 2026, 10, PREPAID))
    for settlement in (again.settlement, retried):
        assert settlement.postings == LedgerPostings(
            debited=0,
            rerated=0,
            unchanged=unchanged,
            redelivered=0,
            reversed=0,
            refused=0,
            accounts=3,
        )
    assert entries(month.engine) == before


def test_a_rerun_after_a_tariff_fix_reverses_and_debits_only_the_changed_calls(month, first):
    old = expected_prepaid(month.root, 2026, 10, PREPAID)
    before = {e["entry_id"] for e in entries(month.engine)}
    fixed_tariff(month.root)
    new = expected_prepaid(month.root, 2026, 10, PREPAID)
    changed = {key for key in new if new[key].cost != old[key].cost}
    assert set(new) == set(old) and 0 < len(changed) < len(new)
    fixed = run_month(month, "tariff_fix")
    assert fixed.settlement.postings == LedgerPostings(
        debited=0,
        rerated=len(changed),
        unchanged=len(new) - len(changed),
        redelivered=0,
        reversed=0,
        refused=0,
        accounts=3,
    )
    posted = [e for e in entries(month.engine) if e["entry_id"] not in before]
    assert Counter((e["call_key"], e["kind"]) for e in posted) == Counter(
        {(key, kind): 1 for key in changed for kind in ("reversal", "debit")}
    )
    for entry in posted:
        call = entry["call_key"]
        amount = minor(old[call].cost) if entry["kind"] == "reversal" else -minor(new[call].cost)
        assert entry["amount_minor"] == amount, entry
    assert_balances_are_minus_the_costs(month.engine, new)
    report.reconcile(dataclasses.asdict(fixed.lines.counts))
    assert fixed.lines.counts.prepaid == len(new)
    assert line_totals(fixed) == expected_lines(month.root, 2026, 10, prepaid=PREPAID)


def fixed_tariff(root: Path) -> Path:
    """A later tariff file of the month: FIXED_PREFIX at another price per minute."""
    source = newest(root, "tariff*.csv")
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["prefix"] == FIXED_PREFIX:
            row["price_per_minute"] = FIXED_PRICE
    fixed = root / "reference" / f"tariff_{MONTH}-20.csv"
    with fixed.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return fixed
