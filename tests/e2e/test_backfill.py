"""Backfill through a running Airflow: `airflow backfill create` bills each month once, and
`--reprocess-behavior completed` re-bills them, superseding the old batches."""

from __future__ import annotations

import time

import pytest
from conftest import BACKFILL_MONTHS
from sqlalchemy import create_engine, text

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

    _backfill(running_airflow, "--reprocess-behavior", "completed")
    runs = _wait_for_backfill(running_airflow)
    assert [r["state"] for r in runs] == ["success"] * len(runs)
    batches = _batches(postgres)
    assert sorted(b for b in batches if b[1] == "current") == [
        (month, "current") for month in months
    ]
    assert sorted(b for b in batches if b[1] == "superseded") == [
        (month, "superseded") for month in months
    ]
