"""Months tried, validation results and error pages of the Billing app, in process (Airflow's
auth manager and JWT from the session's Airflow home) on a real PostgreSQL billing database:
runs recorded the way the pipeline records them (run_attempts; a failure through the very
failure mail the tasks use, sent to the session's SMTP server), Airflow's view of runs given
as AirflowRun, and a real Great Expectations result."""

from __future__ import annotations

import re
from base64 import b64encode
from datetime import UTC, datetime
from email import message_from_bytes
from hashlib import sha256
from pathlib import Path
from types import SimpleNamespace

import pytest
from billing_seed import JUNE_LINES, batch_of
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from cdr_billing import read, run_attempts, validate
from cdr_billing.load import load_month
from cdr_billing.migrations import upgrade
from cdr_billing.months import BillingMonth
from cdr_billing.privacy import mask_number
from cdr_billing.schema import billing_run
from cdr_billing.taskflow import failure_mail
from cdr_billing.ui import app as billing_app
from cdr_billing.ui import pages, runs_pages, runs_queries, web
from cdr_billing.ui.runs_queries import AirflowRun
from cdr_billing.workdir import run_work_dir
from cdr_devkit.sample_data import generate_month
from cdr_devkit.services import connection_env

PHONE = "+46701234567"
NOW = datetime(2026, 9, 15, 12, tzinfo=UTC)  # last complete month: 2026-08
FAILED_RUN = "manual__2026-03-10T08:00:00+00:00"
NEXT_STEP = "Ask the provider to redeliver the file."


@pytest.fixture(scope="module")
def database(postgres) -> str:
    return postgres.create_database("months_tried")


@pytest.fixture
def billing(database, postgres, airflow_home, pipeline_connections, monkeypatch):
    """The billing database as the app's connection, at the newest schema."""
    for key, value in connection_env({"billing_db": postgres.connection(database)}).items():
        monkeypatch.setenv(key, value)
    engine = create_engine(postgres.url_of(database))
    upgrade(engine)
    web.clear_engines()
    yield engine
    engine.dispose()
    web.clear_engines()


def _context(run_id: str, task_id: str, month: str, error: BaseException) -> dict:
    """What a failure callback of the billing DAG is given (the parts the mail and the record
    read)."""
    ti = SimpleNamespace(
        dag_id=run_attempts.BILLING_DAG_ID,
        run_id=run_id,
        task_id=task_id,
        try_number=3,
        log_url="http://airflow/log",
    )
    return {
        "ti": ti,
        "task_instance": ti,
        "run_id": run_id,
        "params": {"billing_month": month},
        "data_interval_start": None,
        "exception": error,
    }


def _new_mails(maildir: Path, before: set[Path]) -> list:
    return [message_from_bytes(p.read_bytes()) for p in sorted(set(maildir.glob("*.eml")) - before)]


@pytest.fixture
def tried(billing, services):
    """Months in every state: 02 billed, 03 failed (validation, mailed), 04 failed after an
    earlier batch, 05 waiting for files, 06 queued, 07 marked failed in Airflow."""
    engine, config = billing, web.config()
    load_month(engine, "2026-02", "scheduled__2026-02", batch_of(JUNE_LINES), {"read": 1})
    run_attempts.record(
        engine, run_attempts.Attempt("scheduled__2026-02", "2026-02", "success"), NOW
    )
    before = set(services.maildir.glob("*.eml"))
    error = validate.FileValidationError(
        "carrier_cdr_202603.csv", "12 of 40 rows failed validation", samples=(f"line 4 ({PHONE})",)
    )
    failure_mail(config, NEXT_STEP)(_context(FAILED_RUN, "validate_cdr_file", "2026-03", error))
    load_month(engine, "2026-04", "scheduled__2026-04", batch_of(JUNE_LINES), {"read": 1})
    run_attempts.record(
        engine, run_attempts.Attempt("scheduled__2026-04", "2026-04", "success"), NOW
    )
    run_attempts.record(
        engine,
        run_attempts.Attempt(
            "manual__2026-04-again", "2026-04", "failed", None, "load_billing", "db down", "retry"
        ),
        NOW.replace(day=16),
    )
    run_attempts.record(engine, run_attempts.Attempt("scheduled__2026-05", "2026-05", "running"))
    airflow = [
        AirflowRun("scheduled__2026-05", "2026-05", "running", True, None),
        AirflowRun("manual__2026-06", "2026-06", "queued", False, None),
        AirflowRun("manual__2026-07", "2026-07", "failed", False, NOW),
        AirflowRun("scheduled__2026-02", "2026-02", "success", False, None),
    ]
    return SimpleNamespace(airflow=airflow, mails=_new_mails(services.maildir, before))


