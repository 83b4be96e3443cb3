"""Airflow's own retry of a load that committed, on a running Airflow (LocalExecutor).

load_billing is killed (SIGKILL, as the OOM killer would) right after its transaction
committed, report_month right after it mailed finance; Airflow retries each (try 2). The
month report and both of its mails must still name the batch the run superseded, with
its changes, never "First batch of the month".

How the test holds each task at the moment it dies: the month's load lock is held by the
test until the task waits for it; then the test locks Airflow's xcom table, so the task,
its work done (batch committed, mail sent), blocks pushing its result, and is killed there.
The DAG waits 5 minutes before a retry; the test writes a retry delay of 0 s into the
failed try's `retry_delay_override`, the field Airflow 3.3's retry policies set, and
Airflow's scheduler then retries the task itself.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from cdr_billing import migrations
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.database import lock_key
from cdr_billing.load import Batch, load_month, month_lock
from cdr_billing.workdir import run_work_dir
from cdr_devkit.airflow_env import DAG_ID
from oracle import expected_lines

MONTH = "2026-10"
TIMEOUT_SECONDS = 400
T = TypeVar("T")
OLD_LINES = pd.DataFrame(  # the month's batch before the run: one line the run does not bill
    [("C-OLD", "1", "EUR", 1234, 1, 60)],
    columns=[
        "customer_id",
        "sequence_number",
        "currency",
        "total_minor",
        "call_count",
        "billed_seconds",
    ],
)


def _wait(what: str, probe: Callable[[], T | None], interval: float = 0.02) -> T:
    """Poll until probe returns something; fail after TIMEOUT_SECONDS."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


def _seed_old_batch(engine: Engine) -> int:
    migrations.upgrade(engine)
    shares = pd.DataFrame(
        columns=[
            "service_provider",
            "currency",
            "share_basis_points",
            "call_count",
            "billed_minor",
            "share_minor",
        ]
    )
    exceptions = pd.DataFrame(
        columns=["kind", "reason_code", "source_file", "source_row", "transaction_id", "detail"]
    )
    batch = Batch(OLD_LINES, OLD_LINES.assign(user_id="u1"), shares, [], exceptions)
    return load_month(engine, MONTH, f"before_retried_{MONTH}", batch, {"read": 1}).batch_id


class Run:
    """The backfill run of the month, seen through Airflow's metadata database."""

    def __init__(self, metadata: Engine) -> None:
        self.metadata = metadata
        self.run_id = _wait("the backfill run", self._run_id, interval=0.5)

    def _run_id(self) -> str | None:
        with self.metadata.connect() as conn:
            return conn.execute(
                text(
                    "SELECT run_id FROM dag_run "
                    "WHERE dag_id = :dag AND run_type = 'backfill' AND logical_date = :day"
                ),
                {
                    "dag": DAG_ID,
                    "day": pd.Timestamp(f"{MONTH}-01", tz="Europe/Stockholm").to_pydatetime(),
                },
            ).scalar()

    def task(self, task_id: str):
        """The task instance's (state, try_number, pid)."""
        with self.metadata.connect() as conn:
            return conn.execute(
                text(
                    "SELECT state, try_number, pid FROM task_instance "
                    "WHERE dag_id = :dag AND run_id = :run AND task_id = :task"
                ),
                {"dag": DAG_ID, "run": self.run_id, "task": task_id},
            ).first()

    def wait_for(self, task_id: str, state: str, try_number: int):
        """The task instance once its try is in the state."""

        def reached():
            ti = self.task(task_id)
            return (
                ti if ti is not None and (ti.state, ti.try_number) == (state, try_number) else None
            )

        return _wait(f"{task_id} try {try_number} {state}", reached)

    def retry_now(self, task_id: str) -> None:
        """Make the failed try's retry due now, as a retry policy's delay of 0 s would."""
        with self.metadata.begin() as conn:
            conn.execute(
                text(
                    "UPDATE task_instance SET retry_delay_override = 0 "
                    "WHERE dag_id = :dag AND run_id = :run "
                    "AND task_id = :task AND state = 'up_for_retry'"
                ),
                {"dag": DAG_ID, "run": self.run_id, "task": task_id},
            )

    def state(self) -> str | None:
        with self.metadata.connect() as conn:
            state = conn.execute(
                text("SELECT state FROM dag_run WHERE run_id = :run"), {"run": self.run_id}
            ).scalar()
        return state if state in ("success", "failed") else None


@contextmanager
def _xcom_held(metadata: Engine) -> Iterator[None]:
    """Lock Airflow's xcom table: a task that finishes its work blocks pushing its result."""
    with metadata.connect() as conn, conn.begin():
        conn.execute(text("LOCK TABLE xcom IN EXCLUSIVE MODE"))
        yield


