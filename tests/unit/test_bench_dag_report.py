"""`make bench-dag --cluster`'s arguments, config and report, without starting a cluster (a
run on the local compose cluster takes 80-90 s even for a tiny month: the cluster's start is
35-45 s of it; the measured runs are in docs/performance.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from cdr_devkit.bench_dag import format_report, idle_seconds, main, task_seconds, write_config

T0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)


def instance(task_id: str, start: float, end: float, hostname: str | None = None) -> dict:
    found = {
        "task_id": task_id,
        "state": "success",
        "start": T0 + timedelta(seconds=start),
        "end": T0 + timedelta(seconds=end),
    }
    return found | ({"hostname": hostname} if hostname else {})


@pytest.mark.parametrize(
    "other", [["--scheduler"], ["--sqlite"], ["--sftp", "python"]], ids=lambda a: a[0]
)
def test_the_cluster_runs_its_own_servers_and_refuses_the_other_runners_options(other, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--cluster", "--calls", "10", *other])
    assert exited.value.code == 2
    assert "--cluster runs its own PostgreSQL and sshd" in capsys.readouterr().err


def test_the_cluster_config_keeps_the_work_in_its_shared_volumes(tmp_path):
    work, archive = tmp_path / "shared" / "work", tmp_path / "shared" / "archive"
    path = write_config(tmp_path, 2, "/srv/home", (work, archive))
    config = yaml.safe_load(path.read_text())
    assert (config["work_root"], config["archive_root"]) == (str(work), str(archive))
    assert [source["remote_dir"] for source in config["sources"]] == ["/srv/home/cdr/carrier"]
    assert config["files_at_once"] == 2
    default = yaml.safe_load(write_config(tmp_path).read_text())
    assert default["work_root"] == str(tmp_path / "work")


def test_idle_seconds_are_the_gaps_no_task_covers():
    # 0-10 and 5-12 overlap; gap 12-15; 15-20; gap 20-21; 21-22
    instances = [
        instance("a", 0, 10),
        instance("b", 5, 12),
        instance("c", 15, 20),
        instance("d", 21, 22),
    ]
    assert idle_seconds(instances) == pytest.approx(4.0)
    assert idle_seconds([]) == 0.0


def test_the_cluster_report_shows_the_node_of_each_task_and_what_memory_counts():
    instances = [
        instance("fetch_cdr_files", 0, 14, "airflow-worker-1"),
        instance("validate_cdr_file", 15, 30, "airflow-worker-1"),
        instance("validate_cdr_file", 15, 31, "airflow-worker-2"),
        instance("validate_cdr_file", 30, 45, "airflow-worker-1"),
        instance("load_billing", 47, 60, "airflow-worker-2"),
    ]
    tasks = task_seconds(instances)
    validate = next(task for task in tasks if task["task"] == "validate_cdr_file")
    assert validate["nodes"] == {"airflow-worker-1": 2, "airflow-worker-2": 1}
    assert validate["most_at_once"] == 2 and validate["last_end"] == 45.0
    facts = {
        "calls": 2_000_000,
        "files": 10,
        "billing_db": "postgresql",
        "runner": "cluster",
        "sftp": "openssh",
        "state": "success",
        "wall_seconds": 63.5,
        "peak_rss_mib": 5000.0,
        "peak_pss_mib": 3000.0,
        "load_average": [3.25, 5.5],
        "idle_rss_mib": 3400.0,
        "idle_pss_mib": 1700.0,
        "airflow_processes": ["airflow-scheduler", "airflow-worker-1", "airflow-worker-2"],
        "servers": {
            "postgresql": {"processes": 2, "peak_rss_mib": 900.0, "peak_pss_mib": 300.0},
        },
        "tasks": tasks,
        "idle_between_tasks_seconds": idle_seconds(instances),
    }
    report = format_report(facts)
    assert "CeleryExecutor" in report
    assert "airflow-worker-1:2 airflow-worker-2:1" in report
    assert "between tasks: 3.0 s with no task running, 3.5 s of the wall time" in report
    assert "peak RSS 5,000 MiB, peak PSS 3,000 MiB" in report
    assert "counted (each with its children): airflow-scheduler, airflow-worker-1" in report
    assert "postgresql (2) RSS 900 MiB, PSS 300 MiB" in report
    assert "load average during the run: mean 3.2, max 5.5" in report


def test_the_scheduler_report_names_no_nodes():
    tasks = task_seconds([instance("fetch_cdr_files", 0, 14)])
    assert "nodes" not in tasks[0]