def test_every_month_from_the_first_to_the_last_complete_one_has_a_status(billing, tried):
    months = runs_queries.months_tried(billing, web.config(), NOW, tried.airflow)
    assert [(m.billing_month, m.status) for m in months] == [
        ("2026-08", "missing"),
        ("2026-07", "failed"),
        ("2026-06", "queued"),
        ("2026-05", "waiting"),
        ("2026-04", "failed"),
        ("2026-03", "failed"),
        ("2026-02", "billed"),
        ("2026-01", "missing"),
    ]
    by_month = {m.billing_month: m for m in months}
    march = by_month["2026-03"].latest
    assert (march.run_id, march.failed_task, march.hint) == (
        FAILED_RUN,
        "validate_cdr_file",
        NEXT_STEP,
    )
    assert PHONE not in march.error and "+4670*****67" in march.error
    assert by_month["2026-04"].current is not None  # the earlier batch stays current
    assert by_month["2026-07"].latest.error == runs_queries.NO_REASON
    assert by_month["2026-05"].deadline.isoformat().startswith("2026-06")
    # without Airflow's view: what the pipeline recorded
    recorded = runs_queries.months_tried(billing, web.config(), NOW)
    assert {m.billing_month: m.status for m in recorded}["2026-05"] == "running"
    assert {m.billing_month: m.status for m in recorded}["2026-06"] == "missing"


def test_the_failure_is_mailed_and_recorded_once_per_run(billing, tried):
    (mail,) = tried.mails
    assert "validate_cdr_file failed" in mail["Subject"]
    with billing.connect() as conn:
        rows = conn.execute(select(billing_run).where(billing_run.c.run_id == FAILED_RUN)).all()
    assert [(r.billing_month, r.state, r.dag_id) for r in rows] == [
        ("2026-03", "failed", "cdr_billing_monthly")
    ]


def test_a_billing_database_error_never_stops_the_failure_mail(
    billing, services, postgres, monkeypatch
):
    unreachable = {**postgres.connection("months_tried"), "port": 1}
    for key, value in connection_env({"billing_db": unreachable}).items():
        monkeypatch.setenv(key, value)
    before = set(services.maildir.glob("*.eml"))
    failure_mail(web.config(), NEXT_STEP)(
        _context("manual__db-down", "fetch_cdr_files", "2026-08", RuntimeError("boom"))
    )
    (mail,) = _new_mails(services.maildir, before)
    assert "fetch_cdr_files failed - boom" in mail["Subject"]


def test_the_page_says_why_and_links_each_run_to_the_airflow_ui(billing, tried):
    page = runs_pages.months_tried_page(
        runs_queries.months_tried(billing, web.config(), NOW, tried.airflow), NOW
    )
    assert "<b>validate_cdr_file</b> failed" in page and NEXT_STEP in page
    assert PHONE not in page and "+4670*****67" in page
    quoted = "manual__2026-03-10T08%3A00%3A00%2B00%3A00"
    assert f'href="../dags/cdr_billing_monthly/runs/{quoted}" data-ui-href' in page
    assert f"<script>{pages.PAGE_SCRIPT}</script>" in page
    assert "waiting for files" in page and "never run" in page and "queued" in page
    assert 'href="month/2026-02/files/billing-csv" download' in page


def _token() -> str:
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="op", role="admin"))


