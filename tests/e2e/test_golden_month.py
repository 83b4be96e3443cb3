"""The golden month (tests/golden_month_data.py) through the real DAG on PostgreSQL, checked
against the rules' own oracle (tests/golden_oracle.py), in three runs:
a) the first run; b) a re-run after a server stopped listing a carrier file (read from the
archive): the same lines, no change; c) a re-run with refresh_entitlements after a correction
snapshot arrived: the suspense accounts it fixes are billed.
The month has its own SFTP servers, SMTP server, billing database, archive and work root."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import golden_month_data as data
import pytest
import yaml
from golden_oracle import Delivered, Line, MonthBill, bill_month, billed_priced_cost, minor_unit
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from cdr_devkit.airflow_env import PROJECT_ROOT, load_dag, run_dag
from cdr_devkit.services import LocalServices, connection_env, smtp_connection

MONTH = "2026-03"
MARKUPS = {"conferencing": Decimal("12.5"), "credits": Decimal("12.5")}
STATEMENT_CUSTOMERS = ("C100", "C200")


@dataclass
class Golden:
    """The golden month's files, servers' root, database and the runs made so far."""

    delivered: Path  # every file as first delivered (the oracle reads these)
    extras: Path  # the older tariff version and the correction snapshot
    root: Path  # what the SFTP servers serve
    engine: Engine
    config: Path
    first_lines: dict | None = None


def golden_config(folder: Path) -> Path:
    """The shipped pipeline.yaml for the golden month: conferencing and carrier, plus a source
    in the conferencing layout whose profile allows credits (both priced ones with a 12.5 %
    markup), its own work and archive roots, no file refused for its rejected rows (the oracle
    judges each row)."""
    profiles = yaml.safe_load((PROJECT_ROOT / "include/config/profiles.yaml").read_text())
    profiles["credits_xlsx"] = {**profiles["conferencing_xlsx"], "allow_credits": True}
    raw = yaml.safe_load((PROJECT_ROOT / "include/config/pipeline.yaml").read_text())
    sources = {s["name"]: s for s in raw["sources"]}
    credits = {
        "name": "credits",
        "profile": "credits_xlsx",
        "remote_dir": "/cdr/credits",
        "pattern": "credits_cdr_{yyyy}-{mm}*.xlsx",
    }
    raw["sources"] = [
        {**sources["conferencing"], "markup_percent": str(MARKUPS["conferencing"])},
        sources["carrier"],
        {**credits, "markup_percent": str(MARKUPS["credits"])},
    ]
    raw["billing"]["max_rejected_share"] = 1.0
    raw["work_root"] = str(folder / "work")
    raw["archive_root"] = str(folder / "archive")
    raw["profiles_file"] = "profiles.yaml"
    # statements for two of the three customers (mailed in tests/integration, not here)
    raw["statements"] = {"customers": {c: {"mask_digits": 3} for c in STATEMENT_CUSTOMERS}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profiles.yaml").write_text(yaml.safe_dump(profiles))
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    return folder / "pipeline.yaml"


def load_older_tariff(path: Path) -> None:
    """A tariff version from before the month, loaded the way operators do (the CLI)."""
    subprocess.run(
        [sys.executable, "-m", "cdr_billing.tariff", "load", str(path)],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def golden(tmp_path_factory, postgres, airflow_home):
    base = tmp_path_factory.mktemp("golden")
    delivered, extras, root = base / "delivered", base / "extras", base / "sftp"
    data.write_golden_month(delivered, extras)
    shutil.copytree(delivered, root)
    config = golden_config(base / "config")
    database = postgres.create_database("golden")
    with LocalServices(base / "services") as local, pytest.MonkeyPatch.context() as env:
        primary, secondary = (
            local.start_sftp("golden_primary", root),
            local.start_sftp("golden_secondary", root),
        )
        smtp = local.start_smtp(base / "mail")
        connections = {
            "cdr_sftp_primary": primary.connection(local.client_key),
            "cdr_sftp_secondary": secondary.connection(local.client_key),
            "billing_db": postgres.connection(database),
            "smtp_default": smtp_connection(smtp.port),
        }
        env.setenv("CDR_BILLING_CONFIG", str(config))
        for name, value in connection_env(connections).items():
            env.setenv(name, value)
        load_older_tariff(extras / data.OLDER_TARIFF)
        yield Golden(delivered, extras, root, create_engine(postgres.url_of(database)), config)


@pytest.fixture(scope="module")
def dag(golden):
    return load_dag()


# --- what the database holds -----------------------------------------------------------------


def current_batch(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT batch_id, run_id FROM billing_batch "
                "WHERE billing_month = :m AND status = 'current'"
            ),
            {"m": MONTH},
        ).one()


def loaded_lines(engine: Engine) -> dict[tuple[str, str, str], Line]:
    """The current batch's billing lines, amounts back in major units."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.customer_id, l.sequence_number, l.currency, l.total_minor, l.call_count, "
                "l.billed_seconds "
                "FROM billing_line l JOIN billing_batch b USING (batch_id) "
                "WHERE b.billing_month = :m AND b.status = 'current'"
            ),
            {"m": MONTH},
        ).all()
    return {
        (r.customer_id, r.sequence_number, r.currency): Line(
            Decimal(r.total_minor).scaleb(-minor_unit(r.currency)),
            int(r.call_count),
            int(r.billed_seconds),
        )
        for r in rows
    }


