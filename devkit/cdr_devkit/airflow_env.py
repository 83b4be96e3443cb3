"""A project-local Airflow: its environment, its migrated metadata DB, and DAG runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cdr_billing.config import load_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "cdr_billing_monthly"
# Memory a task frees stays in its process for the next file instead of going back to the OS at
# once, so it is not faulted in again page by page; large blocks are asked for as transparent
# huge pages where the kernel offers them (madvise): one page fault per 2 MiB instead of per
# 4 KiB.
ALLOCATOR_SETTINGS = {
    "MIMALLOC_PURGE_DELAY": "-1",  # Arrow's allocator (mimalloc): keep freed pages
    "MIMALLOC_LARGE_OS_PAGES": "1",  # mimalloc: huge pages for its segments
    # glibc: blocks up to 32 MiB (glibc's limit) from the heap, not mmap
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "2147483647",  # glibc: do not hand the heap's free top back
    # glibc: huge pages for the heap and larger blocks (e.g. a file read whole)
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
}


def airflow_settings(airflow_home: Path, log_level: str = "INFO") -> dict[str, str]:
    """Environment for an Airflow home on SQLite that loads this project's DAGs only."""
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Backfill dates (`--from-date 2026-01-01`) are read in Airflow's default timezone: make it
        # the billing timezone, so a date range means the local billing months.
        "AIRFLOW__CORE__DEFAULT_TIMEZONE": load_config().billing.timezone,
        "AIRFLOW__LOGGING__LOGGING_LEVEL": log_level,
        "GX_ANALYTICS_ENABLED": "false",
        **ALLOCATOR_SETTINGS,
    }


def migrate(airflow_home: Path, env: dict[str, str] | None = None) -> None:
    """Create or upgrade the metadata database of the Airflow home (env: e.g. another database)."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    env = env or {**os.environ, **airflow_settings(airflow_home)}
    subprocess.run([str(airflow), "db", "migrate"], check=True, env=env, stdout=subprocess.DEVNULL)


def load_dag(dag_id: str = DAG_ID):
    """Parse the project's DAG folder and return one DAG; fail on import errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.dags[dag_id]


def run_dag(dag, logical_date, run_conf: dict | None = None):
    """Run the DAG once in this process (dag.test), without retries; return the DagRun."""
    for task in dag.tasks:
        task.retries = 0
    return dag.test(logical_date=logical_date, run_conf=run_conf)
