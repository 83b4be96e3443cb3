"""The Billing app's links inside the Airflow UI's sandboxed frame, clicked in headless Chromium
(Debian's chromium over the DevTools protocol, as test_prepaid_browser.py): a run link of the
months tried opens that run in the UI itself (not the UI inside the frame); the validation
results show in the frame; the CSV link downloads the billing file; a bad address shows a short
page whose link leads back to the Billing months. Screenshots go to the test's tmp_path."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from websockets.sync.client import connect

from cdr_billing import run_attempts
from cdr_billing.config import load_config
from cdr_billing.workdir import run_work_dir
from cdr_devkit.screenshot import FRAME, DevTools, start_chromium

DAG_ID = "cdr_billing_monthly"
RUN_ID = "manual__2026-03-links"
WAIT_SECONDS = 60
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


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    chromium = start_chromium(profile)
    try:
        with connect(chromium.devtools_url, max_size=None, proxy=None) as socket:
            yield DevTools(socket)
    finally:
        os.killpg(chromium.process.pid, signal.SIGTERM)
        chromium.process.wait(timeout=20)


def _frame(expression: str) -> str:
    return f"(() => {{ const d = {FRAME}; return d ? ({expression}) : null; }})()"


def _wait(devtools: DevTools, session: str, expression: str, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not devtools.evaluate(session, expression):
        if time.monotonic() > deadline:
            shown = devtools.evaluate(
                session,
                f"location.pathname + ' | ' + ({FRAME}?.title || document.title) + ': ' + "
                f"({FRAME}?.body?.innerText || document.body.innerText).slice(0, 300)",
            )
            raise AssertionError(f"{what} did not appear; the page shows {shown!r}")
        time.sleep(0.3)


def _shot(devtools: DevTools, session: str, path: Path) -> None:
    png = devtools.call("Page.captureScreenshot", session, format="png")["data"]
    path.write_bytes(base64.b64decode(png))


def _open(devtools: DevTools, airflow, billing_path: str) -> str:
    """Log in with the UI's cookie, open Billing in the UI, then move its frame to
    /billing/<billing_path>; return the session."""
    devtools.call(
        "Storage.setCookies",
        cookies=[{"name": "_token", "value": airflow.token(), "url": f"{airflow.base_url}/"}],
    )
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=1400,
        height=1000,
        deviceScaleFactor=1,
        mobile=False,
    )
    devtools.call("Page.navigate", session, url=f"{airflow.base_url}/plugin/billing")
    _wait(devtools, session, _frame("d.title === 'Billing'"), "the Billing months")
    devtools.evaluate(
        session,
        f"document.querySelector('iframe').contentWindow.location.assign("
        f"'/billing/{billing_path}')",
    )
    return session


def _click(devtools: DevTools, session: str, selector: str) -> None:
    link = f"d.querySelector({json.dumps(selector)})"
    _wait(devtools, session, _frame(f"!!{link}"), selector)
    devtools.evaluate(session, _frame(f"{link}.click()"))


def test_a_run_link_opens_the_run_in_the_airflow_ui(running_airflow, tried, browser, tmp_path):
    session = _open(browser, running_airflow, "runs")
    _wait(browser, session, _frame("d.title === 'Months tried'"), "the months tried")
    failed_april = browser.evaluate(
        session,
        _frame(
            "[...d.querySelectorAll('tr')].find(r => r.innerText.startsWith('2026-04'))?.innerText"
        ),
    )
    assert "fetch_cdr_files" in failed_april and "no server" in failed_april
    _shot(browser, session, tmp_path / "months-tried.png")

    _click(browser, session, f'a[data-ui-href][href$="/runs/{tried}"]')
    run_path = f"/dags/{DAG_ID}/runs/{tried}"
    _wait(browser, session, f"location.pathname === {json.dumps(run_path)}", "the run's URL")
    _wait(
        browser,
        session,
        "!document.querySelector('iframe') && "
        f"document.body.innerText.includes({json.dumps(tried)})",
        "the run's page in the UI",
    )
    _shot(browser, session, tmp_path / "run-page.png")


def test_validation_results_and_the_billing_file_inside_the_frame(
    running_airflow, tried, seeded, browser, tmp_path
):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
    session = _open(browser, running_airflow, "runs")
    _click(browser, session, 'a[href="month/2026-05/files/billing-csv"]')
    deadline = time.monotonic() + WAIT_SECONDS
    while not [p for p in downloads.iterdir() if p.suffix == ".csv"]:
        assert time.monotonic() < deadline, f"no download: {list(downloads.iterdir())}"
        time.sleep(0.3)
    [downloaded] = [p for p in downloads.iterdir() if p.suffix == ".csv"]
    time.sleep(0.5)  # the file is renamed when complete
    assert downloaded.read_bytes() == seeded.billing_csv.read_bytes()

    _click(browser, session, 'a[href="month/2026-05/validation"]')
    _wait(browser, session, _frame("d.title === 'Validation 2026-05'"), "the validation results")
    section = "d.querySelector('section.gx')"
    shown = browser.evaluate(
        session, _frame(f"[{section}.getBoundingClientRect().height, {section}.innerText]")
    )
    assert shown[0] > 50
    assert "carrier_cdr_202605.csv" in shown[1] and "not met" in shown[1]
    assert "+4670******7X" in shown[1] and "+46701234567X" not in shown[1]
    _shot(browser, session, tmp_path / "validation.png")


def test_a_bad_address_shows_a_short_page_with_a_way_back(
    running_airflow, tried, browser, tmp_path
):
    session = _open(browser, running_airflow, "no/such/page")
    _wait(browser, session, _frame("d.title === 'Not found'"), "the not found page")
    _shot(browser, session, tmp_path / "not-found.png")
    _click(browser, session, "p a")
    _wait(browser, session, _frame("d.title === 'Billing'"), "the Billing months again")
