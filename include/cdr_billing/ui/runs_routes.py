"""Routes of the months tried (runs_pages) and a run's validation results (gx_results).

Imports stay light (app.py imports this in every Airflow process): pages and queries are
imported on the first request.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse

from cdr_billing.config import BILLING_DAG_ID
from cdr_billing.months import run_month
from cdr_billing.ui.web import Month, billing_db, config, html

if TYPE_CHECKING:
    from cdr_billing.ui.runs_queries import AirflowRun

log = logging.getLogger(__name__)
router = APIRouter()

SENSOR_TASK = "wait_for_cdr_files"
SENSOR_WAITING = frozenset({"up_for_reschedule", "running", "queued", "scheduled"})
MAX_RUN_ID = 250


def airflow_runs(timezone: str) -> list[AirflowRun] | None:
    """The billing DAG's runs in Airflow's database (this plugin runs inside the api-server);
    None when it cannot be read, and the page shows what the pipeline recorded."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from cdr_billing.ui.runs_queries import AirflowRun

    try:
        with create_session() as session:
            runs = session.execute(
                select(
                    DagRun.run_id,
                    DagRun.state,
                    DagRun.conf,
                    DagRun.data_interval_start,
                    DagRun.start_date,
                    DagRun.queued_at,
                ).where(DagRun.dag_id == BILLING_DAG_ID)
            ).all()
            waiting = set(
                session.scalars(
                    select(TaskInstance.run_id).where(
                        TaskInstance.dag_id == BILLING_DAG_ID,
                        TaskInstance.task_id == SENSOR_TASK,
                        TaskInstance.state.in_(SENSOR_WAITING),
                    )
                )
            )
    except Exception:
        log.exception("could not read the billing DAG's runs from Airflow's database")
        return None
    found = []
    for run_id, state, conf, interval_start, start_date, queued_at in runs:
        param = conf.get("billing_month") if isinstance(conf, dict) else None
        month = run_month(param, interval_start, timezone)
        if month is not None:
            found.append(
                AirflowRun(run_id, month, str(state), run_id in waiting, start_date or queued_at)
            )
    return found


@router.get("/runs", response_class=HTMLResponse)
def months_tried_page() -> HTMLResponse:
    """Every month the billing DAG has tried."""
    from cdr_billing.ui import runs_pages, runs_queries

    settings, now = config(), datetime.now(UTC)
    months = runs_queries.months_tried(
        billing_db(), settings, now, airflow_runs(settings.billing.timezone)
    )
    return html(runs_pages.months_tried_page(months, now))


def _work_dir(billing_month: str, run_id: str | None) -> tuple[str, str]:
    """The run (the current batch's when None) and its work directory; 404 when the month has
    no such run."""
    from cdr_billing.ui import runs_queries
    from cdr_billing.workdir import run_work_dir

    engine, settings = billing_db(), config()
    if run_id is None:
        current = runs_queries.current_batch(engine, billing_month)
        if current is None:
            raise HTTPException(404, f"Billing month {billing_month} has no current batch.")
        return current.run_id, str(run_work_dir(settings, billing_month, current.run_id))
    recorded = runs_queries.run_work_dir(engine, billing_month, run_id)
    if recorded is None and run_id in runs_queries.batch_runs(engine, billing_month):
        recorded = str(run_work_dir(settings, billing_month, run_id))
    if recorded is None:
        raise HTTPException(404, f"No run of billing month {billing_month} has that id.")
    return run_id, recorded


@router.get("/month/{billing_month}/validation", response_class=HTMLResponse)
def validation_page(
    billing_month: Month, run: Annotated[str | None, Query(max_length=MAX_RUN_ID)] = None
) -> HTMLResponse:
    """A run's validation results per CDR file (the current batch's run by default)."""
    from cdr_billing.ui import gx_results
    from cdr_billing.ui.queries import local_work_root

    run_id, work_dir = _work_dir(billing_month, run)
    root = local_work_root(config())
    folder = Path(work_dir).resolve() if root is not None and "://" not in work_dir else None
    inside = folder is not None and folder.is_relative_to(root.resolve()) and folder.is_dir()
    files = gx_results.run_results(folder, root) if inside else []
    return html(gx_results.results_page(billing_month, run_id, files, back=f"../{billing_month}"))
