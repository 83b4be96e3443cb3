"""`make bench-dag`: the whole DAG on the benchmark's month, SFTP and billing load included.

Serves the month `make bench-pipeline` generates (cached in `.bench/pipeline/`) from two local
SFTP servers (OpenSSH's sshd, as providers run, or `--sftp python`: the devkit's asyncssh
server), bills it with a pipeline config that has only the carrier source, loads it into a
throwaway PostgreSQL (`--sqlite`: a SQLite file, as the demo) and prints each task's wall time,
the run's, its peak RSS and counts. By default the DAG runs once in this process (`dag.test`:
the tasks one after another, mapped ones too); `--scheduler` triggers it on a running Airflow
(api-server, scheduler with the LocalExecutor, dag-processor; metadata in PostgreSQL), where
mapped tasks run side by side in their own processes, as in production; `--cluster` triggers it
on the compose stack run as local processes (`cdr_devkit.cluster`: CeleryExecutor, Redis, two
workers of two task slots), with its state under `.bench/dag-cluster/cluster/`. Peak memory is
the summed RSS of Airflow's processes (as always reported) and their summed PSS (a page shared
by forks counted once); on the cluster its servers (PostgreSQL, Redis, sshd, SMTP) apart.
Everything else lives under `.bench/dag/` (`.bench/dag-cluster/` with `--cluster`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import yaml

from cdr_devkit.airflow_env import DAG_ID, PROJECT_ROOT, airflow_settings, migrate
from cdr_devkit.airflow_server import AirflowClient, RunningAirflow
from cdr_devkit.bench_data import BenchMonth, ensure_month
from cdr_devkit.bench_pipeline import SOURCE, add_month_arguments
from cdr_devkit.cluster import AIRFLOW, WORKER, LocalCluster, host_path
from cdr_devkit.memory import (
    PeakSampler,
    peak_rss_mib,
    process_pss_mib,
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
    "cluster": "triggered on the local compose cluster (CeleryExecutor, Redis, Celery workers)",
}
DEFAULT_ROOT = PROJECT_ROOT / ".bench" / "dag"
# Never the project's .cluster/ (make cluster's state) nor a test's directory.
DEFAULT_CLUSTER_ROOT = PROJECT_ROOT / ".bench" / "dag-cluster"
CLUSTER_WORKERS, CLUSTER_SLOTS = 2, 2  # make cluster's defaults: 4 slots, as parallelism 4
# The LocalExecutor bench's scheduler settings (RunningAirflow), so only the executor differs.
CLUSTER_SCHEDULER_SETTINGS = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__CORE__PARALLELISM": str(CLUSTER_WORKERS * CLUSTER_SLOTS),
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
}
# The cluster's named volumes the bench empties before it starts (the month's copies).
CLUSTER_VOLUMES = ("cdr-inbox", "cdr-reference", "cdr-billing-work", "cdr-billing-archive")
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
    load_average: tuple[float, float]  # the machine's 1-minute load average: mean, max


class ServerMemory(NamedTuple):
    """Peak memory of one kind of the cluster's servers (all its processes summed)."""

    processes: int
    peak_rss_mib: float
    peak_pss_mib: float


SHIPPED_CONFIG = PROJECT_ROOT / "include" / "config" / "pipeline.yaml"


def serve_month(month: BenchMonth, sftp_root: Path, fresh: bool = True) -> None:
    """The month's files in the SFTP layout of the shipped config (hard links where possible;
    fresh: sftp_root emptied first, not when its directories are the cluster's volume links)."""
    if fresh:
        shutil.rmtree(sftp_root, ignore_errors=True)
    targets = [(f, sftp_root / "cdr" / SOURCE / f.name) for f in month.cdr_files]
    targets += [(f, sftp_root / "reference" / f.name) for f in (month.tariff, month.entitlements)]
    for source, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system
            shutil.copyfile(source, target)


