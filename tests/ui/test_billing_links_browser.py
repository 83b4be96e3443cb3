"""The Billing app's links inside the Airflow UI's sandboxed frame, clicked in headless Chromium
(Debian's chromium over the DevTools protocol, as test_prepaid_browser.py): a run link of the
months tried opens that run in the UI itself (not the UI inside the frame); the validation
results show in the frame; the CSV link downloads the billing file; a bad address shows a short
page whose link leads back to the Billing months. Screenshots go to the test's tmp_path."""

from __future__ import annotations

import json

import pytest
from browser_steps import (
    allow_downloads,
    click,
    downloaded,
    frame,
    in_frame,
    open_ui,
    shot,
    wait,
)
from sqlalchemy import create_engine

from cdr_billing import run_attempts
from cdr_billing.config import load_config
from cdr_billing.workdir import run_work_dir
from cdr_devkit.screenshot import DevTools

DAG_ID = "cdr_billing_monthly"
RUN_ID = "manual__2026-03-links"
RESULT = {  # a file's Great Expectations result, as ExpectationRunner keeps it (one entry)
    "success": False,
    "statistics": {"evaluated_expectations": 1, "successful_expectations": 0},
    "meta": {"active_batch_definition": {"data_asset_name": "carrier_cdr_202605.csv"}},
    "results": [
        {
            "success": False,
            "expectation_config": {
                "type": "expect_column_values_to_match_regex",
                "kwargs": {"column": "destination_party", "regex": "^\\+?[0-9]{4,17}$"},
            },
            "result": {
                "element_count": 26,
                "unexpected_count": 1,
                "unexpected_percent": 3.846,
                "partial_unexpected_list": ["+46701234567X"],
            },
            "exception_info": {"raised_exception": False},
        }
    ],
}


@pytest.fixture(scope="module")
def tried(running_airflow, postgres, seeded) -> str:
    """A run of 2026-03 queued in Airflow (the DAG paused, so it stays so), a failure of
    2026-04 as the pipeline records it, and validation results of May's current batch."""
    running_airflow.wait_for_dag(DAG_ID)
    running_airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": True})
    running_airflow.api(
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        {"dag_run_id": RUN_ID, "logical_date": None, "conf": {"billing_month": "2026-03"}},
    )
    engine = create_engine(postgres.url_of("billing_ui"))
    run_attempts.record(
        engine,
        run_attempts.Attempt(
            "manual__2026-04-links", "2026-04", "failed", None, "fetch_cdr_files", "no server"
        ),
    )
    engine.dispose()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_HOME", running_airflow.env["AIRFLOW_HOME"])
        config = load_config()
    results = run_work_dir(config, "2026-05", "ui_2026-05_second") / "files/fedcba9876543210"
    (results / "gx_results").mkdir(parents=True, exist_ok=True)
    (results / "gx_results" / "carrier_cdr_202605.csv.json").write_text(json.dumps(RESULT))
    return RUN_ID


def _open(devtools: DevTools, airflow, billing_path: str) -> str:
    """Log in with the UI's cookie, open Billing in the UI, then move its frame to
    /billing/<billing_path>; return the session."""
    session = open_ui(devtools, airflow)
    wait(devtools, session, frame("d.title === 'Billing'"), "the Billing months")
    devtools.evaluate(
        session,
        f"document.querySelector('iframe').contentWindow.location.assign("
        f"'/billing/{billing_path}')",
    )
    return session


def test_a_run_link_opens_the_run_in_the_airflow_ui(running_airflow, tried, browser, tmp_path):
    session = _open(browser, running_airflow, "runs")
    wait(browser, session, frame("d.title === 'Months tried'"), "the months tried")
    failed_april = in_frame(
        browser,
        session,
        "[...d.querySelectorAll('tr')].find(r => r.innerText.startsWith('2026-04'))?.innerText",
    )
    assert "fetch_cdr_files" in failed_april and "no server" in failed_april
    shot(browser, session, tmp_path / "months-tried.png")

    click(browser, session, f'a[data-ui-href][href$="/runs/{tried}"]')
    run_path = f"/dags/{DAG_ID}/runs/{tried}"
    wait(browser, session, f"location.pathname === {json.dumps(run_path)}", "the run's URL")
    wait(
        browser,
        session,
        "!document.querySelector('iframe') && "
        f"document.body.innerText.includes({json.dumps(tried)})",
        "the run's page in the UI",
    )
    shot(browser, session, tmp_path / "run-page.png")


def test_validation_results_and_the_billing_file_inside_the_frame(
    running_airflow, tried, seeded, browser, tmp_path
):
    downloads = tmp_path / "downloads"
    allow_downloads(browser, downloads)
    session = _open(browser, running_airflow, "runs")
    click(browser, session, 'a[href="month/2026-05/files/billing-csv"]')
    assert downloaded(downloads, ".csv").read_bytes() == seeded.billing_csv.read_bytes()

    click(browser, session, 'a[href="month/2026-05/validation"]')
    wait(browser, session, frame("d.title === 'Validation 2026-05'"), "the validation results")
    section = "d.querySelector('section.gx')"
    shown = in_frame(
        browser, session, f"[{section}.getBoundingClientRect().height, {section}.innerText]"
    )
    assert shown[0] > 50
    assert "carrier_cdr_202605.csv" in shown[1] and "not met" in shown[1]
    assert "+4670******7X" in shown[1] and "+46701234567X" not in shown[1]
    shot(browser, session, tmp_path / "validation.png")


def test_a_bad_address_shows_a_short_page_with_a_way_back(
    running_airflow, tried, browser, tmp_path
):
    session = _open(browser, running_airflow, "no/such/page")
    wait(browser, session, frame("d.title === 'Not found'"), "the not found page")
    shot(browser, session, tmp_path / "not-found.png")
    click(browser, session, "p a")
    wait(browser, session, frame("d.title === 'Billing'"), "the Billing months again")
