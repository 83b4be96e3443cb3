"""Backfill through a running Airflow: `airflow backfill create` bills each month once, and the
UI's "All Runs" (reprocess completed) re-bills them, superseding the old batches. The ranges are
typed as a person means them: the CLI's dates in the billing timezone, the UI's From 00:00 and
To 23:59:59.999 in a UTC browser (which billed the month after before BillingMonthTimetable)."""

from __future__ import annotations

import time
import urllib.error

import pendulum
import pytest
from conftest import BACKFILL_MONTHS
from sqlalchemy import create_engine, text

from cdr_billing.config import load_config
from cdr_devkit.airflow_env import DAG_ID

RUN_TIMEOUT_SECONDS = 400


def _backfill(airflow, *extra: str) -> None:
    airflow.airflow(
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        "2026-01-01",
        "--to-date",
        "2026-03-31",
        *extra,
    )


def _ui_backfill(airflow, from_date: str, to_date: str, reprocess: str) -> None:
    """What the UI's Run Backfill sends (its dates as instants of the UI's timezone)."""
    airflow.api(
        "POST",
        "/backfills",
        {
            "dag_id": DAG_ID,
            "from_date": from_date,
            "to_date": to_date,
            "reprocess_behavior": reprocess,
            "max_active_runs": 1,
        },
    )


def _dry_run_months(airflow, from_date: str, to_date: str) -> list[str]:
    """The months the UI's backfill form announces (its dry run), "All Runs"."""
    body = airflow.api(
        "POST",
        "/backfills/dry_run",
        {
            "dag_id": DAG_ID,
            "from_date": from_date,
            "to_date": to_date,
            "reprocess_behavior": "completed",
        },
    )
    zone = load_config().billing.timezone
    return [
        pendulum.parse(entry["logical_date"]).in_timezone(zone).format("YYYY-MM")
        for entry in body["backfills"]
    ]


def _wait_for_backfill(airflow) -> list[dict]:
    """Wait until every backfill of the DAG is completed; return the backfill runs."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        backfills = airflow.api("GET", f"/backfills?dag_id={DAG_ID}")["backfills"]
        if all(b["completed_at"] for b in backfills):
            return [
                r
                for r in airflow.api("GET", f"/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
                if r["run_type"] == "backfill"
            ]
        time.sleep(3)
    pytest.fail(f"the backfill did not complete within {RUN_TIMEOUT_SECONDS} s: {backfills}")


def _batches(postgres) -> list[tuple[str, str]]:
    engine = create_engine(postgres.url_of("billing_ui"))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT billing_month, status FROM billing_batch "
                "WHERE billing_month < '2026-04' ORDER BY batch_id"
            )
        ).all()
    engine.dispose()
    return [tuple(row) for row in rows]


def test_backfill_bills_each_month_once_then_rebills_on_request(running_airflow, postgres):
    months = [str(month) for month in BACKFILL_MONTHS]
    # backfill runs of a paused DAG stay queued
    running_airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    _backfill(running_airflow)
    runs = _wait_for_backfill(running_airflow)
    assert [r["state"] for r in runs] == ["success"] * 3
    assert sorted(_batches(postgres)) == [(month, "current") for month in months]

    # the UI's form in a UTC browser: January 1st to March 31st, "All Runs"
    _ui_backfill(
        running_airflow, "2026-01-01T00:00:00.000Z", "2026-03-31T23:59:59.999Z", "completed"
    )
    runs = _wait_for_backfill(running_airflow)
    assert [r["state"] for r in runs] == ["success"] * 3
    batches = _batches(postgres)
    assert sorted(b for b in batches if b[1] == "current") == [
        (month, "current") for month in months
    ]
    assert sorted(b for b in batches if b[1] == "superseded") == [
        (month, "superseded") for month in months
    ]


@pytest.mark.parametrize(
    ("from_date", "to_date"),
    [
        ("2026-08-01T00:00:00.000Z", "2026-10-31T23:59:59.999Z"),  # the UI in UTC
        ("2026-07-31T22:00:00.000Z", "2026-10-31T22:59:59.999Z"),  # the UI in Europe/Zurich
        ("2026-08-01T10:00:00.000Z", "2026-11-01T09:59:59.999Z"),  # the UI in Pacific/Honolulu
        ("2026-07-31T12:00:00.000Z", "2026-10-31T10:59:59.999Z"),  # the UI in Pacific/Auckland
        ("2026-08-01T00:00:00+02:00", "2026-10-31T00:00:00+01:00"),  # CLI dates, Stockholm
    ],
)
def test_a_range_announces_the_months_typed(running_airflow, from_date, to_date):
    """August 1st to October 31st is August, September and October, whatever the timezone
    the dates were typed in (the dry run is the count the UI's form shows)."""
    running_airflow.wait_for_dag(DAG_ID)
    assert _dry_run_months(running_airflow, from_date, to_date) == ["2026-08", "2026-09", "2026-10"]


def test_a_range_without_the_first_of_a_month_is_refused_in_words(running_airflow):
    running_airflow.wait_for_dag(DAG_ID)
    with pytest.raises(urllib.error.HTTPError) as refused:
        _ui_backfill(running_airflow, "2026-08-02T00:00:00Z", "2026-08-31T23:59:59.999Z", "none")
    assert refused.value.code == 422
    assert "No runs to create" in refused.value.read().decode()