def loaded_calls(engine: Engine) -> dict[tuple[str, str], tuple]:
    """{(source, transaction id): (customer, sequence, currency, cost, seconds)} of the current
    batch."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.* FROM billed_call c JOIN billing_batch b USING (batch_id) "
                "WHERE b.billing_month = :m AND b.status = 'current'"
            ),
            {"m": MONTH},
        ).all()
    return {
        (r.source, r.transaction_id): (
            r.customer_id,
            r.sequence_number,
            r.currency,
            Decimal(r.cost_minor).scaleb(-minor_unit(r.currency)),
            int(r.billed_seconds),
        )
        for r in rows
    }


def loaded_quarantine(engine: Engine, run_id: str) -> dict[tuple[str, int], str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT source_file, source_row, reason_code FROM quarantined_row WHERE run_id = :r"
            ),
            {"r": run_id},
        ).all()
    return {(Path(r.source_file).name, int(r.source_row)): r.reason_code for r in rows}


def loaded_exceptions(engine: Engine, kind: str) -> set[str]:
    """Transaction ids of the current batch's non-billed rows of a kind (suspense, unbillable)."""
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT e.transaction_id FROM billing_exception e "
                    "JOIN billing_batch b USING (batch_id) "
                    "WHERE b.billing_month = :m AND b.status = 'current' AND e.kind = :k"
                ),
                {"m": MONTH, "k": kind},
            ).scalars()
        )


