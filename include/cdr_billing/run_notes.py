"""The billing month on every run of the monthly DAG, where an operator looks: the run's note
("Billing month 2026-10") and the first line each task logs. Run ids and dates do not say it
(a backfill run of October is dated 31 October 23:00 UTC; a manual run's date is when it was
triggered).

Tasks cannot write a run's note (the Task SDK has no such call), so a listener does, in the
scheduler, with the scheduler's session and in its transaction, when a run starts running: the
note keeps the user's own lines below ours. It also says why a run waits: another run of the
same month active beside it, or the DAG's `months_at_once` runs all active (on the queued
runs, refreshed whenever a run of the DAG starts or ends). Registered by the plugin
plugins/cdr_billing_runs.py (`listeners`).

The month is computed as the run's tasks compute it (cdr_billing.months.resolve_billing_month,
the function run.start_run uses): the `billing_month` param, else the start of the data
interval in the billing timezone. Light imports only: taskflow imports this at parse time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from airflow.listeners import hookimpl

from cdr_billing.config import BILLING_DAG_ID
from cdr_billing.months import run_month

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

MONTH_LINE = "Billing month "
SAME_MONTH_LINE = "Also running for "
QUEUED_LINE = "Queued: "
OUR_LINES = (MONTH_LINE, SAME_MONTH_LINE, QUEUED_LINE)
NOTE_LIMIT = 1000  # Airflow's dag_run_note.content
UNKNOWN_MONTH = "Billing month not known: the run has no data interval (give billing_month)"


def month_line(month: str | None) -> str:
    """The note's and the task log's first words."""
    return f"{MONTH_LINE}{month}" if month else UNKNOWN_MONTH


def first_log_line(month: str | None, run_id: str) -> str:
    """What every task of a run logs first, so a log read on its own says the month."""
    return f"{month_line(month)} · run {run_id}"


def same_month_line(month: str, run_ids: Sequence[str]) -> str:
    """Why a run of a month may not be the one whose batch stays current."""
    return (
        f"{SAME_MONTH_LINE}{month}: {', '.join(run_ids)}. Both bill; their loads take turns "
        "and the one that loads last is the month's current batch."
    )


def queued_line(active: int, months_at_once: int) -> str:
    """Why a queued run has not started."""
    return (
        f"{QUEUED_LINE}{active} runs of this DAG are active and months_at_once is "
        f"{months_at_once} (include/config/pipeline.yaml); it starts when one of them ends."
    )


def with_our_lines(note: str | None, lines: Iterable[str]) -> str:
    """The note with our lines first (replacing ours from before) and the user's own below."""
    own = [
        line
        for line in (note or "").splitlines()
        if not line.startswith(OUR_LINES) and line != UNKNOWN_MONTH
    ]
    return "\n".join([*lines, *own]).strip()[:NOTE_LIMIT]


def billing_month_param(dag_run: DagRun) -> str | None:
    """The run's billing_month param: its conf over the DAG's default, as the tasks see it."""
    conf = dict(dag_run.conf or {})
    dag = getattr(dag_run, "dag", None)
    if dag is not None and "billing_month" in dag.params:
        return dag.params.deep_merge(conf)["billing_month"]
    return conf.get("billing_month")


def month_of(dag_run: DagRun, timezone: str) -> str | None:
    return run_month(billing_month_param(dag_run), dag_run.data_interval_start, timezone)


def _runs_of_dag(session: Session, dag_id: str) -> list[DagRun]:
    """The DAG's queued and running runs; runs this scheduler loop started are the session's own
    objects, already in state running (not yet flushed)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    query = select(DagRun).where(
        DagRun.dag_id == dag_id, DagRun.state.in_([DagRunState.QUEUED, DagRunState.RUNNING])
    )
    return list(session.scalars(query))


def _set_note(dag_run: DagRun, lines: list[str]) -> None:
    note = with_our_lines(dag_run.note, lines)
    if note != (dag_run.note or ""):
        dag_run.note = note
        log.info("note of %s: %s", dag_run.run_id, note.splitlines()[0])


def note_runs(dag_run: DagRun, started: bool) -> None:
    """Write the month (and why it waits) on the notes of the billing DAG's runs: the run that
    started, and the queued ones."""
    from airflow.utils.state import DagRunState
    from sqlalchemy.orm import object_session

    from cdr_billing.config import load_config

    session = object_session(dag_run)
    if dag_run.dag_id != BILLING_DAG_ID or session is None:
        return
    config = load_config()
    zone = config.billing.timezone
    runs = _runs_of_dag(session, dag_run.dag_id)
    running = [r for r in runs if r.state == DagRunState.RUNNING]
    if started:
        month = month_of(dag_run, zone)
        lines = [month_line(month)]
        beside = [r.run_id for r in running if r is not dag_run and month_of(r, zone) == month]
        if month and beside:
            lines.append(same_month_line(month, beside))
        _set_note(dag_run, lines)
    for queued in (r for r in runs if r.state == DagRunState.QUEUED):
        lines = [month_line(month_of(queued, zone))]
        if len(running) >= config.months_at_once:
            lines.append(queued_line(len(running), config.months_at_once))
        _set_note(queued, lines)


@hookimpl
def on_dag_run_running(dag_run: DagRun, msg: str) -> None:
    note_runs(dag_run, started=True)


@hookimpl
def on_dag_run_success(dag_run: DagRun, msg: str) -> None:
    note_runs(dag_run, started=False)


@hookimpl
def on_dag_run_failed(dag_run: DagRun, msg: str) -> None:
    note_runs(dag_run, started=False)