def write_config(
    root: Path,
    files_at_once: int | None = None,
    remote_root: str = "",
    data_roots: tuple[Path, Path] | None = None,
) -> Path:
    """The shipped pipeline config with only the carrier source, its files under `root`
    (files_at_once: the config's own unless given; remote directories under `remote_root`,
    for sshd, which serves absolute paths; data_roots: the work and archive roots, when not
    root/work and root/archive)."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    if files_at_once:
        config["files_at_once"] = files_at_once
    config["sources"] = [source for source in config["sources"] if source["name"] == SOURCE]
    for files in (*config["sources"], *config["reference"].values()):
        files["remote_dir"] = remote_root + files["remote_dir"]
    config["profiles_file"] = str(
        SHIPPED_CONFIG.with_name(config.get("profiles_file", "profiles.yaml"))
    )
    work_root, archive_root = data_roots or (root / "work", root / "archive")
    config.update(work_root=str(work_root), archive_root=str(archive_root))
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
        nodes = {}
        for ti in group:
            if ti.get("hostname"):
                nodes[ti["hostname"]] = nodes.get(ti["hostname"], 0) + 1
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
                **({"nodes": dict(sorted(nodes.items()))} if nodes else {}),
            }
        )
    return tasks


def idle_seconds(instances: list[dict]) -> float:
    """Seconds between the run's first task start and last task end when no task ran (the
    scheduler's and executor's hand-offs: queueing, a new process, its start-up)."""
    idle, busy_until = 0.0, None
    for ti in sorted(instances, key=lambda ti: ti["start"]):
        if busy_until is not None and ti["start"] > busy_until:
            idle += (ti["start"] - busy_until).total_seconds()
        busy_until = ti["end"] if busy_until is None else max(busy_until, ti["end"])
    return idle


def most_at_once(instances: list[dict]) -> int:
    """The most instances running at the same moment (one ending as another starts: not both)."""
    running = most = 0
    for _, change in sorted(
        [(ti["start"], 1) for ti in instances] + [(ti["end"], -1) for ti in instances]
    ):
        running += change
        most = max(most, running)
    return most


def _airflow_rss_mib(processes: Mapping[str, subprocess.Popen]) -> float:
    """The resident memory of all of Airflow's processes (the components, their workers and
    tasks)."""
    return sum(process_tree_rss_mib(process.pid) for process in processes.values())


def _airflow_pss_mib(processes: Mapping[str, subprocess.Popen]) -> float:
    """The proportional memory of all of Airflow's processes (shared pages counted once)."""
    return sum(process_tree_pss_mib(process.pid) for process in processes.values())


def _run_in_process(month: BenchMonth) -> DagRunFacts:
    """The DAG run by `dag.test` in this process: its facts and task instances."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    from cdr_devkit.airflow_env import load_dag, run_dag

    reset_peak_rss()  # the run's peak, not the month's generation in this process
    started = time.perf_counter()
    # this process alone, as its peak RSS (VmHWM): the SFTP servers it started are children
    with PeakSampler(process_pss_mib) as pss:
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


def _watch_run(
    airflow: AirflowClient, processes: Mapping[str, subprocess.Popen], run_id: str
) -> RunEnd:
    """Poll the run until it ends (or a task waits for a retry: failed); its state and the peak
    RSS of Airflow's process trees (LocalExecutor: the scheduler with its workers and tasks,
    api-server, dag-processor; the cluster: also the triggerer and the Celery workers with their
    tasks), and their PSS, sampled every 0.2 s; the machine's load average every second (a
    shared machine's other work shows there)."""
    peak, peak_pss, polled, loads = 0.0, 0.0, 0.0, []
    while True:
        peak = max(peak, _airflow_rss_mib(processes))
        peak_pss = max(peak_pss, _airflow_pss_mib(processes))
        if time.monotonic() - polled >= 1:
            polled = time.monotonic()
            loads.append(os.getloadavg()[0])
            state = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            retrying = airflow.api(
                "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?state=up_for_retry"
            )
            if state in ("success", "failed") or retrying["total_entries"]:
                load = (sum(loads) / len(loads), max(loads))
                ended = "failed" if retrying["total_entries"] else state
                return RunEnd(ended, peak, peak_pss, load)
        time.sleep(0.2)


def _run_scheduled(month: BenchMonth, home: Path, env: dict[str, str]) -> DagRunFacts:
    """The DAG triggered on a running Airflow (LocalExecutor): its facts and task instances."""
    migrate(home, env)
    with RunningAirflow(home, env) as airflow:
        airflow.wait_for_dag(DAG_ID, DAG_PARSE_TIMEOUT_SECONDS)
        airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        return _month_run(airflow, airflow.processes, month)