def first_seen(engine: Engine) -> dict[tuple[str, str], object]:
    """When the ledger first saw each CDR file of the month (duplicates are ordered by it)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT source, name, min(first_seen) AS seen FROM cdr_file "
                "WHERE billing_month = :m GROUP BY source, name"
            ),
            {"m": MONTH},
        ).all()
    return {(r.source, r.name): r.seen for r in rows}


def month_report(golden: Golden, run_id: str) -> dict:
    from cdr_billing.config import load_config
    from cdr_billing.workdir import run_work_dir

    return json.loads(
        (run_work_dir(load_config(golden.config), MONTH, run_id) / "report.json").read_text()
    )


# --- the oracle's view ---------------------------------------------------------------------


def expected(golden: Golden, snapshots: list[Path]) -> MonthBill:
    """The oracle's month: every CDR file as delivered, with the ledger's first-seen times."""
    seen = first_seen(golden.engine)
    files = [
        Delivered("carrier", golden.delivered / "cdr/carrier" / name, seen[("carrier", name)])
        for name in data.CARRIER_FILES
    ]
    files.append(
        Delivered(
            "conferencing",
            golden.delivered / "cdr/conferencing" / data.CONFERENCING_FILE,
            seen[("conferencing", data.CONFERENCING_FILE)],
        )
    )
    files.append(
        Delivered(
            "credits",
            golden.delivered / "cdr/credits" / data.CREDITS_FILE,
            seen[("credits", data.CREDITS_FILE)],
            allow_credits=True,
        )
    )
    tariffs = [golden.extras / data.OLDER_TARIFF, golden.delivered / "reference" / data.TARIFF_FILE]
    return bill_month(2026, 3, files, tariffs, snapshots, MARKUPS)


def first_snapshots(golden: Golden) -> list[Path]:
    return [golden.delivered / "reference" / name for name in data.SNAPSHOTS]


def _diff(got: dict, want: dict) -> list[str]:
    return [
        f"{key}: engine {got.get(key)} oracle {want.get(key)}"
        for key in sorted(set(got) | set(want), key=str)
        if got.get(key) != want.get(key)
    ]


def disagreements(golden: Golden, bill: MonthBill, run_id: str) -> dict[str, list[str]]:
    """Where the loaded batch differs from the oracle: lines, then per call, row and exception."""
    want_calls = {
        k: (c.customer_id, c.sequence_number, c.currency, c.cost, c.seconds)
        for k, c in bill.calls.items()
    }
    found = {
        "lines": _diff(loaded_lines(golden.engine), bill.lines),
        "billed calls": _diff(loaded_calls(golden.engine), want_calls),
        "quarantined rows": _diff(loaded_quarantine(golden.engine, run_id), bill.quarantined),
        "suspense": _diff(
            dict.fromkeys(loaded_exceptions(golden.engine, "suspense"), True),
            dict.fromkeys((tx for _, tx in bill.suspense), True),
        ),
        "unbillable": _diff(
            dict.fromkeys(loaded_exceptions(golden.engine, "unbillable"), True),
            dict.fromkeys((tx for _, tx in bill.unbillable), True),
        ),
    }
    return {facet: rows for facet, rows in found.items() if rows}


def _report(found: dict[str, list[str]]) -> str:
    return "\n".join(
        f"{facet} ({len(rows)}):\n  " + "\n  ".join(rows) for facet, rows in found.items()
    )


# --- the scenario --------------------------------------------------------------------------


def test_the_oracle_applies_the_documented_examples():
    """Rule 2's examples (and a credit's rounding), so the oracle is checked before it judges the
    engine."""
    assert billed_priced_cost(Decimal("-1500"), "CLP", Decimal("12.5")) == Decimal("-1688")
    assert billed_priced_cost(Decimal("1500"), "CLP", Decimal("12.5")) == Decimal("1688")
    assert billed_priced_cost(Decimal("0.0125"), "JOD", Decimal("12.5")) == Decimal("0.014")
    assert billed_priced_cost(Decimal("900000000"), "EUR", Decimal("12.5")) == Decimal(
        "1012500000.00"
    )
    assert [
        minor_unit(c) for c in ("clp", "EUR", "SEK", "JOD", "KWD", "BHD", "EURO", "ABC", "XAU", "")
    ] == [
        0,
        2,
        2,
        3,
        3,
        3,
        None,
        None,
        None,
        None,
    ]


def test_a_the_first_run_bills_what_the_oracle_expects(golden, dag):
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": MONTH})
    assert run.state == "success"
    golden.first_lines = loaded_lines(golden.engine)
    bill = expected(golden, first_snapshots(golden))
    assert len(bill.lines) >= 15 and len(bill.calls) > 250  # the month is not trivially empty
    found = disagreements(golden, bill, run.run_id)
    assert not found, "engine and oracle disagree after the first run:\n" + _report(found)


def test_a_the_statements_equal_the_oracle_s_lines_to_the_cent(golden, dag):
    """Each statement call's cost summed row by row as Decimal, per line: the oracle's lines of
    the customers that opt in; each statement's total its calls'; each PDF archived as hashed."""
    bill = expected(golden, first_snapshots(golden))
    batch_id, _ = current_batch(golden.engine)
    with golden.engine.connect() as conn:
        calls = conn.execute(
            text(
                "SELECT s.statement_id, s.customer_id, s.currency, c.sequence_number, "
                "c.cost_minor, c.called_number_shown FROM statement s "
                "JOIN statement_call c USING (statement_id) WHERE s.batch_id = :b"
            ),
            {"b": batch_id},
        ).all()
        heads = conn.execute(
            text(
                "SELECT s.statement_id, s.currency, s.total_minor, d.pdf_path, d.pdf_sha256 "
                "FROM statement s "
                "JOIN statement_document d USING (statement_id) WHERE s.batch_id = :b"
            ),
            {"b": batch_id},
        ).all()
    sums: dict[tuple[str, str, str], Decimal] = {}
    per_statement: dict[str, Decimal] = {}
    for call in calls:
        amount = Decimal(call.cost_minor).scaleb(-minor_unit(call.currency))
        key = (call.customer_id, call.sequence_number, call.currency)
        sums[key] = sums.get(key, Decimal(0)) + amount
        per_statement[call.statement_id] = per_statement.get(call.statement_id, 0) + amount
    expected_lines = {
        key: line.total for key, line in bill.lines.items() if key[0] in STATEMENT_CUSTOMERS
    }
    assert sums == expected_lines and len(sums) >= 4
    assert len(heads) == len(per_statement) > 0
    for head in heads:
        total = Decimal(head.total_minor).scaleb(-minor_unit(head.currency))
        assert total == per_statement[head.statement_id]
        pdf = Path(head.pdf_path).read_bytes()
        assert pdf.startswith(b"%PDF") and hashlib.sha256(pdf).hexdigest() == head.pdf_sha256
    assert all(
        call.called_number_shown.endswith("xxx")
        for call in calls
        if sum(ch.isdigit() for ch in call.called_number_shown) >= 6
    )


def test_b_a_file_no_longer_listed_is_billed_from_the_archive_the_same(golden, dag):
    (
        golden.root / "cdr/carrier" / data.CARRIER_FILES[1]
    ).unlink()  # holds a session's part 2 and re-deliveries
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": MONTH})
    assert run.state == "success"
    assert golden.first_lines is not None, "the first run must run first"
    assert loaded_lines(golden.engine) == golden.first_lines
    assert month_report(golden, run.run_id)["changes"] == []
    found = disagreements(golden, expected(golden, first_snapshots(golden)), run.run_id)
    assert not found, "engine and oracle disagree after the re-run without file b:\n" + _report(
        found
    )


def test_c_a_correction_snapshot_bills_the_fixed_accounts_on_a_refresh(golden, dag):
    shutil.copy(golden.extras / data.CORRECTION, golden.root / "reference" / data.CORRECTION)
    before = expected(golden, first_snapshots(golden))
    suspense_before = loaded_exceptions(golden.engine, "suspense")
    run = run_dag(
        dag, logical_date=None, run_conf={"billing_month": MONTH, "refresh_entitlements": True}
    )
    assert run.state == "success"
    bill = expected(golden, [*first_snapshots(golden), golden.extras / data.CORRECTION])
    fixed = before.suspense - bill.suspense
    assert {tx for _, tx in fixed} == {
        "SU-unknown-06",
        "SU-unknown-19",
        "SU-noseq-07",
        "SU-nocust-08",
        "CL-fixed-12",
    }
    assert fixed <= set(bill.calls)  # the oracle bills them now, and so must the engine:
    assert {key: loaded_calls(golden.engine).get(key) for key in fixed} == {
        key: (c.customer_id, c.sequence_number, c.currency, c.cost, c.seconds)
        for key, c in bill.calls.items()
        if key in fixed
    }
    suspense_after = loaded_exceptions(golden.engine, "suspense")
    assert suspense_after == suspense_before - {tx for _, tx in fixed}
    found = disagreements(golden, bill, run.run_id)
    assert not found, (
        "engine and oracle disagree after the refresh with the correction:\n" + _report(found)
    )
