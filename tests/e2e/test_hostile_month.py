"""Hostile input through the whole DAG (real SFTP, PostgreSQL, SMTP): a bad value is one
quarantined row and the month is billed; a file that attacks the reader or is cut off fails
its task with a mail naming the file, never a crash; a reference file in another encoding
names the file and what was expected."""

from __future__ import annotations

import csv
import json
import zipfile
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from cdr_billing.months import BillingMonth
from cdr_devkit.airflow_env import load_dag, run_dag
from cdr_devkit.sample_data import generate_month

MONTH = BillingMonth(2026, 9)
CARRIER = "cdr/carrier/carrier_cdr_202609.csv"


@pytest.fixture
def dag(airflow_home, pipeline_connections, postgres, monkeypatch, request):
    database = postgres.create_database(f"hostile_{request.node.name[5:40].lower()}")
    monkeypatch.setenv("AIRFLOW_CONN_BILLING_DB", json.dumps(postgres.connection(database)))
    return load_dag(), create_engine(postgres.url_of(database))


@pytest.fixture
def month(tmp_path, services, monkeypatch) -> Path:
    """A generated month served by a server of its own (both connections point at it)."""
    root = tmp_path / "month"
    generate_month(root, MONTH)
    server = services.local.start_sftp(f"hostile_{tmp_path.name[-20:]}", root)
    for conn_id in ("cdr_sftp_primary", "cdr_sftp_secondary"):
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps(server.connection(services.local.client_key)),
        )
    return root


def _new_mails(services, before: set[Path]) -> dict[str, str]:
    mails = [
        message_from_bytes(p.read_bytes())
        for p in sorted(set(services.maildir.glob("*.eml")) - before)
    ]
    return {
        m["Subject"]: (m.get_payload(0) if m.is_multipart() else m)
        .get_payload(decode=True)
        .decode()
        for m in mails
    }


def _edit_carrier_rows(root: Path, edit) -> None:
    path = root / CARRIER
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def test_a_nul_byte_and_a_short_row_are_quarantined_and_the_month_is_billed(dag, month):
    def edit(rows):
        # a NUL byte in a transaction id (the load failed on it before)
        rows[5][0] = rows[5][0] + "\x00"
        rows[9] = rows[9][:-2]  # a row two fields short (it was padded and billed before)

    _edit_carrier_rows(month, edit)
    run = run_dag(dag[0], logical_date=None, run_conf={"billing_month": str(MONTH)})
    assert run.state == "success"
    with dag[1].connect() as conn:
        reasons = conn.execute(
            text(
                "SELECT source_row, reason_code FROM quarantined_row WHERE source_file = :f "
                "ORDER BY source_row"
            ),
            {"f": Path(CARRIER).name},
        ).all()
    assert (6, "BAD_CHARACTER") in reasons and (10, "BAD_FIELD_COUNT") in reasons


def test_a_cut_off_csv_fails_its_file_with_a_mail_naming_it(dag, month, services):
    path = month / CARRIER
    data = path.read_bytes()
    # the last line cut in the middle
    path.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 40])
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag[0], logical_date=None, run_conf={"billing_month": str(MONTH)})
    assert run.state == "failed"
    mails = _new_mails(services, before)
    assert any("carrier_cdr_202609.csv failed validation" in subject for subject in mails)
    assert any("cut off" in body and "carrier_cdr_202609.csv" in body for body in mails.values())


def test_an_xlsx_that_declares_a_huge_sheet_fails_with_a_mail_not_a_crash(dag, month, services):
    path = next((month / "cdr/conferencing").glob("*.xlsx"))
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    sheet = members["xl/worksheets/sheet1.xml"].decode()
    members["xl/worksheets/sheet1.xml"] = sheet.replace(
        "</sheetData>",
        '<row r="1048576"><c r="XFD1048576" t="inlineStr"><is><t>x</t></is></c></row></sheetData>',
    ).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for name, content in members.items():
            target.writestr(name, content)
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag[0], logical_date=None, run_conf={"billing_month": str(MONTH)})
    assert run.state == "failed"
    mails = _new_mails(services, before)
    assert any(f"{path.name} failed validation" in subject for subject in mails), list(mails)
    assert any("row 1,048,576, column 16,384, above the cap" in body for body in mails.values())


def test_a_tariff_in_latin_1_fails_naming_the_file_and_utf_8(dag, month, services):
    tariff = next((month / "reference").glob("tariff*.csv"))
    tariff.write_bytes(
        tariff.read_bytes().replace(b"Sweden", "Sverige f\u00f6rort".encode("latin-1"), 1)
    )
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag[0], logical_date=None, run_conf={"billing_month": str(MONTH)})
    assert run.state == "failed"
    failure = next(
        body
        for subject, body in _new_mails(services, before).items()
        if "load_references failed" in subject
    )
    assert tariff.name in failure and "UTF-8" in failure
