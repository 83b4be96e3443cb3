"""Months side by side under a running Airflow (scheduler, api-server, dag-processor): unpausing
starts the scheduled run of the last month, whose files have not arrived, so it waits in its
sensor; a manual re-run of a past month bills meanwhile instead of queueing behind it. Every
run says its month: the run's note (the user's own note kept), the mapped tasks by CDR file
name, the first line our code writes in each task's log; a second run of the waiting month
is told on its note that another run of its month is active."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text

from cdr_billing.config import load_config
from cdr_billing.months import BillingMonth
from cdr_billing.run_notes import same_month_line
from cdr_devkit.airflow_env import DAG_ID
from cdr_devkit.sample_data import generate_month

RERUN = BillingMonth(2026, 7)  # no other test bills it
USER_NOTE = "re-run after the tariff fix"
TIMEOUT_SECONDS = 240
T = TypeVar("T")


def _wait(what: str, probe: Callable[[], T | None], interval: float = 2) -> T:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(interval)
    pytest.fail(f"{what} did not happen within {TIMEOUT_SECONDS} s")


def _last_complete_month() -> str:
    now = datetime.now(ZoneInfo(load_config().billing.timezone))
    return str(BillingMonth(now.year - (now.month == 1), (now.month - 2) % 12 + 1))


@pytest.fixture
def rerun_month_files(sftp_root: Path) -> Iterator[set[str]]:
    """A small month of CDR files on the servers; removed afterwards, so other tests see none."""
    before = set(sftp_root.rglob("*"))
    generate_month(sftp_root, RERUN, carrier_calls=500, conference_legs=300, pbx_calls=200)
    added = set(sftp_root.rglob("*")) - before
    stamps = (str(RERUN), f"{RERUN.year}{RERUN.month:02d}")
    yield {
        p.name for p in added if p.parent.parent.name == "cdr" and any(s in p.name for s in stamps)
    }
    for path in added:
        if path.is_file():
            path.unlink()


def _billing_page(airflow, path: str) -> str:
    """A Billing page's HTML as the admin sees it."""
    request = urllib.request.Request(
        airflow.base_url + path, headers={"Authorization": f"Bearer {airflow.token()}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read().decode()


def _run(airflow, run_id: str) -> dict[str, Any]:
    return airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")


def _task_instances(airflow, run_id: str) -> list[dict[str, Any]]:
    return airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=200")[
        "task_instances"
    ]


def _sensor_state(airflow, run_id: str) -> str | None:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/wait_for_cdr_files"
    return airflow.api("GET", path)["state"]


def _waiting_scheduled_run(airflow) -> dict[str, Any] | None:
    """The scheduled run whose sensor waits for files (up for reschedule), once there is one."""
    runs = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
    for run in runs:
        if run["run_type"] == "scheduled" and run["state"] == "running":
            if _sensor_state(airflow, run["dag_run_id"]) == "up_for_reschedule":
                return run
    return None


def _our_log_lines(airflow, run_id: str, ti: dict[str, Any]) -> list[str]:
    """The lines our code (loggers cdr_billing.*) wrote in the task's log, in order."""
    path = (
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/"
        f"{ti['try_number']}?map_index={ti['map_index']}"
    )
    content = airflow.api("GET", path)["content"]
    return [
        str(entry.get("event"))
        for entry in content
        if isinstance(entry, dict) and str(entry.get("logger", "")).startswith("cdr_billing")
    ]


def _note_of_a_second_run(airflow, waiting_run_id: str) -> str:
    """Start a manual run of the waiting run's month; its note once it runs (then fail it: a
    run deleted while the scheduler holds it makes the scheduler exit, ObjectDeletedError)."""
    month = _last_complete_month()
    payload = {
        "dag_run_id": f"manual__second_run_of_{month}_{time.time_ns()}",
        "logical_date": None,
        "conf": {"billing_month": month},
    }
    second = airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", payload)["dag_run_id"]
    try:
        return _wait("the second run's note", lambda: _run(airflow, second)["note"])
    finally:
        airflow.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{second}", {"state": "failed"})


def test_a_re_run_bills_while_the_last_month_waits_for_its_files(
    running_airflow, postgres, rerun_month_files
):
    airflow = running_airflow
    airflow.wait_for_dag(DAG_ID)
    paused = airflow.api("GET", f"/dags/{DAG_ID}")["is_paused"]
    airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    try:
        waiting = _wait(
            "the scheduled run's wait for files", lambda: _waiting_scheduled_run(airflow)
        )
        payload = {"logical_date": None, "conf": {"billing_month": str(RERUN)}, "note": USER_NOTE}
        rerun = airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", payload)["dag_run_id"]
        state = _wait(
            "the re-run's end",
            lambda: (
                _run(airflow, rerun)["state"] in ("success", "failed")
                and _run(airflow, rerun)["state"]
            ),
        )
        same_month_note = _note_of_a_second_run(airflow, waiting["dag_run_id"])
    finally:
        airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": paused})
    assert state == "success"
    month = _last_complete_month()
    assert same_month_note == (
        f"Billing month {month}\n{same_month_line(month, [waiting['dag_run_id']])}"
    )
    # the month without files still waits, beside the re-run that billed
    assert _run(airflow, waiting["dag_run_id"])["state"] == "running"
    assert _sensor_state(airflow, waiting["dag_run_id"]) == "up_for_reschedule"

    assert _run(airflow, rerun)["note"] == f"Billing month {RERUN}\n{USER_NOTE}"
    assert _run(airflow, waiting["dag_run_id"])["note"] == (
        f"Billing month {_last_complete_month()}"
    )

    tis = _task_instances(airflow, rerun)
    for task_id in ("validate_cdr_file", "bill_cdr_file"):
        names = {ti["rendered_map_index"] for ti in tis if ti["task_id"] == task_id}
        assert names == rerun_month_files, task_id

    first_line = f"Billing month {RERUN} · run {rerun}"
    logged = [ti for ti in tis if ti["task_id"] in ("upgrade_billing_db", "validate_cdr_file")]
    for ti in logged:
        assert _our_log_lines(airflow, rerun, ti)[0] == first_line, ti["task_id"]

    # the Billing page's months tried reads the sensor's state from Airflow's own database
    tried = _billing_page(airflow, "/billing/runs")
    row = re.search(rf"<tr><td>{month}</td>(.*?)</tr>", tried, re.S).group(1)
    assert "waiting for files" in row and f"<code>{escape(waiting['dag_run_id'])}</code>" in row

    engine = create_engine(postgres.url_of("billing_ui"))
    with engine.connect() as conn:
        batches = conn.execute(
            text("SELECT run_id, status FROM billing_batch WHERE billing_month = :m"),
            {"m": str(RERUN)},
        ).all()
    engine.dispose()
    assert [tuple(b) for b in batches] == [(rerun, "current")]
