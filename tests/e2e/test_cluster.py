"""The compose stack's topology without Docker (cdr_devkit.cluster): CeleryExecutor, a real
Redis, two Celery workers, PostgreSQL, sshd, SMTP. The demo month's file tasks spread over both
workers; a worker SIGKILLed in the middle of a bill task, a Redis restart between two tasks and
a scheduler restart mid-run each leave the month's lines equal to the independent oracle's.

How a bill task is held mid-task: the test locks the billing database's `entitlement` table
(ACCESS EXCLUSIVE); bill_cdr_file reads it after rating its file, so each bill task waits there
(seen in pg_locks) while its worker runs it. Each worker runs one task at a time, so the two
bill tasks that run at once (files_at_once) are one on each worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from cdr_billing.months import BillingMonth
from cdr_devkit.airflow_env import DAG_ID
from cdr_devkit.cluster import (
    LocalCluster,
    MonthRun,
    descendants,
    trigger_month,
    wait_for_run,
)
from cdr_devkit.sample_data import generate_month
from oracle import expected_lines

MONTH = BillingMonth(2026, 10)
TIMEOUT_SECONDS = 300
T = TypeVar("T")
# A dead worker's task is failed 15 s after its last heartbeat (Airflow: 300 s), looked for
# every 5 s; a stopped scheduler's tasks are adopted once it is 10 s silent.
FAST_FAULTS = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
}
WORKER_1, WORKER_2 = LocalCluster.worker(1), LocalCluster.worker(2)
FILE_TASKS = ("validate_cdr_file", "bill_cdr_file")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """The cluster with two workers of one task slot each, serving the sample month; once
    stopped, no process it started is left."""
    state = tmp_path_factory.mktemp("cluster")
    before = set(descendants(os.getpid()))
    with LocalCluster(state, workers=2, worker_concurrency=1, extra_env=FAST_FAULTS) as cluster:
        generate_month(cluster.sftp_home, MONTH)
        yield cluster
        started = set(descendants(os.getpid())) - before
    assert len(started) > 10
    _wait(
        "every process of the cluster to end",
        lambda: None if any(_running(pid) for pid in started) else True,
    )


@pytest.fixture(scope="module")
def metadata(cluster) -> Engine:
    return create_engine(cluster.metadata_url)


@pytest.fixture(scope="module")
def billing(cluster) -> Engine:
    return create_engine(cluster.billing_url)


@pytest.fixture(scope="module")
def expected(cluster) -> dict[tuple[str, str], Decimal]:
    lines = expected_lines(cluster.sftp_home, MONTH.year, MONTH.month)
    assert len(lines) == 16
    return lines


def _wait(what: str, probe: Callable[[], T | None], interval: float = 0.2) -> T:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


def _task_instances(metadata: Engine, run_id: str) -> list:
    with metadata.connect() as conn:
        return conn.execute(
            text(
                "SELECT task_id, map_index, state, try_number, hostname FROM task_instance "
                "WHERE dag_id = :dag AND run_id = :run"
            ),
            {"dag": DAG_ID, "run": run_id},
        ).all()


def _current_lines(billing: Engine) -> dict[tuple[str, str], Decimal]:
    with billing.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.customer_id, l.sequence_number, l.total_minor FROM billing_line l "
                "JOIN billing_batch b USING (batch_id) "
                "WHERE b.billing_month = :m AND b.status = 'current'"
            ),
            {"m": str(MONTH)},
        ).all()
    return {(customer, sequence): Decimal(total) / 100 for customer, sequence, total in rows}


def _assert_month_billed_once(billing: Engine, run_id: str, expected: dict) -> None:
    """The run's batch is the month's one current batch, its lines the oracle's, no call in it
    twice."""
    assert _current_lines(billing) == expected
    with billing.connect() as conn:
        current = conn.execute(
            text(
                "SELECT run_id FROM billing_batch WHERE billing_month = :m AND status = 'current'"
            ),
            {"m": str(MONTH)},
        ).all()
        calls, distinct, line_calls = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT (c.source, c.transaction_id)), "
                "(SELECT sum(call_count) FROM billing_line l WHERE l.batch_id = b.batch_id) "
                "FROM billed_call c JOIN billing_batch b USING (batch_id) "
                "WHERE b.billing_month = :m AND b.status = 'current' GROUP BY b.batch_id"
            ),
            {"m": str(MONTH)},
        ).one()
    assert [row.run_id for row in current] == [run_id]
    assert calls == distinct == line_calls


def _entitlement_waiters(billing: Engine) -> int:
    """Client sessions waiting for the lock the test holds on the entitlement table (asked in
    a transaction of its own: pg_stat_activity stays as first read within a transaction)."""
    with billing.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE c.relname = 'entitlement' AND NOT l.granted "
                "AND a.backend_type = 'client backend'"
            )
        ).scalar()


@contextmanager
def _bill_tasks_held(billing: Engine) -> Iterator[Connection]:
    """Every bill task that starts waits (mid-task) until the block ends."""
    with billing.connect() as conn, conn.begin():
        conn.execute(text("LOCK TABLE entitlement IN ACCESS EXCLUSIVE MODE"))
        yield conn


def _both_bill_tasks_waiting(metadata: Engine, billing: Engine, run_id: str) -> dict | None:
    """{worker: map index} once a bill task runs on each worker and both wait for the lock."""
    running = {
        ti.hostname: ti.map_index
        for ti in _task_instances(metadata, run_id)
        if ti.task_id == "bill_cdr_file" and ti.state == "running"
    }
    if set(running) == {WORKER_1, WORKER_2} and _entitlement_waiters(billing) >= 2:
        return running
    return None


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _finished(cluster: LocalCluster, run_id: str) -> MonthRun:
    run = wait_for_run(cluster, run_id, TIMEOUT_SECONDS)
    assert run.state == "success", run.task_instances
    return run


def test_the_month_spreads_its_file_tasks_over_both_workers(cluster, billing, expected):
    run = _finished(cluster, trigger_month(cluster, str(MONTH)))
    file_tasks = [ti for ti in run.task_instances if ti["task_id"] in FILE_TASKS]
    assert len(file_tasks) == 6
    assert {ti["hostname"] for ti in file_tasks} == {WORKER_1, WORKER_2}
    assert {ti["hostname"] for ti in run.task_instances} == {WORKER_1, WORKER_2}
    _assert_month_billed_once(billing, run.run_id, expected)


def test_a_worker_killed_in_a_bill_task_is_retried_on_the_other_worker(
    cluster, metadata, billing, expected
):
    try:
        with _bill_tasks_held(billing):
            run_id = trigger_month(cluster, str(MONTH))
            held = _wait(
                "a bill task waiting on each worker",
                lambda: _both_bill_tasks_waiting(metadata, billing, run_id),
            )
            killed_pids = cluster.kill_worker(1)
        killed = held[WORKER_1]
        # the task process too, though the Task SDK gave it a process group of its own
        assert len(killed_pids) >= 3
        _wait(
            "the killed processes to end",
            lambda: None if any(_running(pid) for pid in killed_pids) else True,
        )

        def retry_due() -> bool | None:
            with metadata.begin() as conn:
                changed = conn.execute(
                    text(
                        "UPDATE task_instance SET retry_delay_override = 0 "
                        "WHERE dag_id = :dag AND run_id = :run AND task_id = 'bill_cdr_file' "
                        "AND map_index = :index AND state = 'up_for_retry' AND try_number = 1"
                    ),
                    {"dag": DAG_ID, "run": run_id, "index": killed},
                ).rowcount
            return True if changed else None

        _wait("the killed try to be failed for its missing heartbeat", retry_due, interval=0.5)
        run = _finished(cluster, run_id)
    finally:
        cluster.restart(WORKER_1)
    retried = next(
        ti
        for ti in run.task_instances
        if ti["task_id"] == "bill_cdr_file" and ti["map_index"] == killed
    )
    assert (retried["try_number"], retried["hostname"]) == (2, WORKER_2)
    _assert_month_billed_once(billing, run_id, expected)


def test_redis_restarted_between_two_tasks(cluster, metadata, billing, expected):
    run_id = trigger_month(cluster, str(MONTH))

    def between_tasks() -> bool | None:
        states = {(ti.task_id, ti.state) for ti in _task_instances(metadata, run_id)}
        if ("dedupe_calls", "success") not in states:
            return None
        cluster.api.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": True})
        return True

    _wait("dedupe_calls", between_tasks)
    _wait(
        "no task queued or running",
        lambda: (
            None
            if {ti.state for ti in _task_instances(metadata, run_id)} & {"queued", "running"}
            else True
        ),
    )
    broker = cluster.servers["redis"]
    cluster.restart("redis")
    assert cluster.servers["redis"].process.pid != broker.process.pid
    assert cluster.servers["redis"].port == broker.port
    cluster.api.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    run = _finished(cluster, run_id)
    _assert_month_billed_once(billing, run.run_id, expected)


def test_the_scheduler_restarted_mid_run(cluster, metadata, billing, expected):
    with _bill_tasks_held(billing):
        run_id = trigger_month(cluster, str(MONTH))
        _wait(
            "a bill task waiting on each worker",
            lambda: _both_bill_tasks_waiting(metadata, billing, run_id),
        )
        old = cluster.processes["airflow-scheduler"].pid
        cluster.restart("airflow-scheduler")
        assert cluster.processes["airflow-scheduler"].pid != old
    run = _finished(cluster, run_id)
    scheduler_log = cluster.spec("airflow-scheduler").home / "process.log"
    assert "Adopted the following 2 tasks" in scheduler_log.read_text()
    bills = [ti for ti in run.task_instances if ti["task_id"] == "bill_cdr_file"]
    assert [ti["try_number"] for ti in bills] == [1, 1, 1]  # adopted, not run again
    _assert_month_billed_once(billing, run.run_id, expected)