def _month_run(
    client: AirflowClient,
    processes: Mapping[str, subprocess.Popen],
    month: BenchMonth,
    nodes: bool = False,
) -> DagRunFacts:
    """The month triggered once and watched to its end: wall time, peak and idle memory of
    Airflow's processes, the task instances (nodes: with the host of each)."""
    idle, idle_pss = _airflow_rss_mib(processes), _airflow_pss_mib(processes)
    started = time.perf_counter()
    run_id = _trigger(client, month)
    end = _watch_run(client, processes, run_id)
    wall = time.perf_counter() - started
    facts = {
        "run_id": run_id,
        "state": end.state,
        "wall_seconds": wall,
        "peak_rss_mib": end.peak_rss_mib,
        "peak_pss_mib": end.peak_pss_mib,
        "load_average": end.load_average,
        "idle_rss_mib": idle,
        "idle_pss_mib": idle_pss,
    }
    return DagRunFacts(facts, _task_instances(client, run_id, nodes))


def _trigger(airflow: AirflowClient, month: BenchMonth) -> str:
    """A run of the month through the REST API (the DAG unpaused, no scheduled run beside it);
    its run id."""
    conf = {"billing_month": str(month.month)}
    answer = airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    return answer["dag_run_id"]


def _task_instances(airflow: AirflowClient, run_id: str, nodes: bool = False) -> list[dict]:
    """The run's finished task instances from the REST API (nodes: with the host that ran each,
    the cluster's node name)."""
    answer = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=1000")
    return [
        {
            "task_id": ti["task_id"],
            "state": ti["state"],
            "start": datetime.fromisoformat(ti["start_date"]),
            "end": datetime.fromisoformat(ti["end_date"]),
            **({"hostname": ti["hostname"]} if nodes else {}),
        }
        for ti in answer["task_instances"]
        if ti["start_date"] and ti["end_date"]
    ]


def cluster_airflow_processes(cluster: LocalCluster) -> dict[str, subprocess.Popen]:
    """The cluster's Airflow processes by node: api-server, scheduler, dag-processor, triggerer,
    the Celery workers (flower with its profile); not the billing portal, a web app of its own."""
    return {
        node: process
        for node, process in cluster.processes.items()
        if cluster.spec(node).kind in (AIRFLOW, WORKER)
    }


def cluster_server_pids(cluster: LocalCluster) -> dict[str, list[int]]:
    """The top process of each of the cluster's other processes by kind (PostgreSQL: each
    cluster's postmaster, from its pid file; Redis, sshd, SMTP: the devkit's processes; the
    billing portal)."""
    pids: dict[str, list[int]] = {}
    airflow = cluster_airflow_processes(cluster)
    for node, process in cluster.processes.items():
        if node not in airflow:
            pids.setdefault(node.removeprefix("billing-"), []).append(process.pid)
    for database in cluster.databases.values():
        postmaster = database.server.data / "postmaster.pid"
        pids.setdefault("postgresql", []).append(int(postmaster.read_text().split()[0]))
    for node, server in cluster.servers.items():
        kind = {"redis": "redis", "mailpit": "smtp"}.get(node, "sshd")
        pids.setdefault(kind, []).append(server.process.pid)
    return pids


def _tree_sum(measure: Callable[[int], float], pids: list[int]) -> Callable[[], float]:
    return lambda: sum(measure(pid) for pid in pids)


def _run_on_cluster(
    month: BenchMonth, root: Path, files_at_once: int | None
) -> tuple[DagRunFacts, dict[str, ServerMemory]]:
    """The DAG triggered on the local compose cluster (cdr_devkit.cluster, state in
    root/cluster): its facts and task instances (with the node of each), and the peak memory of
    its servers by kind (sampled every second, apart from Airflow's)."""
    state = root / "cluster"
    for volume in CLUSTER_VOLUMES:
        shutil.rmtree(host_path(volume, state), ignore_errors=True)
    data_roots = (host_path("cdr-billing-work", state), host_path("cdr-billing-archive", state))
    config = write_config(root, files_at_once, str(state / "sftp-home"), data_roots)
    os.environ["CDR_BILLING_CONFIG"] = str(config)  # this process reads the run's lines
    cluster = LocalCluster(
        state,
        workers=CLUSTER_WORKERS,
        worker_concurrency=CLUSTER_SLOTS,
        extra_env={"CDR_BILLING_CONFIG": str(config), **CLUSTER_SCHEDULER_SETTINGS},
    )
    with cluster, ExitStack() as samplers:
        serve_month(month, cluster.sftp_home, fresh=False)
        cluster.api.wait_for_dag(DAG_ID, DAG_PARSE_TIMEOUT_SECONDS)
        cluster.api.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        airflow = cluster_airflow_processes(cluster)
        server_pids = cluster_server_pids(cluster)
        peaks = {
            (kind, name): samplers.enter_context(
                PeakSampler(_tree_sum(measure, pids), every_seconds=1.0)
            )
            for kind, pids in server_pids.items()
            for name, measure in (("rss", process_tree_rss_mib), ("pss", process_tree_pss_mib))
        }
        dag_run = _month_run(cluster.api, airflow, month, nodes=True)
        dag_run.facts["airflow_processes"] = sorted(airflow)
    servers = {
        kind: ServerMemory(len(pids), peaks[kind, "rss"].peak, peaks[kind, "pss"].peak)
        for kind, pids in server_pids.items()
    }
    return dag_run, servers


