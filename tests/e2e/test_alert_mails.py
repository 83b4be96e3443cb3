"""Every alert kind, as a real SMTP server receives it: its own recipients, a concise
content an operator can act on, and never a full phone number or a secret."""

from __future__ import annotations

import csv
import html
import json
import logging
import re
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cdr_billing import alerts, read, validate
from cdr_billing.config import ALERT_KINDS, load_config
from cdr_billing.months import BillingMonth
from cdr_devkit.airflow_env import PROJECT_ROOT, load_dag, run_dag
from cdr_devkit.sample_data import generate_month
from cdr_devkit.services import free_port

DIGIT_RUNS = re.compile(r"\d{6,}")


@pytest.fixture(scope="module")
def routed_config(tmp_path_factory) -> Path:
    """The shipped config with one recipient per alert kind."""
    folder = tmp_path_factory.mktemp("config")
    raw = yaml.safe_load((PROJECT_ROOT / "include/config/pipeline.yaml").read_text())
    raw["alerts"]["recipients"] = {
        kind: [f"{kind.replace('_', '-')}@example.com"] for kind in ALERT_KINDS
    }
    raw["profiles_file"] = str(PROJECT_ROOT / "include/config/profiles.yaml")
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    return folder / "pipeline.yaml"


@pytest.fixture(scope="module")
def alerts_database(postgres) -> str:
    return postgres.create_database("alerts")


@pytest.fixture
def dag(routed_config, alerts_database, airflow_home, pipeline_connections, postgres, monkeypatch):
    """The DAG parsed with the routed config, billing into a database of its own."""
    monkeypatch.setenv("CDR_BILLING_CONFIG", str(routed_config))
    monkeypatch.setenv("AIRFLOW_CONN_BILLING_DB", json.dumps(postgres.connection(alerts_database)))
    return load_dag()


def _new_mails(services, before: set[Path]) -> list[Message]:
    return [
        message_from_bytes(p.read_bytes())
        for p in sorted(set(services.maildir.glob("*.eml")) - before)
    ]


def _body(mail: Message) -> str:
    part = mail.get_payload(0) if mail.is_multipart() else mail
    return part.get_payload(decode=True).decode()


def _by_recipient(mails: list[Message]) -> dict[str, Message]:
    return {mail["To"]: mail for mail in mails}


def _serve_only(services, monkeypatch, root: Path, name: str) -> None:
    server = services.local.start_sftp(name, root)
    for conn_id in ("cdr_sftp_primary", "cdr_sftp_secondary"):
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps(server.connection(services.local.client_key)),
        )


def test_a_month_with_failover_unbillable_and_suspense_mails_each_kind_to_its_recipients(
    dag, services, pipeline_connections, monkeypatch, caplog, sftp_root
):
    caplog.set_level(logging.INFO)
    dead = {**pipeline_connections["cdr_sftp_primary"], "port": free_port()}
    monkeypatch.setenv("AIRFLOW_CONN_CDR_SFTP_PRIMARY", json.dumps(dead))
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert run.state == "success"
    mails = _by_recipient(_new_mails(services, before))
    assert set(mails) == {
        "failover@example.com",
        "unbillable@example.com",
        "suspense@example.com",
        "month-report@example.com",
    }

    failover = mails["failover@example.com"]
    assert failover["Subject"] == (
        "[CDR billing] SFTP failover for 2026-10: "
        "cdr_sftp_primary failed, cdr_sftp_secondary took over"
    )
    assert "connection refused" in _body(failover) and "took over and delivered" in _body(failover)

    unbillable = _body(mails["unbillable@example.com"])
    assert mails["unbillable@example.com"]["Subject"].endswith("number ranges (2026-10)")
    # the range, and what to do
    assert "88216" in unbillable and "python -m cdr_billing.tariff load FILE" in unbillable

    suspense = _body(mails["suspense@example.com"])
    assert "UNKNOWN_ACCOUNT" in suspense and "refresh_entitlements" in suspense

    report = mails["month-report@example.com"]
    assert report["Subject"].startswith("[CDR billing] Month report 2026-10: 16 billing lines")
    for section in (
        "Totals per customer",
        "Reconciliation",
        "Revenue share per service provider",
        "Unbillable number ranges",
        "Accounts in suspense",
    ):
        assert section in _body(report)
    # the task logs of the run
    assert "month report" in caplog.text and "billing lines" in caplog.text
    _assert_no_phone_number_or_key(
        {"task logs": caplog.text} | {m["To"]: _body(m) for m in mails.values()}, sftp_root
    )


