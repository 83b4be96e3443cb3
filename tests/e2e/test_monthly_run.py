"""The monthly DAG run end to end: real SFTP, PostgreSQL, SMTP and Airflow (dag.test)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from decimal import Decimal
from email import message_from_bytes
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from cdr_billing.config import load_config
from cdr_billing.lineage import line_calls
from cdr_billing.workdir import run_work_dir
from cdr_devkit.airflow_env import load_dag, run_dag
from oracle import expected_lines, expected_revenue_share, first_day_after


@pytest.fixture(scope="module")
def billing_engine(postgres):
    return create_engine(postgres.url)


@pytest.fixture(scope="module")
def dag(airflow_home, pipeline_connections):
    return load_dag()


def _current_lines(engine, month: str) -> dict[tuple[str, str], Decimal]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.customer_id, l.sequence_number, l.total_minor FROM billing_line l "
                "JOIN billing_batch b USING (batch_id) "
                "WHERE b.billing_month = :m AND b.status = 'current'"
            ),
            {"m": month},
        ).all()
    return {(customer, sequence): Decimal(total) / 100 for customer, sequence, total in rows}


def _batches(engine, month: str) -> list[str]:
    with engine.connect() as conn:
        return (
            conn.execute(
                text("SELECT status FROM billing_batch WHERE billing_month = :m ORDER BY batch_id"),
                {"m": month},
            )
            .scalars()
            .all()
        )


def test_the_month_bills_what_an_independent_computation_expects(dag, billing_engine, sftp_root):
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert run.state == "success"
    expected = expected_lines(sftp_root, 2026, 10)
    assert len(expected) == 16
    assert _current_lines(billing_engine, "2026-10") == expected
    with billing_engine.connect() as conn:
        files = conn.execute(
            text(
                "SELECT name, rows_read, rows_billable, rows_quarantined, rows_duplicate "
                "FROM cdr_file "
                "WHERE rows_read IS NOT NULL ORDER BY name"
            )
        ).all()
    assert [f.name for f in files] == [
        "carrier_cdr_202610.csv",
        "conferencing_cdr_2026-10.xlsx",
        "pbx_cdr_2026-10.csv",
    ]
    assert all(
        f.rows_read == f.rows_billable + f.rows_quarantined + f.rows_duplicate for f in files
    )
    assert [(f.rows_quarantined, f.rows_duplicate) for f in files] == [(3, 3), (0, 0), (1, 0)]
    month_report = json.loads(
        (run_work_dir(load_config(), "2026-10", run.run_id) / "report.json").read_text()
    )
    assert Path(month_report["data_docs"]).is_file() and len(month_report["files"]) == 3


def _source_lines(path: Path, encoding: str, delimiter: str) -> dict[int, dict]:
    """{line number as a person opens the file: row} of a CSV file."""
    with path.open(newline="", encoding=encoding) as handle:
        return {
            number: row
            for number, row in enumerate(csv.DictReader(handle, delimiter=delimiter), start=2)
        }


def test_every_line_traces_to_its_calls_and_their_input_rows(
    billing_engine, postgres, sftp_root, tmp_path
):
    lines = pd.read_sql(
        "SELECT l.* FROM billing_line l JOIN billing_batch b USING (batch_id) "
        "WHERE b.billing_month = '2026-10' "
        "AND b.status = 'current'",
        billing_engine,
    )
    carrier = _source_lines(sftp_root / "cdr/carrier/carrier_cdr_202610.csv", "utf-8", ",")
    pbx = _source_lines(sftp_root / "cdr/pbx/pbx_cdr_2026-10.csv", "latin-1", ";")
    traced_rows = 0
    for line in lines.itertuples():
        calls = line_calls(billing_engine, "2026-10", line.customer_id, line.sequence_number)
        assert (len(calls), calls["cost_minor"].sum()) == (line.call_count, line.total_minor)
        assert (
            calls["sha256"].notna().all()
            and calls["archive_path"].map(lambda p: Path(p).is_file()).all()
        )
        for call in calls.itertuples():
            if call.source == "carrier":
                assert carrier[call.source_row]["transaction_id"] == call.transaction_id
                for part in filter(None, call.combined_rows.split(",")):
                    assert (
                        carrier[int(part)]["session_id"] == carrier[call.source_row]["session_id"]
                    )
            elif call.source == "pbx":
                assert pbx[call.source_row]["Samtals-ID"] == call.transaction_id
            traced_rows += 1
    assert traced_rows == lines["call_count"].sum()
    with billing_engine.connect() as conn:
        user_total = conn.execute(
            text(
                "SELECT sum(u.total_minor) FROM billing_user_line u "
                "JOIN billing_batch b USING (batch_id) "
                "WHERE b.billing_month = '2026-10' AND b.status = 'current'"
            )
        ).scalar()
    assert int(user_total) == int(lines["total_minor"].sum())

    first = lines.iloc[0]
    out = tmp_path / "calls.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdr_billing.lineage",
            "--url",
            postgres.url,
            "--month",
            "2026-10",
            "--customer",
            first.customer_id,
            "--sequence",
            first.sequence_number,
            "--csv",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{first.call_count} calls" in done.stdout and "rows " in done.stdout
    assert len(pd.read_csv(out)) == first.call_count


def test_the_revenue_share_matches_an_independent_computation(billing_engine, sftp_root):
    shares = pd.read_sql(
        "SELECT r.* FROM revenue_share r JOIN billing_batch b USING (batch_id) "
        "WHERE b.billing_month = '2026-10' "
        "AND b.status = 'current'",
        billing_engine,
    )
    got = {
        (r.service_provider, Decimal(r.share_basis_points) / 100): (
            Decimal(r.billed_minor) / 100,
            Decimal(r.share_minor) / 100,
        )
        for r in shares.itertuples()
    }
    assert got == expected_revenue_share(sftp_root, 2026, 10)
    assert len(got) == 4  # two providers, two percentages


def test_a_scheduled_style_rerun_bills_the_interval_month_once(dag, billing_engine, sftp_root):
    run = run_dag(dag, logical_date=first_day_after(2026, 10))
    assert run.state == "success"
    assert _batches(billing_engine, "2026-10") == ["superseded", "current"]
    assert _current_lines(billing_engine, "2026-10") == expected_lines(sftp_root, 2026, 10)


def test_an_unknown_range_is_alerted_then_billed_by_a_rerun_once_added_to_the_tariff(
    dag, billing_engine, sftp_root, services, tmp_path
):
    from cdr_billing.tariff import load_file

    before = set(services.maildir.glob("*.eml"))
    assert run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"}).state == "success"
    subjects = [
        message_from_bytes(p.read_bytes())["Subject"]
        for p in set(services.maildir.glob("*.eml")) - before
    ]
    assert sorted(subjects)[:2] == [
        "[CDR billing] 147 calls of 5 accounts in suspense (2026-10)",
        "[CDR billing] 29 unbillable calls in 1 number ranges (2026-10)",
    ]
    assert sorted(subjects)[2].startswith("[CDR billing] Month report 2026-10: 16 billing lines")
    satellite = {
        "prefix": "88216",
        "destination": "Satellite",
        "price_per_minute": "1.5000",
        "connection_fee": "0",
        "first_increment": "60",
        "next_increment": "60",
        "minimum_charge": "0",
        "currency": "EUR",
    }
    addition = tmp_path / "tariff_satellite.csv"
    addition.write_text(",".join(satellite) + "\n" + ",".join(satellite.values()) + "\n")
    load_file(billing_engine, addition, load_config().billing)
    rerun = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert rerun.state == "success"
    assert _current_lines(billing_engine, "2026-10") == expected_lines(
        sftp_root, 2026, 10, extra_rates=(satellite,)
    )
    assert _current_lines(billing_engine, "2026-10") != expected_lines(sftp_root, 2026, 10)
    report = json.loads(
        (run_work_dir(load_config(), "2026-10", rerun.run_id) / "report.json").read_text()
    )
    assert report["counts"]["unbillable"] == 0 and report["unbillable_ranges"] == []
    assert report["changes"] and all(
        not change["change"].startswith("-") for change in report["changes"]
    )
    billing_csv = Path(report["billing_file"]["csv"]).read_text().splitlines()
    assert (
        billing_csv[0] == "CustomerId,SequenceNumber,Month,Amount,Currency"
        and len(billing_csv) == 17
    )


def test_fixed_accounts_are_billed_by_a_rerun_with_a_fresh_snapshot(
    dag, services, billing_engine, sftp_root, monkeypatch, tmp_path
):
    import csv
    import shutil

    root = tmp_path / "sftp"
    shutil.copytree(sftp_root, root)
    with (root / "reference/entitlements_2026-11-02.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["entitled"] = "true"  # the entitlement system fixed every account
    with (root / "reference/entitlements_2026-11-20.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    server = services.local.start_sftp("sftp_fixed", root)
    for conn_id in ("cdr_sftp_primary", "cdr_sftp_secondary"):
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps(server.connection(services.local.client_key)),
        )

    def suspense_reasons(run) -> set[str]:
        report = json.loads(
            (run_work_dir(load_config(), "2026-10", run.run_id) / "report.json").read_text()
        )
        return {a["reason_code"] for a in report["suspense_accounts"]}

    pinned = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert suspense_reasons(pinned) == {
        "NOT_ENTITLED",
        "UNKNOWN_ACCOUNT",
    }  # the month keeps its first snapshot
    fresh = run_dag(
        dag, logical_date=None, run_conf={"billing_month": "2026-10", "refresh_entitlements": True}
    )
    assert fresh.state == "success"
    assert suspense_reasons(fresh) == {
        "UNKNOWN_ACCOUNT"
    }  # the not-entitled accounts are billed now
