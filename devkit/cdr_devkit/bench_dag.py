"""`make bench-dag`: the whole DAG on the benchmark's month, SFTP and billing load included.

Serves the month `make bench-pipeline` generates (cached in `.bench/pipeline/`) from two local
SFTP servers (OpenSSH's sshd, as providers run, or `--sftp python`: the devkit's asyncssh
server), bills it with a pipeline config that has only the carrier source, loads it into a
throwaway PostgreSQL (`--sqlite`: a SQLite file, as the demo) and prints each task's wall time,
the run's, its peak RSS and counts. By default the DAG runs once in this process (`dag.test`:
the tasks one after another, mapped ones too); `--scheduler` triggers it on a running Airflow
(api-server, scheduler with the LocalExecutor, dag-processor; metadata in PostgreSQL), where
mapped tasks run side by side in their own processes, as in production. Peak memory is the
summed RSS of the processes (as always reported) and their summed PSS (a page shared by forks
counted once). Everything else lives under `.bench/dag/`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import yaml

from cdr_devkit.airflow_env import DAG_ID, PROJECT_ROOT, airflow_settings, migrate
from cdr_devkit.airflow_server import RunningAirflow
from cdr_devkit.bench_data import BenchMonth, ensure_month
from cdr_devkit.bench_pipeline import SOURCE, add_month_arguments
from cdr_devkit.memory import (
    PeakSampler,
    peak_rss_mib,
    process_tree_pss_mib,
    process_tree_rss_mib,
    reset_peak_rss,
)
from cdr_devkit.postgres import LocalPostgres
from cdr_devkit.services import (
    LocalServices,
    connection_env,
    smtp_connection,
    stop_on_sigterm,
)

DAG_PARSE_TIMEOUT_SECONDS = 120
RUNNERS = {
    "dag.test": "tasks one after another (dag.test)",
    "scheduler": "triggered on a running Airflow (LocalExecutor; mapped tasks side by side)",
}
DEFAULT_ROOT = PROJECT_ROOT / ".bench" / "dag"
SFTP_SERVERS = {
    "openssh": "OpenSSH's sshd (what providers run)",
    "python": "the devkit's asyncssh server",
}


class DagRunFacts(NamedTuple):
    """What one DAG run did: its facts (run id, state, wall time, memory) and its task
    instances (task id, state, start, end)."""

    facts: dict
    task_instances: list[dict]


class RunEnd(NamedTuple):
    """How a watched run ended, and the peak memory of Airflow's processes until then."""

    state: str
    peak_rss_mib: float
    peak_pss_mib: float


SHIPPED_CONFIG = PROJECT_ROOT / "include" / "config" / "pipeline.yaml"


def serve_month(month: BenchMonth, sftp_root: Path) -> None:
    """The month's files in the SFTP layout of the shipped config (hard links where possible)."""
    shutil.rmtree(sftp_root, ignore_errors=True)
    targets = [(f, sftp_root / "cdr" / SOURCE / f.name) for f in month.cdr_files]
    targets += [(f, sftp_root / "reference" / f.name) for f in (month.tariff, month.entitlements)]
    for source, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system
            shutil.copyfile(source, target)