def test_a_file_failing_validation_mails_its_rows_masked_and_the_task_failure(
    dag, services, monkeypatch, tmp_path
):
    generate_month(tmp_path, BillingMonth(2026, 8))
    carrier = tmp_path / "cdr/carrier/carrier_cdr_202608.csv"
    with carrier.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows[:58]:  # 58 of about 3000 rows with a bad number: above the 1 % limit
        row["destination_party"] = "12ab"
    with carrier.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _serve_only(services, monkeypatch, tmp_path, "sftp_bad_rows")
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-08"})
    assert run.state == "failed"
    mails = _by_recipient(_new_mails(services, before))
    assert set(mails) == {"validation@example.com", "task-failure@example.com"}

    validation = mails["validation@example.com"]
    assert (
        validation["Subject"] == "[CDR billing] carrier_cdr_202608.csv failed validation (2026-08)"
    )
    body = _body(validation)
    assert "above the 1.0% limit" in body and "Sample: line 2 BAD_NUMBER" in body and "*" in body
    assert "quarantined_row" in body

    failure = mails["task-failure@example.com"]
    assert failure["Subject"].startswith(
        "[CDR billing] 2026-08: validate_cdr_file failed - carrier_cdr_202608.csv: "
    )
    body = _body(failure)
    assert "Billing month <b>2026-08</b>" in body
    assert re.search(r'<a href="http[^"]+/tasks/validate_cdr_file[^"]*">Task log</a>', body)
    assert "What to do next: Read the validation mail" in body


def test_a_file_failing_its_expectations_mails_which_ones(services, pipeline_connections, tmp_path):
    """Great Expectations is the proof behind the row checks: when a file's accepted rows fail
    it (here a repeated transaction id that got past them), the mail names the file, the
    failed expectation and where its details are kept."""
    month, config = BillingMonth(2026, 8), load_config()
    generate_month(tmp_path, month)
    carrier, profile = (
        tmp_path / "cdr/carrier/carrier_cdr_202608.csv",
        config.profile_for("carrier"),
    )
    checked = validate.check_rows(
        read.read_cdr_file(carrier, profile).assign(source="carrier"),
        profile,
        month,
        config.billing,
    )
    # not through split_duplicates
    slipped = pd.concat([checked.accepted, checked.accepted.tail(1)], ignore_index=True)
    with pytest.raises(validate.FileValidationError) as failed:
        validate.ExpectationRunner(tmp_path / "gx").validate_file(
            slipped, carrier.name, profile, month, config.billing
        )
    error = failed.value
    before = set(services.maildir.glob("*.eml"))
    alert = alerts.validation_alert(
        str(month), error.file_name, error.problem, error.expectations, error.samples
    )
    alerts.send(alert, ["validation@example.com"], config.smtp_connection)

    (mail,) = _new_mails(services, before)
    assert mail["Subject"] == "[CDR billing] carrier_cdr_202608.csv failed validation (2026-08)"
    body = _body(mail)
    assert "Failed expectations: expect_column_values_to_be_unique." in body
    assert "details in gx_results/carrier_cdr_202608.csv.json" in body
    result = json.loads((tmp_path / "gx/carrier_cdr_202608.csv.json").read_text())
    assert [r["expectation_config"]["type"] for r in result["results"] if not r["success"]] == [
        "expect_column_values_to_be_unique"
    ]