def run_cluster(month: BenchMonth, root: Path, files_at_once: int | None = None) -> dict:
    """Run the DAG once on the local cluster (served by its sshd, billed into its billing-db),
    return what happened (also kept in root/bench_dag.json)."""
    root.mkdir(parents=True, exist_ok=True)
    dag_run, servers = _run_on_cluster(month, root, files_at_once)
    facts = {
        "calls": month.rows,
        "files": len(month.cdr_files),
        "billing_db": "postgresql",
        "runner": "cluster",
        "sftp": "openssh",
        "workers": CLUSTER_WORKERS,
        "worker_slots": CLUSTER_SLOTS,
        **dag_run.facts,
        "servers": {kind: memory._asdict() for kind, memory in servers.items()},
        "tasks": task_seconds(dag_run.task_instances),
        "idle_between_tasks_seconds": idle_seconds(dag_run.task_instances),
    }
    return _finish(facts, month, root)


def _finish(facts: dict, month: BenchMonth, root: Path) -> dict:
    """The run's counts and lines file (when it succeeded) added; facts kept in
    root/bench_dag.json."""
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
        "idle_between_tasks_seconds": idle_seconds(dag_run.task_instances),
    }
    return _finish(facts, month, root)


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
        nodes = " ".join(f"{node}:{count}" for node, count in task.get("nodes", {}).items())
        out.append(
            f"  {task['task']:<22}{task['instances']:>10}{task['most_at_once']:>8}"
            f"{task['seconds']:>10.1f}{task['slowest']:>10.1f}"
            f"{task['first_start']:>8.1f}{task['last_end']:>8.1f}  {states}"
            + (f"  {nodes}" if nodes else "")
        )
    if facts["tasks"]:
        last_end = max(task["last_end"] for task in facts["tasks"])
        out.append(
            f"between tasks: {facts['idle_between_tasks_seconds']:.1f} s with no task running, "
            f"{facts['wall_seconds'] - last_end:.1f} s of the wall time before the first task "
            "started and after the last ended (trigger, queueing, polling)"
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
    if "load_average" in facts:
        mean, most = facts["load_average"]
        out.append(f"the machine's load average during the run: mean {mean:.1f}, max {most:.1f}")
    if "airflow_processes" in facts:
        out.append(
            "Airflow's processes counted (each with its children): "
            + ", ".join(facts["airflow_processes"])
        )
    if "servers" in facts:
        out.append(
            "not Airflow, apart (peak, summed over each kind's processes): "
            + "; ".join(
                f"{kind} ({memory['processes']}) RSS {memory['peak_rss_mib']:,.0f} MiB, "
                f"PSS {memory['peak_pss_mib']:,.0f} MiB"
                for kind, memory in facts["servers"].items()
            )
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
        help=(
            "where the run's servers, Airflow and files live (default "
            f"{DEFAULT_ROOT.relative_to(PROJECT_ROOT)})"
        ),
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
        "--cluster",
        action="store_true",
        help=(
            "trigger the DAG on the local compose cluster (CeleryExecutor, Redis, "
            f"{CLUSTER_WORKERS} workers of {CLUSTER_SLOTS} slots; default root "
            f"{DEFAULT_CLUSTER_ROOT.relative_to(PROJECT_ROOT)})"
        ),
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
    if args.cluster and (args.scheduler or args.sqlite or args.sftp != "openssh"):
        parser.error("--cluster runs its own PostgreSQL and sshd: no --scheduler, --sqlite, --sftp")
    stop_on_sigterm()
    month = ensure_month(args.base, args.calls, args.files, args.seed)
    if args.cluster:
        root = (args.root or DEFAULT_CLUSTER_ROOT).resolve()
        facts = run_cluster(month, root, args.files_at_once)
    else:
        root = (args.root or DEFAULT_ROOT).resolve()
        facts = run(month, root, args.sqlite, args.scheduler, args.files_at_once, args.sftp)
    print(format_report(facts))
    return 0 if facts["state"] == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