def write_config(root: Path, files_at_once: int | None = None, remote_root: str = "") -> Path:
    """The shipped pipeline config with only the carrier source, its files under `root`
    (files_at_once: the config's own unless given; remote directories under `remote_root`,
    for sshd, which serves absolute paths)."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    if files_at_once:
        config["files_at_once"] = files_at_once
    config["sources"] = [source for source in config["sources"] if source["name"] == SOURCE]
    for files in (*config["sources"], *config["reference"].values()):
        files["remote_dir"] = remote_root + files["remote_dir"]
    config["profiles_file"] = str(
        SHIPPED_CONFIG.with_name(config.get("profiles_file", "profiles.yaml"))
    )
    config.update(work_root=str(root / "work"), archive_root=str(root / "archive"))
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def task_seconds(instances: list[dict]) -> list[dict]:
    """Each task of the run (instances: task_id, state, start and end as datetimes), mapped
    instances summed: instances, the most at once, state(s), seconds summed, the slowest, first
    start and last end (seconds after the run's first task started)."""
    run_start = min((ti["start"] for ti in instances), default=None)
    by_task: dict[str, list[dict]] = {}
    for ti in sorted(instances, key=lambda ti: ti["start"]):
        by_task.setdefault(ti["task_id"], []).append(ti)
    tasks = []
    for task, group in by_task.items():
        seconds = [(ti["end"] - ti["start"]).total_seconds() for ti in group]
        tasks.append(
            {
                "task": task,
                "instances": len(group),
                "states": sorted({str(ti["state"]) for ti in group}),
                "seconds": sum(seconds),
                "slowest": max(seconds),
                "first_start": (group[0]["start"] - run_start).total_seconds(),
                "last_end": (max(ti["end"] for ti in group) - run_start).total_seconds(),
                "most_at_once": most_at_once(group),
            }
        )
    return tasks


def most_at_once(instances: list[dict]) -> int:
    """The most instances running at the same moment (one ending as another starts: not both)."""
    running = most = 0
    for _, change in sorted(
        [(ti["start"], 1) for ti in instances] + [(ti["end"], -1) for ti in instances]
    ):
        running += change
        most = max(most, running)
    return most


def _airflow_rss_mib(airflow: RunningAirflow) -> float:
    """The resident memory of all of Airflow's processes (the components, their workers and
    tasks)."""
    return sum(process_tree_rss_mib(process.pid) for process in airflow.processes.values())


def _airflow_pss_mib(airflow: RunningAirflow) -> float:
    """The proportional memory of all of Airflow's processes (shared pages counted once)."""
    return sum(process_tree_pss_mib(process.pid) for process in airflow.processes.values())


def _run_in_process(month: BenchMonth) -> DagRunFacts:
    """The DAG run by `dag.test` in this process: its facts and task instances."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    from cdr_devkit.airflow_env import load_dag, run_dag

    reset_peak_rss()  # the run's peak, not the month's generation in this process
    started = time.perf_counter()
    with PeakSampler(lambda: process_tree_pss_mib(os.getpid())) as pss:
        dag_run = run_dag(
            load_dag(), logical_date=None, run_conf={"billing_month": str(month.month)}
        )
    wall = time.perf_counter() - started
    with create_session() as session:
        instances = [
            {"task_id": ti.task_id, "state": ti.state, "start": ti.start_date, "end": ti.end_date}
            for ti in session.query(TaskInstance).filter(TaskInstance.run_id == dag_run.run_id)
        ]
    facts = {
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "wall_seconds": wall,
        "peak_rss_mib": peak_rss_mib(),
        "peak_pss_mib": pss.peak,
    }
    return DagRunFacts(facts, instances)


def _watch_run(airflow: RunningAirflow, run_id: str) -> RunEnd:
    """Poll the run until it ends (or a task waits for a retry: failed); its state and the peak
    RSS of Airflow's process tree (scheduler with its LocalExecutor workers and tasks, api-server,
    dag-processor), and their PSS, sampled every 0.2 s."""
    peak, peak_pss, polled = 0.0, 0.0, 0.0
    while True:
        peak = max(peak, _airflow_rss_mib(airflow))
        peak_pss = max(peak_pss, _airflow_pss_mib(airflow))
        if time.monotonic() - polled >= 1:
            polled = time.monotonic()
            state = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            retrying = airflow.api(
                "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?state=up_for_retry"
            )
            if state in ("success", "failed") or retrying["total_entries"]:
                return RunEnd("failed" if retrying["total_entries"] else state, peak, peak_pss)
        time.sleep(0.2)


def _run_scheduled(month: BenchMonth, home: Path, env: dict[str, str]) -> DagRunFacts:
    """The DAG triggered on a running Airflow (LocalExecutor): its facts and task instances."""
    migrate(home, env)
    with RunningAirflow(home, env) as airflow:
        airflow.wait_for_dag(DAG_ID, DAG_PARSE_TIMEOUT_SECONDS)
        airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        idle, idle_pss = _airflow_rss_mib(airflow), _airflow_pss_mib(airflow)
        started = time.perf_counter()
        conf = {"billing_month": str(month.month)}
        run_id = airflow.api(
            "POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf}
        )["dag_run_id"]
        end = _watch_run(airflow, run_id)
        wall = time.perf_counter() - started
        answer = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=1000")
    instances = [
        {
            "task_id": ti["task_id"],
            "state": ti["state"],
            "start": datetime.fromisoformat(ti["start_date"]),
            "end": datetime.fromisoformat(ti["end_date"]),
        }
        for ti in answer["task_instances"]
        if ti["start_date"] and ti["end_date"]
    ]
    facts = {
        "run_id": run_id,
        "state": end.state,
        "wall_seconds": wall,
        "peak_rss_mib": end.peak_rss_mib,
        "peak_pss_mib": end.peak_pss_mib,
        "idle_rss_mib": idle,
        "idle_pss_mib": idle_pss,
    }
    return DagRunFacts(facts, instances)


def run(
    month: BenchMonth,
    root: Path,
    sqlite: bool,
    scheduler: bool = False,
    files_at_once: int | None = None,
    sftp: str = "openssh",
) -> dict:
    """Serve the month (from `sftp`: openssh or python), run the DAG once, return what happened
    (also kept in root/bench_dag.json)."""
    for folder in ("work", "archive", "sftp", "mail", "airflow"):
        shutil.rmtree(root / folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    serve_month(month, root / "sftp")
    remote_root = str(root / "sftp") if sftp == "openssh" else ""  # sshd: absolute paths
    os.environ["CDR_BILLING_CONFIG"] = str(write_config(root, files_at_once, remote_root))
    # The served files are complete: no stability wait in the timing.
    os.environ["CDR_BILLING_STABLE_SECONDS"] = "0"
    os.environ.update(airflow_settings(root / "airflow", log_level="WARNING"))
    with ExitStack() as stack:
        services = stack.enter_context(LocalServices(root / "services"))
        servers = [
            services.start_openssh(name)
            if sftp == "openssh"
            else services.start_sftp(name, root / "sftp")
            for name in ("sftp_primary", "sftp_secondary")
        ]
        postgres = None if sqlite and not scheduler else stack.enter_context(LocalPostgres())
        if sqlite:
            (root / "billing.sqlite").unlink(missing_ok=True)
            billing_db = {"conn_type": "sqlite", "host": str(root / "billing.sqlite")}
        else:
            billing_db = postgres.connection()
        connections = {
            "cdr_sftp_primary": servers[0].connection(services.client_key),
            "cdr_sftp_secondary": servers[1].connection(services.client_key),
            "billing_db": billing_db,
            "smtp_default": smtp_connection(services.start_smtp(root / "mail").port),
        }
        os.environ.update(connection_env(connections))
        if scheduler:
            env = {
                **os.environ,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url_of(
                    postgres.create_database("airflow_metadata")
                ),
                # no scheduled run beside the triggered one
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            }
            dag_run = _run_scheduled(month, root / "airflow", env)
        else:
            migrate(root / "airflow")
            dag_run = _run_in_process(month)
    facts = {
        "calls": month.rows,
        "files": len(month.cdr_files),
        "billing_db": "sqlite" if sqlite else "postgresql",
        "runner": "scheduler" if scheduler else "dag.test",
        "sftp": sftp,
        **dag_run.facts,
        "tasks": task_seconds(dag_run.task_instances),
    }
    if facts["state"] == "success":
        from cdr_billing.config import load_config
        from cdr_billing.workdir import run_work_dir

        work_dir = run_work_dir(load_config(), str(month.month), facts["run_id"])
        facts.update(
            counts=json.loads((work_dir / "report.json").read_text())["counts"],
            lines=str(work_dir / "lines.parquet"),
        )
    (root / "bench_dag.json").write_text(json.dumps(facts, indent=1), encoding="utf-8")
    return facts


def format_report(facts: dict) -> str:
    """The task table and the run's totals."""
    out = [
        f"The DAG on {facts['calls']:,} CDR rows in {facts['files']} files, "
        f"billing DB {facts['billing_db']}, SFTP {SFTP_SERVERS[facts['sftp']]}, "
        + RUNNERS[facts["runner"]],
        f"  {'task':<22}{'instances':>10}{'at once':>8}{'seconds':>10}"
        f"{'slowest':>10}{'from':>8}{'to':>8}  state",
    ]
    for task in facts["tasks"]:
        states = ",".join(task["states"])
        out.append(
            f"  {task['task']:<22}{task['instances']:>10}{task['most_at_once']:>8}"
            f"{task['seconds']:>10.1f}{task['slowest']:>10.1f}"
            f"{task['first_start']:>8.1f}{task['last_end']:>8.1f}  {states}"
        )
    idle = (
        f" (Airflow idle before the run: RSS {facts['idle_rss_mib']:,.0f} MiB, "
        f"PSS {facts['idle_pss_mib']:,.0f} MiB)"
        if "idle_rss_mib" in facts
        else ""
    )
    out.append(
        f"run: {facts['state']}, {facts['wall_seconds']:.1f} s wall, "
        f"peak RSS {facts['peak_rss_mib']:,.0f} MiB, peak PSS {facts['peak_pss_mib']:,.0f} MiB"
        f"{idle}"
    )
    if "counts" in facts:
        out.append(
            "counts: " + ", ".join(f"{key} {value:,}" for key, value in facts["counts"].items())
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_month_arguments(parser)
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="where the run's servers, Airflow and files live",
    )
    parser.add_argument(
        "--sqlite", action="store_true", help="a SQLite billing database instead of PostgreSQL"
    )
    parser.add_argument(
        "--scheduler",
        action="store_true",
        help="trigger the DAG on a running Airflow (LocalExecutor)",
    )
    parser.add_argument(
        "--sftp",
        choices=sorted(SFTP_SERVERS),
        default="openssh",
        help="the SFTP servers the month is served from (default openssh, as providers run)",
    )
    parser.add_argument(
        "--files-at-once",
        type=int,
        help="the config's files_at_once (default: the shipped config's)",
    )
    args = parser.parse_args(argv)
    stop_on_sigterm()
    month = ensure_month(args.base, args.calls, args.files, args.seed)
    facts = run(
        month, args.root.resolve(), args.sqlite, args.scheduler, args.files_at_once, args.sftp
    )
    print(format_report(facts))
    return 0 if facts["state"] == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
