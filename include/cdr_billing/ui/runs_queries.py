"""Every month the billing DAG has tried, from its first month to the last complete one: billed,
failed (which task, the error, the next step), running or waiting for files (since when, until
which deadline), queued, or never run (missing); with the month's runs and held files.

Sources: the billing database (batches, the file ledger's held files, billing_run as the
pipeline records it) and, when the page runs inside the api-server, Airflow's own runs of the
DAG (AirflowRun): they know what the pipeline cannot record (a run queued behind another, a
run marked failed by hand, a sensor waiting for files) and override the recorded state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.engine import Engine

from cdr_billing import ledger
from cdr_billing.config import PipelineConfig
from cdr_billing.database import in_utc
from cdr_billing.months import BillingMonth
from cdr_billing.run_attempts import FAILED, RUNNING, SUCCEEDED
from cdr_billing.schema import CURRENT, billing_batch, billing_run

# The DAG's start_date: its first month (dags/cdr_billing_monthly.py)
FIRST_MONTH = BillingMonth(2026, 1)
QUEUED, WAITING = "queued", "waiting"
# A month's status, in words (the page's badges)
BILLED, MISSING = "billed", "missing"
STATUS_WORDS = {
    BILLED: "billed",
    FAILED: "failed",
    RUNNING: "running",
    WAITING: "waiting for files",
    QUEUED: "queued",
    MISSING: "never run",
}
AIRFLOW_STATES = {"queued": QUEUED, "running": RUNNING, "failed": FAILED, "success": SUCCEEDED}
NO_REASON = "No task failure was recorded (marked failed in the UI, or its worker was lost)."


@dataclass(frozen=True)
class AirflowRun:
    """One run of the DAG as Airflow's database has it."""

    run_id: str
    billing_month: str
    state: str  # queued | running | failed | success (Airflow's DagRunState)
    waiting_for_files: bool  # its sensor is between pokes
    started_at: datetime | None


@dataclass(frozen=True)
class RunTried:
    """One run of a month: its state and, when it failed, where and why."""

    run_id: str
    state: str  # queued | waiting | running | failed | success
    started_at: datetime | None
    updated_at: datetime | None
    failed_task: str | None = None
    error: str | None = None
    hint: str | None = None
    work_dir: str | None = None


@dataclass(frozen=True)
class CurrentBatch:
    batch_id: int
    run_id: str
    loaded_at: datetime


@dataclass(frozen=True)
class MonthTried:
    """A month of the DAG's range: what its latest run did, its runs newest first."""

    billing_month: str
    status: str  # billed | failed | running | waiting | queued | missing
    runs: list[RunTried]
    current: CurrentBatch | None
    deadline: datetime  # files not there by then fail the run (month end + files_deadline_days)
    held_files: list[dict[str, str]] = field(default_factory=list)

    @property
    def latest(self) -> RunTried | None:
        return self.runs[0] if self.runs else None

    @property
    def status_words(self) -> str:
        return STATUS_WORDS[self.status]


def last_complete_month(now: datetime, timezone: str) -> BillingMonth:
    """The month before the one `now` falls in, in the billing timezone."""
    local = now.astimezone(ZoneInfo(timezone))
    return BillingMonth(local.year - (local.month == 1), (local.month - 2) % 12 + 1)


def month_range(first: BillingMonth, last: BillingMonth) -> list[BillingMonth]:
    months, month = [], first
    while month <= last:
        months.append(month)
        month = month.next()
    return months


class _Recorded(NamedTuple):
    """The runs the pipeline recorded, and the month of each."""

    runs: dict[str, RunTried]
    months: dict[str, str]


def _recorded_runs(engine: Engine) -> _Recorded:
    with engine.connect() as conn:
        rows = conn.execute(select(billing_run)).all()
    return _Recorded(
        {
            row.run_id: RunTried(
                row.run_id,
                row.state,
                in_utc(row.started_at),
                in_utc(row.updated_at),
                row.failed_task,
                row.error,
                row.hint,
                row.work_dir,
            )
            for row in rows
        },
        {row.run_id: row.billing_month for row in rows},
    )


def _with_airflow_state(recorded: RunTried | None, airflow: AirflowRun) -> RunTried:
    """A run as Airflow knows it now, with what the pipeline recorded of it."""
    state = AIRFLOW_STATES.get(airflow.state, RUNNING)
    if state == RUNNING and airflow.waiting_for_files:
        state = WAITING
    if recorded is None:
        return RunTried(
            airflow.run_id,
            state,
            airflow.started_at,
            None,
            error=NO_REASON if state == FAILED else None,
        )
    failed = state == FAILED
    has_reason = recorded.state == FAILED
    return RunTried(
        recorded.run_id,
        state,
        recorded.started_at or airflow.started_at,
        recorded.updated_at,
        failed_task=recorded.failed_task if failed and has_reason else None,
        error=(recorded.error if has_reason else NO_REASON) if failed else None,
        hint=recorded.hint if failed and has_reason else None,
        work_dir=recorded.work_dir,
    )


