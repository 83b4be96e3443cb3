"""The monthly DAG run end to end: real SFTP, PostgreSQL, SMTP and Airflow (dag.test)."""

from __future__ import annotations

import json
from decimal import Decimal
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from cdr_billing.config import load_config
from cdr_billing.stages import run_work_dir
from cdr_devkit.airflow_env import load_dag, run_dag
from cdr_devkit.services import free_port
from oracle import expected_lines, first_day_after


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
                "JOIN billing_batch b USING (batch_id) WHERE b.billing_month = :m AND b.status = 'current'"
            ),
            {"m": month},
        ).all()
    return {(customer, sequence): Decimal(total) / 100 for customer, sequence, total in rows}


def _batches(engine, month: str) -> list[str]:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT status FROM billing_batch WHERE billing_month = :m ORDER BY batch_id"), {"m": month})
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
        files = conn.execute(text("SELECT name, rows_read, rows_billable, rows_quarantined, rows_duplicate FROM cdr_file "
                                  "WHERE rows_read IS NOT NULL ORDER BY name")).all()  # fmt: skip
    assert [f.name for f in files] == ["carrier_cdr_202610.csv", "conferencing_cdr_2026-10.xlsx", "pbx_cdr_2026-10.csv"]
    assert all(f.rows_read == f.rows_billable + f.rows_quarantined + f.rows_duplicate for f in files)
    assert [(f.rows_quarantined, f.rows_duplicate) for f in files] == [(3, 3), (0, 0), (1, 0)]
    month_report = json.loads((run_work_dir(load_config(), "2026-10", run.run_id) / "report.json").read_text())
    assert Path(month_report["data_docs"]).is_file() and len(month_report["files"]) == 3


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
    subjects = [message_from_bytes(p.read_bytes())["Subject"] for p in set(services.maildir.glob("*.eml")) - before]
    assert sorted(subjects)[:2] == [
        "[CDR billing] 147 calls of 5 accounts in suspense (2026-10)",
        "[CDR billing] 29 unbillable calls in 1 number ranges (2026-10)",
    ]
    assert sorted(subjects)[2].startswith("[CDR billing] Month report 2026-10: 16 billing lines")
    satellite = {"prefix": "88216", "destination": "Satellite", "price_per_minute": "1.5000", "connection_fee": "0",
                 "first_increment": "60", "next_increment": "60", "minimum_charge": "0", "currency": "EUR"}  # fmt: skip
    addition = tmp_path / "tariff_satellite.csv"
    addition.write_text(",".join(satellite) + "\n" + ",".join(satellite.values()) + "\n")
    load_file(billing_engine, addition, "Europe/Stockholm")
    rerun = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert rerun.state == "success"
    assert _current_lines(billing_engine, "2026-10") == expected_lines(sftp_root, 2026, 10, extra_rates=(satellite,))
    assert _current_lines(billing_engine, "2026-10") != expected_lines(sftp_root, 2026, 10)
    report = json.loads((run_work_dir(load_config(), "2026-10", rerun.run_id) / "report.json").read_text())
    assert report["counts"]["unbillable"] == 0 and report["unbillable_ranges"] == []
    assert report["changes"] and all(not change["change"].startswith("-") for change in report["changes"])
    billing_csv = Path(report["billing_file"]["csv"]).read_text().splitlines()
    assert billing_csv[0] == "CustomerId,SequenceNumber,Month,Amount,Currency" and len(billing_csv) == 17


def test_files_not_arrived_by_the_deadline_fail_the_run_with_an_alert_mail(dag, services):
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-07"})  # nothing delivered for July
    assert run.state == "failed"
    mails = [message_from_bytes(p.read_bytes()) for p in sorted(set(services.maildir.glob("*.eml")) - before)]
    assert [m["Subject"] for m in mails] == [f"[CDR billing] wait_for_cdr_files failed (cdr_billing_monthly, {run.run_id})"]
    body = mails[0].get_payload(0).get_payload(decode=True).decode() if mails[0].is_multipart() else mails[0].get_payload()
    assert "files for month 2026-07 have not arrived" in body
    assert mails[0]["To"] == "billing-ops@example.com"


def test_all_sftp_servers_down_fail_the_run_with_an_alert_naming_them(dag, services, pipeline_connections, monkeypatch):
    for conn_id in ("cdr_sftp_primary", "cdr_sftp_secondary"):
        dead = {**pipeline_connections[conn_id], "port": free_port()}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(dead))
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert run.state == "failed"
    (mail,) = [message_from_bytes(p.read_bytes()) for p in sorted(set(services.maildir.glob("*.eml")) - before)]
    body = mail.get_payload(0).get_payload(decode=True).decode() if mail.is_multipart() else mail.get_payload()
    assert "all SFTP servers failed: cdr_sftp_primary: connection refused; cdr_sftp_secondary: connection refused" in body


def test_an_unreadable_file_fails_validation_with_an_alert_naming_it(dag, services, pipeline_connections, monkeypatch, tmp_path):
    from cdr_billing.months import BillingMonth
    from cdr_devkit.sample_data import generate_month

    generate_month(tmp_path, BillingMonth(2026, 9))
    (tmp_path / "cdr/conferencing/conferencing_cdr_2026-09.xlsx").write_bytes(b"PK\x03\x04 truncated upload")
    server = services.local.start_sftp("sftp_corrupt", tmp_path)
    for conn_id in ("cdr_sftp_primary", "cdr_sftp_secondary"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(server.connection(services.local.client_key)))
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-09"})
    assert run.state == "failed"
    (mail,) = [message_from_bytes(p.read_bytes()) for p in sorted(set(services.maildir.glob("*.eml")) - before)]
    assert mail["Subject"].startswith("[CDR billing] validate_cdrs failed")
    body = mail.get_payload(0).get_payload(decode=True).decode() if mail.is_multipart() else mail.get_payload()
    assert "conferencing_cdr_2026-09.xlsx: not a readable xlsx file" in body


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
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(server.connection(services.local.client_key)))

    def suspense_reasons(run) -> set[str]:
        report = json.loads((run_work_dir(load_config(), "2026-10", run.run_id) / "report.json").read_text())
        return {a["reason_code"] for a in report["suspense_accounts"]}

    pinned = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert suspense_reasons(pinned) == {"NOT_ENTITLED", "UNKNOWN_ACCOUNT"}  # the month keeps its first snapshot
    fresh = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10", "refresh_entitlements": True})
    assert fresh.state == "success"
    assert suspense_reasons(fresh) == {"UNKNOWN_ACCOUNT"}  # the not-entitled accounts are billed now
