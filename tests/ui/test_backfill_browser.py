"""Backfill as an operator does it in the Airflow UI: headless Chromium opens the monthly DAG,
Trigger -> Backfill, types From and To in the date pickers, clicks Run Backfill; the runs
created are the months typed. Once in the UI's default timezone (the billing timezone, which
the plugin sets for a browser without a choice) and once in UTC chosen by the user, where
Airflow's own rule billed the month after. The DAG is paused meanwhile (its runs stay queued)
and the runs are deleted afterwards, so no other test sees them."""

from __future__ import annotations

import json
import time
import urllib.error

import pendulum
import pytest
from browser_steps import WAIT_SECONDS, View, click, open_ui, shot, wait

from cdr_billing.config import load_config
from cdr_devkit.airflow_env import DAG_ID
from cdr_devkit.screenshot import DevTools

SCHEDULER_LETS_GO_SECONDS = 5  # a few of the scheduler's loops
SCREEN = View("tall desktop", 1400, 1400, False)
DIALOG = "document.querySelector('[data-scope=dialog][data-part=content]')"


@pytest.fixture
def paused_dag(running_airflow):
    """The DAG paused while the test's backfills exist; their runs deleted after."""
    running_airflow.wait_for_dag(DAG_ID)
    was_paused = running_airflow.api("GET", f"/dags/{DAG_ID}")["is_paused"]
    before = {b["id"] for b in _backfills(running_airflow)}
    running_airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": True})
    yield
    ours = [b for b in _backfills(running_airflow) if b["id"] not in before]
    runs = [run["dag_run_id"] for backfill in ours for run in _runs_of(running_airflow, backfill)]
    for backfill in ours:
        if not backfill["completed_at"]:
            running_airflow.api("PUT", f"/backfills/{backfill['id']}/cancel")
    # failed first, deleted once the scheduler has let go of them: a run deleted while the
    # scheduler holds it makes the scheduler exit (ObjectDeletedError)
    for run_id in runs:
        running_airflow.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", {"state": "failed"})
    time.sleep(SCHEDULER_LETS_GO_SECONDS)
    for run_id in runs:
        running_airflow.api("DELETE", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    running_airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": was_paused})


def _backfills(airflow) -> list[dict]:
    return airflow.api("GET", f"/backfills?dag_id={DAG_ID}&limit=100")["backfills"]


def _runs_of(airflow, backfill: dict) -> list[dict]:
    runs = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns?limit=100&run_type=backfill")["dag_runs"]
    created = pendulum.parse(backfill["created_at"])
    return [r for r in runs if pendulum.parse(r["queued_at"] or r["run_after"]) >= created]


def _open_dag(devtools: DevTools, airflow, timezone_choice: str | None) -> str:
    """Log in, open the DAG's page; with a choice, the user's timezone as the UI keeps it."""
    session = open_ui(devtools, airflow, f"/dags/{DAG_ID}", SCREEN)
    wait(devtools, session, "document.readyState === 'complete'", "the UI")
    if timezone_choice:
        devtools.evaluate(
            session, f"localStorage.setItem('timezone', {json.dumps(json.dumps(timezone_choice))})"
        )
        devtools.evaluate(session, "window.beforeReload = true")
        devtools.call("Page.reload", session)
        wait(
            devtools,
            session,
            "!window.beforeReload && document.readyState === 'complete'",
            "reload",
        )
    return session


def _pick_date(devtools: DevTools, session: str, field: int, day: str) -> None:
    """Open the From (0) or To (1) picker and type the date as a user does (YYYY/MM/DD)."""
    devtools.evaluate(
        session, f"{DIALOG}.querySelectorAll('[data-testid=datetime-input]')[{field}].click()"
    )
    date_input = "document.querySelector('input[placeholder=\"YYYY/MM/DD\"]')"
    wait(devtools, session, f"!!{date_input}", "the date picker")
    devtools.evaluate(session, f"{date_input}.focus()")
    devtools.call("Input.insertText", session, text=day)
    devtools.call("Input.dispatchKeyEvent", session, type="keyDown", key="Escape", code="Escape")
    devtools.call("Input.dispatchKeyEvent", session, type="keyUp", key="Escape", code="Escape")
    wait(devtools, session, f"!{date_input}", "the date picker closing")


def _backfill_in_ui(devtools: DevTools, session: str, first: str, last: str) -> str:
    """Trigger -> Backfill, From/To, Run Backfill; return what the form announced."""
    click(devtools, session, "button", scope="document", text="Trigger")
    click(
        devtools, session, "label", scope=DIALOG, text="Backfill\nRun this Dag for a range of dates"
    )
    _pick_date(devtools, session, 0, first)
    _pick_date(devtools, session, 1, last)
    announced = f"{DIALOG}.innerText.match(/\\d+ runs? will be triggered/)"
    wait(devtools, session, f"!!{announced}", "the form's count of runs")
    count = devtools.evaluate(session, f"{announced}[0]")
    # the DAG stays paused: its runs wait, queued, until the test deletes them
    click(devtools, session, "label", scope=DIALOG, text=f"Unpause {DAG_ID} on trigger")
    click(devtools, session, "button", scope=DIALOG, text="Run Backfill")
    wait(devtools, session, f"!{DIALOG}", "the form closing")
    return count


def _new_backfill_months(airflow, known: set[int]) -> list[str]:
    """The billing months of the runs of the backfill created since `known`."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        new = [b for b in _backfills(airflow) if b["id"] not in known]
        if new:
            zone = load_config().billing.timezone
            runs = _runs_of(airflow, new[0])
            return sorted(
                pendulum.parse(r["data_interval_start"]).in_timezone(zone).format("YYYY-MM")
                for r in runs
            )
        time.sleep(0.5)
    raise AssertionError("the UI created no backfill")


@pytest.mark.parametrize(
    ("timezone_choice", "first", "last", "months"),
    [
        (None, "2026/06/01", "2026/06/30", ["2026-06"]),  # the UI's default: billing timezone
        ("UTC", "2026/04/01", "2026/05/31", ["2026-04", "2026-05"]),  # chosen by the user
    ],
)
def test_backfill_in_the_ui_bills_the_months_typed(
    running_airflow, paused_dag, browser, tmp_path, timezone_choice, first, last, months
):
    session = _open_dag(browser, running_airflow, timezone_choice)
    stored = browser.evaluate(session, "localStorage.getItem('timezone')")
    assert json.loads(stored) == (timezone_choice or load_config().billing.timezone)
    known = {b["id"] for b in _backfills(running_airflow)}

    announced = _backfill_in_ui(browser, session, first, last)

    shot(browser, session, tmp_path / "backfill.png")
    plural = "run" if len(months) == 1 else "runs"
    assert announced == f"{len(months)} {plural} will be triggered"
    assert _new_backfill_months(running_airflow, known) == months


def _billing_month_menu(devtools: DevTools, session: str, typed: str) -> str:
    """Type into the Billing month list's search as a user does; return the menu's text."""
    label = (
        f"[...{DIALOG}.querySelectorAll('label')].find(l => l.innerText.trim() === 'Billing month')"
    )
    search = f"document.getElementById({label}?.htmlFor)"
    wait(devtools, session, f"!!({DIALOG}) && !!{search}", "the Billing month list")
    devtools.evaluate(session, f"{search}.focus(); {search}.select()")
    devtools.call("Input.insertText", session, text=typed)
    menu = "document.querySelector('[id^=react-select][id$=-listbox]')"
    wait(devtools, session, f"!!{menu}", "the list's menu")
    return devtools.evaluate(session, f"{menu}.innerText")


def test_trigger_form_offers_months_in_words_and_no_bad_month(
    running_airflow, paused_dag, browser, tmp_path
):
    session = _open_dag(browser, running_airflow, None)
    click(browser, session, "button", scope="document", text="Trigger")
    shown = _billing_month_menu(browser, session, "2026-10")
    assert "2026-10 (October 2026)" in shown
    refused = _billing_month_menu(browser, session, "2026-13")
    shot(browser, session, tmp_path / "trigger-form.png")
    assert "2026-13" not in refused and "No options" in refused


def test_api_refuses_a_bad_month_in_words(running_airflow, paused_dag):
    with pytest.raises(urllib.error.HTTPError) as refused:
        running_airflow.api(
            "POST",
            f"/dags/{DAG_ID}/dagRuns",
            {"logical_date": None, "conf": {"billing_month": "2026-13"}},
        )
    detail = json.loads(refused.value.read())["detail"]
    assert refused.value.code == 400
    assert detail.startswith("Invalid input for param billing_month: '2026-13' is not one of")