def _runs_by_month(
    engine: Engine, airflow_runs: Iterable[AirflowRun] | None
) -> dict[str, list[RunTried]]:
    recorded, months = _recorded_runs(engine)
    runs: dict[str, RunTried] = dict(recorded)
    if airflow_runs is not None:
        for airflow in airflow_runs:
            runs[airflow.run_id] = _with_airflow_state(recorded.get(airflow.run_id), airflow)
            months[airflow.run_id] = airflow.billing_month
    by_month: dict[str, list[RunTried]] = defaultdict(list)
    for run_id, run in runs.items():
        by_month[months[run_id]].append(run)
    return {
        month: sorted(listed, key=_newest_first, reverse=True) for month, listed in by_month.items()
    }


def _newest_first(run: RunTried) -> tuple[datetime, str]:
    moment = run.started_at or run.updated_at or datetime.min.replace(tzinfo=ZoneInfo("UTC"))
    return moment, run.run_id


def _current_batches(engine: Engine, billing_month: str | None = None) -> dict[str, CurrentBatch]:
    batch = billing_batch.c
    query = select(batch.billing_month, batch.batch_id, batch.run_id, batch.loaded_at).where(
        batch.status == CURRENT
    )
    if billing_month is not None:
        query = query.where(batch.billing_month == billing_month)
    with engine.connect() as conn:
        return {
            month: CurrentBatch(batch_id, run_id, in_utc(loaded_at))
            for month, batch_id, run_id, loaded_at in conn.execute(query)
        }


def _status(runs: list[RunTried], current: CurrentBatch | None) -> str:
    if runs and runs[0].state != SUCCEEDED:
        return runs[0].state
    return BILLED if current or runs else MISSING


def files_deadline(month: BillingMonth, config: PipelineConfig) -> datetime:
    """When a run of the month stops waiting for files and fails (fetch.files_arrived)."""
    end = month.bounds(config.billing.timezone).end
    return end + timedelta(days=config.files_deadline_days)


def months_tried(
    engine: Engine,
    config: PipelineConfig,
    now: datetime,
    airflow_runs: Iterable[AirflowRun] | None = None,
) -> list[MonthTried]:
    """Every month from the DAG's first (or the first with a run or batch) to the last complete
    one, and any later month with a run, newest first."""
    runs = _runs_by_month(engine, airflow_runs)
    batches = _current_batches(engine)
    seen = [BillingMonth.parse(month) for month in (*runs, *batches)]
    first = min([FIRST_MONTH, *seen])
    last = max([last_complete_month(now, config.billing.timezone), *seen])
    tried = []
    for month in reversed(month_range(first, last)):
        name = str(month)
        month_runs, current = runs.get(name, []), batches.get(name)
        tried.append(
            MonthTried(
                billing_month=name,
                status=_status(month_runs, current),
                runs=month_runs,
                current=current,
                deadline=files_deadline(month, config),
                held_files=ledger.held_files(engine, name) if month_runs or current else [],
            )
        )
    return tried


def month_tried(
    engine: Engine,
    config: PipelineConfig,
    now: datetime,
    billing_month: str,
    airflow_runs: Iterable[AirflowRun] | None = None,
) -> MonthTried | None:
    """One month of months_tried (None when outside its range)."""
    found = [
        m
        for m in months_tried(engine, config, now, airflow_runs)
        if m.billing_month == billing_month
    ]
    return found[0] if found else None


def run_work_dir(engine: Engine, billing_month: str, run_id: str) -> str | None:
    """The work directory a recorded run of the month used (None: no such run recorded)."""
    run = billing_run.c
    query = select(run.work_dir).where(run.run_id == run_id, run.billing_month == billing_month)
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def current_batch(engine: Engine, billing_month: str) -> CurrentBatch | None:
    """The month's current batch (None: the month has none)."""
    return _current_batches(engine, billing_month).get(billing_month)


def batch_runs(engine: Engine, billing_month: str) -> set[str]:
    """The (billing) run ids of the month's batches."""
    batch = billing_batch.c
    with engine.connect() as conn:
        query = select(batch.run_id).where(batch.billing_month == billing_month)
        return set(conn.scalars(query))
