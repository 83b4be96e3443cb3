"""The record of the billing DAG's run attempts (table billing_run), for the Billing page's
months tried: a month that failed or never finished has no batch, so without this record the
page could not say that it was tried, nor why it failed.

Written by the pipeline at three points: the sensor's start of a run (every poke: the run is
alive), a task's failure (beside its failure mail: the task, the error's first line with
phone numbers masked, and the mail's next step) and the month report (the run billed the
month). One row per Airflow run id, so a cleared run updates its row. Light imports only: the
failure callback is built when DAG files are parsed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cdr_billing.alerts import UNREACHABLE_STEP, TaskFailureMail, is_unreachable
from cdr_billing.config import BILLING_DAG_ID
from cdr_billing.months import context_month
from cdr_billing.privacy import mask_phone_numbers

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from cdr_billing.config import PipelineConfig

log = logging.getLogger(__name__)

RUNNING, FAILED, SUCCEEDED = "running", "failed", "success"
MAX_ERROR = 500  # characters of an error kept: its first line is the sentence that matters
MAX_HINT = 1000
# start_run makes a cleared run a new billing run by this suffix of its run id
CLEAR_SUFFIX = re.compile(r"#clear\d+$")


def error_sentence(error: object, limit: int = MAX_ERROR) -> str:
    """An error's first line, phone numbers masked, at most `limit` characters."""
    text = str(error or "").strip()
    first = text.splitlines()[0] if text else ""
    first = first or (type(error).__name__ if isinstance(error, BaseException) else "")
    masked = mask_phone_numbers(first or "no error message")
    return masked if len(masked) <= limit else masked[: limit - 1] + "…"


def airflow_run_id(billing_run_id: str) -> str:
    """The Airflow run id of a billing run's id (a cleared run's carries a #clearN suffix)."""
    return CLEAR_SUFFIX.sub("", billing_run_id)


@dataclass(frozen=True)
class Attempt:
    """What one record of a run says."""

    run_id: str
    billing_month: str
    state: str
    work_dir: str | None = None
    failed_task: str | None = None
    error: str | None = None
    hint: str | None = None


def record(engine: Engine, attempt: Attempt, now: datetime | None = None) -> None:
    """Insert the run's row or update it (started_at is kept: the run's first record)."""
    from sqlalchemy.dialects import postgresql, sqlite

    from cdr_billing.schema import billing_run

    moment = now or datetime.now(UTC)
    values = {
        "billing_month": attempt.billing_month,
        "dag_id": BILLING_DAG_ID,
        "state": attempt.state,
        "updated_at": moment,
        "failed_task": attempt.failed_task,
        "error": attempt.error,
        "hint": attempt.hint,
    }
    if attempt.work_dir is not None:
        values["work_dir"] = attempt.work_dir
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(billing_run).values(
        run_id=attempt.run_id, started_at=moment, **values
    )
    statement = statement.on_conflict_do_update(index_elements=["run_id"], set_=values)
    with engine.begin() as conn:
        conn.execute(statement)


def _billing_engine(config: PipelineConfig) -> Engine:
    from cdr_billing.database import billing_engine

    return billing_engine(config.billing.connection)


def record_start(config: PipelineConfig, billing_month: str, run_id: str, work_dir: str) -> None:
    """At each start (or poke) of the billing DAG's sensor: the run is running; outside a task of
    that DAG (tests, the prepaid DAG) nothing is recorded. A database error is logged, never
    raised: the record must not stop the billing."""
    from airflow.sdk import get_current_context

    try:
        dag_id = get_current_context()["ti"].dag_id
    except Exception:  # not inside an Airflow task
        return
    if dag_id != BILLING_DAG_ID:
        return
    _record_safely(config, Attempt(airflow_run_id(run_id), billing_month, RUNNING, work_dir))


def record_success(config: PipelineConfig, billing_month: str, run_id: str) -> None:
    """The month report is written: the run billed its month."""
    _record_safely(config, Attempt(airflow_run_id(run_id), billing_month, SUCCEEDED))


def _record_safely(config: PipelineConfig, attempt: Attempt) -> None:
    try:
        record(_billing_engine(config), attempt)
    except Exception:
        log.exception("could not record run %s of %s", attempt.run_id, attempt.billing_month)


def record_failure(config: PipelineConfig, context: Mapping[str, Any], hint: str) -> None:
    """A task of the billing DAG failed: its run, month, task, error sentence and next step.
    Logged, never raised, on any error (the failure mail must go out whatever happens here)."""
    try:
        ti = context["ti"]
        if ti.dag_id != BILLING_DAG_ID:
            return
        month = context_month(context, config.billing.timezone)
        if month is None:
            log.warning("no billing month for the failure of run %s", ti.run_id)
            return
        attempt = Attempt(
            run_id=ti.run_id,
            billing_month=month,
            state=FAILED,
            failed_task=ti.task_id,
            error=error_sentence(context.get("exception")),
            hint=hint[:MAX_HINT],
        )
        record(_billing_engine(config), attempt)
    except Exception:
        log.exception("could not record the failure of a billing run")


class RecordedFailureMail(TaskFailureMail):
    """A task's failure mail that also records the failure (record_failure) with the next step
    the mail gives; the mail is sent first and whatever the record meets."""

    def __init__(self, mail: TaskFailureMail, config: PipelineConfig) -> None:
        self.__dict__.update(mail.__dict__)  # the very mail, templates and recipients
        self.config = config

    def __call__(self, *args) -> None:
        try:
            super().__call__(*args)
        finally:
            if len(args) == 1 and isinstance(args[0], Mapping):
                error = args[0].get("exception")
                hint = UNREACHABLE_STEP if is_unreachable(error) else self.next_step
                record_failure(self.config, args[0], hint)