def test_an_unreadable_file_fails_validation_with_mails_naming_it(
    dag, services, monkeypatch, tmp_path
):
    generate_month(tmp_path, BillingMonth(2026, 9))
    (tmp_path / "cdr/conferencing/conferencing_cdr_2026-09.xlsx").write_bytes(
        b"PK\x03\x04 truncated upload"
    )
    _serve_only(services, monkeypatch, tmp_path, "sftp_corrupt")
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-09"})
    assert run.state == "failed"
    mails = _by_recipient(_new_mails(services, before))
    assert "conferencing_cdr_2026-09.xlsx: not a readable xlsx file" in _body(
        mails["validation@example.com"]
    )
    assert (
        "validate_cdr_file failed - conferencing_cdr_2026-09.xlsx: not a readable xlsx file"
        in mails["task-failure@example.com"]["Subject"]
    )


def test_files_not_arrived_by_the_deadline_mail_the_month_and_the_sources(dag, services):
    before = set(services.maildir.glob("*.eml"))
    # nothing delivered for July
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-07"})
    assert run.state == "failed"
    (mail,) = _new_mails(services, before)  # the alert says it all: no failure mail beside it
    assert mail["To"] == "files-not-arrived@example.com"
    assert (
        mail["Subject"]
        == "[CDR billing] Files for 2026-07 have not arrived from conferencing, carrier, pbx"
    )
    ti = run.get_task_instance("wait_for_cdr_files")
    assert ti.state == "failed" and "the deadline (2026-08-11 00:00" in _body(mail)


def test_an_unreachable_billing_database_is_not_blamed_on_the_files(
    dag, services, postgres, monkeypatch
):
    """The run's first task cannot upgrade the billing database: the failure mail says a
    database did not answer and does not send the operator to the SFTP servers or the
    provider."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_BILLING_DB", json.dumps({**postgres.connection(), "port": free_port()})
    )
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert run.state == "failed"
    (mail,) = _new_mails(services, before)
    body = _body(mail)
    assert "upgrade_billing_db failed" in mail["Subject"]
    assert f"What to do next: {html.escape(alerts.UNREACHABLE_STEP)}" in body
    assert "redeliver" not in body and "host keys" not in body


def test_all_sftp_servers_down_fail_the_run_with_a_mail_naming_them(
    dag, services, pipeline_connections, monkeypatch
):
    for conn_id in ("cdr_sftp_primary", "cdr_sftp_secondary"):
        dead = {**pipeline_connections[conn_id], "port": free_port()}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(dead))
    before = set(services.maildir.glob("*.eml"))
    run = run_dag(dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert run.state == "failed"
    (mail,) = _new_mails(services, before)
    assert mail["To"] == "task-failure@example.com"
    body = _body(mail)
    assert (
        "all SFTP servers failed: "
        "cdr_sftp_primary: connection refused; cdr_sftp_secondary: connection refused" in body
    )
    assert (
        "wait_for_cdr_files" in mail["Subject"]
        and "What to do next: Check that the SFTP servers answer" in body
    )


def _phone_numbers(sftp_root: Path) -> set[str]:
    """The digits of every phone number in the sample month's carrier and PBX files."""
    numbers = set()
    for path, encoding, delimiter, columns in (
        (
            sftp_root / "cdr/carrier/carrier_cdr_202610.csv",
            "utf-8",
            ",",
            ("originating_party", "destination_party"),
        ),
        (sftp_root / "cdr/pbx/pbx_cdr_2026-10.csv", "latin-1", ";", ("Uppringt nummer",)),
    ):
        with path.open(newline="", encoding=encoding) as handle:
            for row in csv.DictReader(handle, delimiter=delimiter):
                numbers |= {re.sub(r"\D", "", row[c]) for c in columns if len(row[c]) >= 8}
    return numbers


def _assert_no_phone_number_or_key(texts: dict[str, str], sftp_root: Path) -> None:
    numbers = _phone_numbers(sftp_root)
    assert len(numbers) > 1000
    for name, text in texts.items():
        leaked = set(DIGIT_RUNS.findall(text)) & numbers
        assert not leaked, f"{name}: {sorted(leaked)[:3]}"
        assert "PRIVATE KEY" not in text, name


def test_no_mail_of_the_session_holds_a_full_phone_number_or_a_key(services, sftp_root):
    """Every mail any test of the session has received so far."""
    mails = {
        path.name: _body(message_from_bytes(path.read_bytes()))
        for path in services.maildir.glob("*.eml")
    }
    assert mails
    _assert_no_phone_number_or_key(mails, sftp_root)
