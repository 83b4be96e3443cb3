"""`make bench-dag`: the whole DAG on the benchmark's month, SFTP and billing load included.

Serves the month `make bench-pipeline` generates (cached in `.bench/pipeline/`) from two local
SFTP servers, bills it with a pipeline config that has only the carrier source, loads it into a
throwaway PostgreSQL (`--sqlite`: a SQLite file, as the demo), runs the DAG once in this process
(`dag.test`: the tasks one after another, mapped ones too) and prints each task's wall time, the
run's, its peak RSS and counts. Everything else lives under `.bench/dag/`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import yaml

from cdr_devkit.airflow_env import PROJECT_ROOT, airflow_settings, migrate
from cdr_devkit.bench_data import BenchMonth, ensure_month
from cdr_devkit.bench_pipeline import SOURCE, add_month_arguments
from cdr_devkit.services import LocalServices, connection_env, smtp_connection, stop_on_sigterm

DEFAULT_ROOT = PROJECT_ROOT / ".bench" / "dag"
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


def write_config(root: Path) -> Path:
    """The shipped pipeline config with only the carrier source, its files under `root`."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    config["sources"] = [source for source in config["sources"] if source["name"] == SOURCE]
    config["profiles_file"] = str(SHIPPED_CONFIG.with_name(config.get("profiles_file", "profiles.yaml")))
    config.update(work_root=str(root / "work"), archive_root=str(root / "archive"))
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def task_seconds(run_id: str) -> list[dict]:
    """Each task of the run, mapped instances summed: instances, state(s), seconds summed and the slowest."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = session.query(TaskInstance).filter(TaskInstance.run_id == run_id).all()
    tasks: dict[str, dict] = {}
    for ti in sorted(instances, key=lambda ti: ti.start_date):
        seconds = (ti.end_date - ti.start_date).total_seconds()
        task = tasks.setdefault(ti.task_id, {"task": ti.task_id, "instances": 0, "states": set(), "seconds": 0.0, "slowest": 0.0})
        task.update(instances=task["instances"] + 1, seconds=task["seconds"] + seconds, slowest=max(task["slowest"], seconds))
        task["states"].add(str(ti.state))
    return [{**task, "states": sorted(task["states"])} for task in tasks.values()]


def run(month: BenchMonth, root: Path, sqlite: bool) -> dict:
    """Serve the month, run the DAG once, return what happened (also kept in root/bench_dag.json)."""
    for folder in ("work", "archive", "sftp", "mail"):
        shutil.rmtree(root / folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    serve_month(month, root / "sftp")
    os.environ["CDR_BILLING_CONFIG"] = str(write_config(root))
    os.environ.update(airflow_settings(root / "airflow", log_level="WARNING"))
    migrate(root / "airflow")
    with ExitStack() as stack:
        services = stack.enter_context(LocalServices(root / "services"))
        servers = [services.start_sftp(name, root / "sftp") for name in ("sftp_primary", "sftp_secondary")]
        if sqlite:
            (root / "billing.sqlite").unlink(missing_ok=True)
            billing_db = {"conn_type": "sqlite", "host": str(root / "billing.sqlite")}
        else:
            from cdr_devkit.postgres import LocalPostgres

            billing_db = stack.enter_context(LocalPostgres()).connection()
        connections = {
            "cdr_sftp_primary": servers[0].connection(services.client_key),
            "cdr_sftp_secondary": servers[1].connection(services.client_key),
            "billing_db": billing_db,
            "smtp_default": smtp_connection(services.start_smtp(root / "mail").port),
        }
        os.environ.update(connection_env(connections))
        from cdr_devkit.airflow_env import load_dag, run_dag

        started = time.perf_counter()
        dag_run = run_dag(load_dag(), logical_date=None, run_conf={"billing_month": str(month.month)})
        wall = time.perf_counter() - started
    facts = {
        "calls": month.rows,
        "files": len(month.cdr_files),
        "billing_db": "sqlite" if sqlite else "postgresql",
        "state": str(dag_run.state),
        "wall_seconds": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tasks": task_seconds(dag_run.run_id),
    }
    if facts["state"] == "success":
        from cdr_billing.config import load_config
        from cdr_billing.stages import run_work_dir

        work_dir = run_work_dir(load_config(), str(month.month), dag_run.run_id)
        facts.update(counts=json.loads((work_dir / "report.json").read_text())["counts"], lines=str(work_dir / "lines.parquet"))
    (root / "bench_dag.json").write_text(json.dumps(facts, indent=1), encoding="utf-8")
    return facts


def format_report(facts: dict) -> str:
    """The task table and the run's totals."""
    out = [
        f"The DAG on {facts['calls']:,} CDR rows in {facts['files']} files, billing DB {facts['billing_db']}, "
        "tasks one after another (dag.test)",
        f"  {'task':<22}{'instances':>10}{'seconds':>10}{'slowest':>10}  state",
    ]
    for task in facts["tasks"]:
        states = ",".join(task["states"])
        out.append(f"  {task['task']:<22}{task['instances']:>10}{task['seconds']:>10.1f}{task['slowest']:>10.1f}  {states}")
    out.append(f"run: {facts['state']}, {facts['wall_seconds']:.1f} s wall, peak RSS {facts['peak_rss_mib']:,.0f} MiB")
    if "counts" in facts:
        out.append("counts: " + ", ".join(f"{key} {value:,}" for key, value in facts["counts"].items()))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_month_arguments(parser)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the run's servers, Airflow and files live")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite billing database instead of PostgreSQL")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    month = ensure_month(args.base, args.calls, args.files, args.seed)
    facts = run(month, args.root.resolve(), args.sqlite)
    print(format_report(facts))
    return 0 if facts["state"] == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