def _load_lock_waiter(billing: Connection) -> bool | None:
    """True once a load waits for the month's load lock (which the test holds)."""
    waiting = billing.execute(
        text(
            "SELECT count(*) FROM pg_locks "
            "WHERE locktype = 'advisory' AND NOT granted AND objid = :key "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"key": lock_key(month_lock(MONTH))},
    ).scalar()
    return True if waiting else None


def _month_report_mails(maildir: Path, before: set[Path]) -> list[Message]:
    mails = [
        message_from_bytes(p.read_bytes()) for p in sorted(set(maildir.glob("*.eml")) - before)
    ]
    return [m for m in mails if m["Subject"].startswith(f"[CDR billing] Month report {MONTH}")]


def _config_of(airflow) -> PipelineConfig:
    """The pipeline config as the running Airflow reads it (work_root under its AIRFLOW_HOME)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_HOME", airflow.env["AIRFLOW_HOME"])
        return load_config()


def _body(mail: Message) -> str:
    part = mail.get_payload(0) if mail.is_multipart() else mail
    return part.get_payload(decode=True).decode()


def test_a_load_and_a_report_retried_by_airflow_after_their_work_tell_the_superseded_batch(
    running_airflow, postgres, services, sftp_root
):
    billing = create_engine(postgres.url_of("billing_ui"), isolation_level="AUTOCOMMIT")
    metadata = create_engine(postgres.url_of("airflow_metadata"))
    old_batch = _seed_old_batch(billing)
    mails_before = set(services.maildir.glob("*.eml"))
    running_airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    with billing.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": lock_key(month_lock(MONTH))})
        running_airflow.airflow(
            "backfill",
            "create",
            "--dag-id",
            DAG_ID,
            "--from-date",
            f"{MONTH}-01",
            "--to-date",
            f"{MONTH}-31",
        )
        run = Run(metadata)
        load_try = run.wait_for("load_billing", "running", 1)
        _wait("load_billing to wait for the month's lock", lambda: _load_lock_waiter(lock))

        def committed() -> bool:
            with billing.connect() as conn:
                found = conn.execute(
                    text("SELECT 1 FROM billing_batch WHERE run_id = :run"), {"run": run.run_id}
                ).first()
            return found is not None

        with _xcom_held(metadata):
            lock.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(month_lock(MONTH))}
            )
            _wait("load_billing's commit", lambda: committed() or None)
            os.kill(load_try.pid, signal.SIGKILL)
    run.wait_for("load_billing", "up_for_retry", 1)
    run.retry_now("load_billing")
    run.wait_for("load_billing", "success", 2)

    with _xcom_held(metadata):
        report_try = run.wait_for("report_month", "running", 1)
        _wait(
            "the first month report mail",
            lambda: _month_report_mails(services.maildir, mails_before) or None,
        )
        os.kill(report_try.pid, signal.SIGKILL)
    run.wait_for("report_month", "up_for_retry", 1)
    run.retry_now("report_month")
    assert _wait("the run's end", run.state, interval=1) == "success"
    assert (run.task("load_billing").try_number, run.task("report_month").try_number) == (2, 2)

    with billing.connect() as conn:
        batches = conn.execute(
            text(
                "SELECT run_id, status, supersedes_batch_id FROM billing_batch "
                "WHERE billing_month = :m ORDER BY batch_id"
            ),
            {"m": MONTH},
        ).all()
    assert [tuple(b) for b in batches] == [
        (f"before_retried_{MONTH}", "superseded", None),
        (run.run_id, "current", old_batch),
    ]
    first, retried = _month_report_mails(services.maildir, mails_before)
    assert (retried["Subject"], _body(retried)) == (first["Subject"], _body(first))
    changed = (
        len(expected_lines(sftp_root, 2026, 10)) + 1
    )  # every line is new, and the old batch's line is gone
    assert f"Changes from the superseded batch</h3><p>{changed} lines changed." in _body(first)
    assert "First batch of the month" not in _body(first)
    month_report = json.loads(
        (run_work_dir(_config_of(running_airflow), MONTH, run.run_id) / "report.json").read_text()
    )
    assert month_report["batch"]["superseded_batch_id"] == old_batch
    assert len(month_report["changes"]) == changed
    with metadata.connect() as conn:
        mapped = conn.execute(
            text(
                "SELECT task_id, rendered_map_index FROM task_instance "
                "WHERE run_id = :run AND map_index >= 0"
            ),
            {"run": run.run_id},
        ).all()
    names = {f["name"] for f in month_report["files"]}
    assert len(names) == 3  # the UI names each mapped task by its CDR file, not 0, 1, 2
    assert {tuple(m) for m in mapped} == {
        (task_id, name) for task_id in ("validate_cdr_file", "bill_cdr_file") for name in names
    }