@pytest.fixture
def client(billing) -> TestClient:
    client = TestClient(billing_app.app, raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {_token()}"
    return client


def test_the_months_tried_route_allows_only_the_page_s_own_script(client, tried):
    answer = client.get("/runs")
    assert answer.status_code == 200
    policy = answer.headers["content-security-policy"]
    digest = b64encode(sha256(pages.PAGE_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy and "default-src 'none'" in policy
    assert "<b>validate_cdr_file</b> failed" in answer.text
    assert "history.pushState" in pages.PAGE_SCRIPT and "popstate" in pages.PAGE_SCRIPT


@pytest.fixture
def gx_run(billing, tmp_path) -> str:
    """A real Great Expectations result of a carrier file with two bad numbers, in the work
    directory of the failed March run."""
    month, config = BillingMonth(2026, 3), web.config()
    generate_month(tmp_path, month)
    profile = config.profile_for("carrier")
    rows = validate.check_rows(
        read.read_cdr_file(tmp_path / "cdr/carrier/carrier_cdr_202603.csv", profile).assign(
            source="carrier"
        ),
        profile,
        month,
        config.billing,
    ).accepted
    bad = rows.assign(
        destination_party=[*rows["destination_party"].iloc[:-2], f"{PHONE}X", f"{PHONE[1:]}-9"]
    )
    work_dir = run_work_dir(config, "2026-03", FAILED_RUN)
    results = work_dir / "files" / "0123456789abcdef" / "gx_results"
    with pytest.raises(validate.FileValidationError):
        validate.ExpectationRunner(results).validate_file(
            bad, "carrier_cdr_202603.csv", profile, month, config.billing
        )
    run_attempts.record(
        billing,
        run_attempts.Attempt(FAILED_RUN, "2026-03", "failed", str(work_dir), "validate_cdr_file"),
    )
    return FAILED_RUN


def _cells(page: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)
    return [
        [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in rows
    ]


def test_the_validation_results_of_a_failed_run_are_a_page_with_numbers_masked(client, gx_run):
    answer = client.get("/month/2026-03/validation", params={"run": gx_run})
    assert answer.status_code == 200, answer.text[:300]
    page = answer.text
    assert "carrier_cdr_202603.csv" in page and "failed" in page
    [regex] = [" ".join(" ".join(c) for c in row) for row in _cells(page) if "regex" in str(row)]
    assert "not met" in regex and " 2 " in f" {regex} "
    assert mask_number(f"{PHONE}X") in regex and mask_number(f"{PHONE[1:]}-9") in regex
    assert PHONE not in page and PHONE[1:] not in page
    assert "cdn" not in page.lower() and "<script src" not in page
    assert "met" in page and "12 of 13 expectations met" in page


def test_validation_results_only_of_the_months_own_runs(client, gx_run):
    assert client.get("/month/2026-04/validation", params={"run": gx_run}).status_code == 404
    assert client.get("/month/2026-01/validation").status_code == 404  # no batch, no run


def _link(page: str) -> tuple[str, str]:
    [(href, label)] = re.findall(r'<p><a href="([^"]*)">([^<]*)</a></p>', page)
    return href, label


@pytest.mark.parametrize(
    ("method", "path", "status", "back"),
    [
        ("GET", "/no/such/page", 404, "../../"),
        ("GET", "/month/2025-13", 422, "../"),
        ("GET", "/month/2026-03/validation?run=" + "x" * 5000, 422, "../../"),
        ("GET", "/prepaid/account/" + "y" * 5000, 404, "../../"),
        ("GET", "/month/1999-01", 404, "../"),
        ("DELETE", "/runs", 405, "./"),
        ("GET", "/month/2026-05/files/..%2F..%2Freport.json", 404, "../../../"),
    ],
)
def test_bad_addresses_get_a_short_page_with_a_way_back(client, method, path, status, back):
    answer = client.request(method, path)
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert _link(answer.text) == (back, "Back to the Billing months")
    assert len(answer.text) < 8000
    assert "x" * 100 not in answer.text and "y" * 100 not in answer.text
    assert '"detail"' not in answer.text


def test_the_api_keeps_json_errors(client):
    missing = client.get("/api/prepaid/affordable")
    assert missing.status_code == 422 and "detail" in missing.json()
    unknown = client.get("/api/nothing")
    assert unknown.status_code == 404 and "detail" in unknown.json()


def test_not_logged_in_leads_to_the_login_and_not_to_a_long_address(billing):
    anonymous = TestClient(billing_app.app)
    long_path = "/month/2026-03/validation?run=" + "z" * 3000
    answer = anonymous.get(long_path)
    assert answer.status_code == 401
    href, label = _link(answer.text)
    assert label == "Log in to Airflow" and "zzzz" not in href
    assert "validation" in _link(anonymous.get("/month/2026-03/validation").text)[0]
