"""Team rules for every DAG in dags/, written as tests."""

import subprocess
import sys
from pathlib import Path

import pytest

from cdr_billing.config import load_config
from cdr_devkit.airflow_env import PROJECT_ROOT

DAG_FILES = sorted((PROJECT_ROOT / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_no_import_errors(dag_bag):
    assert dag_bag.import_errors == {}
    assert {"cdr_billing_monthly", "cdr_prepaid_balances"} <= set(dag_bag.dags)


def test_every_task_retries_and_alerts_by_mail(dag_bag):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    for dag in dag_bag.dags.values():
        assert dag.tags, dag.dag_id
        for task in dag.tasks:
            assert task.retries >= 1, task.task_id
            assert any(isinstance(cb, SmtpNotifier) for cb in task.on_failure_callback), (
                task.task_id
            )


def test_tasks_run_in_billing_order(dag_bag):
    dag = dag_bag.dags["cdr_billing_monthly"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == [
        "upgrade_billing_db",
        "wait_for_cdr_files",
        "fetch_cdr_files",
        "load_references",
        "list_cdr_files",
        "validate_cdr_file",
        "dedupe_calls",
        "list_file_parts",
        "bill_cdr_file",
        "aggregate_lines",
        "load_billing",
        "settle_prepaid",
        "report_month",
        "render_statements",
        "deliver_statements",
    ]


def test_statements_are_rendered_then_mailed_after_the_load(dag_bag):
    tasks = dag_bag.dags["cdr_billing_monthly"].task_dict
    assert tasks["render_statements"].upstream_task_ids == {"load_billing"}
    assert tasks["deliver_statements"].upstream_task_ids == {"render_statements"}
    assert tasks["deliver_statements"].mode == "reschedule"  # a deferred mail holds no slot


def test_prepaid_calls_are_settled_beside_the_load_once_the_rows_reconcile(dag_bag):
    tasks = dag_bag.dags["cdr_billing_monthly"].task_dict
    assert tasks["settle_prepaid"].upstream_task_ids == {"aggregate_lines"}
    assert tasks["report_month"].upstream_task_ids == {"load_billing", "settle_prepaid"}


def test_the_schema_is_upgraded_once_per_run_before_anything_else(dag_bag):
    tasks = dag_bag.dags["cdr_billing_monthly"].task_dict
    assert tasks["upgrade_billing_db"].upstream_task_ids == set()
    assert tasks["wait_for_cdr_files"].upstream_task_ids == {"upgrade_billing_db"}


def test_each_task_is_a_named_function_with_typed_records_in_and_out(dag_bag):
    """The DAG file is the pipeline diagram: a task runs the function it is named after, whose
    arguments and result are contract records (or lists of them), never a bare dict."""
    import typing

    from cdr_billing import contracts

    records = {
        value
        for value in vars(contracts).values()
        if isinstance(value, type)
        and value.__module__ in ("cdr_billing.contracts", "cdr_billing.acquire")
    }
    for task in [t for dag in dag_bag.dags.values() for t in dag.tasks]:
        function = task.python_callable.__wrapped__
        assert function.__name__ == task.task_id
        hints = typing.get_type_hints(function)
        for name, hint in hints.items():
            kinds = typing.get_args(hint) or (hint,)
            assert dict not in kinds, (task.task_id, name)
            if name != "return":
                assert set(kinds) <= records, (task.task_id, name, hint)


def test_mapped_tasks_are_named_by_their_cdr_file(dag_bag):
    tasks = dag_bag.dags["cdr_billing_monthly"].task_dict
    for task_id in ("validate_cdr_file", "bill_cdr_file"):
        assert tasks[task_id].map_index_template == "{{ mapped_name }}", task_id


def test_tariff_and_snapshot_load_beside_the_files_validation(dag_bag):
    tasks = dag_bag.dags["cdr_billing_monthly"].task_dict
    assert tasks["load_references"].upstream_task_ids == {"fetch_cdr_files"}
    assert {"bill_cdr_file", "aggregate_lines"} <= tasks["load_references"].downstream_task_ids


def test_files_are_validated_and_billed_one_task_per_file(dag_bag):
    """Dynamic task mapping: the workers of a Celery deployment share a month's files."""
    dag = dag_bag.dags["cdr_billing_monthly"]
    mapped = {t.task_id for t in dag.tasks if t.is_mapped}
    assert mapped == {"validate_cdr_file", "bill_cdr_file"}


def test_a_run_works_on_as_many_files_at_once_as_the_config_says(dag_bag):
    """Each mapped task holds one file in memory: files_at_once bounds a run's memory."""
    tasks = dag_bag.dags["cdr_billing_monthly"].task_dict
    limits = {tasks[t].max_active_tis_per_dagrun for t in ("validate_cdr_file", "bill_cdr_file")}
    assert limits == {load_config().files_at_once}


def test_waiting_for_files_holds_no_worker_slot(dag_bag):
    sensor = dag_bag.dags["cdr_billing_monthly"].task_dict["wait_for_cdr_files"]
    assert sensor.mode == "reschedule"


def test_schedule_bills_the_calendar_month(dag_bag):
    dag = dag_bag.dags["cdr_billing_monthly"]
    assert type(dag.timetable).__name__ == "BillingMonthTimetable"
    assert dag.timetable.serialize() == {"timezone": load_config().billing.timezone}
    assert dag.params["billing_month"] is None


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_fast_without_heavy_modules(dag_file: Path):
    probe = (
        "import importlib.util, sys, time\n"
        "import airflow.sdk\n"
        f"spec = importlib.util.spec_from_file_location('probe', {str(dag_file)!r})\n"
        "start = time.perf_counter()\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "elapsed = time.perf_counter() - start\n"
        "heavy = [m for m in ('pandas', 'great_expectations', 'paramiko', 'pyarrow', 'numpy') "
        "if m in sys.modules]\n"
        "print(elapsed, ','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    out = done.stdout.strip().splitlines()[-1].split()  # the probe's own line comes last
    assert float(out[0]) < 1.0
    assert out[1:] == [], f"heavy modules imported at parse time: {out[1:]}"


def test_prepaid_runs_the_monthly_runs_checks_and_rating_then_credit_control(dag_bag):
    dag = dag_bag.dags["cdr_prepaid_balances"]
    monthly = dag_bag.dags["cdr_billing_monthly"].task_dict
    tasks = dag.task_dict
    for shared in ("upgrade_billing_db", "validate_cdr_file", "dedupe_calls", "list_file_parts"):
        ours, theirs = tasks[shared].python_callable, monthly[shared].python_callable
        assert ours.__wrapped__.__code__ is theirs.__wrapped__.__code__, shared  # one declaration
    assert tasks["rate_prepaid_file"].map_index_template == "{{ mapped_name }}"
    assert tasks["debit_balances"].downstream_task_ids - {"mark_run_failed"} == {"control_credit"}
    assert tasks["control_credit"].downstream_task_ids - {"mark_run_failed"} == {
        "deliver_switch_events",
        "measure_exposure",
    }


def test_a_prepaid_run_with_a_failed_task_shows_failed(dag_bag):
    """Credit control and the switch run after a failure (all_done), so the run's last task
    fails it when any task failed, and is skipped otherwise."""
    tasks = dag_bag.dags["cdr_prepaid_balances"].task_dict
    watcher = tasks["mark_run_failed"]
    assert watcher.trigger_rule == "one_failed"
    assert watcher.upstream_task_ids == set(tasks) - {"mark_run_failed"}


def test_prepaid_credit_control_runs_whatever_happened_to_the_files(dag_bag):
    """No new file, or an SFTP server down: top-ups, locks and the switch's webhooks go on."""
    tasks = dag_bag.dags["cdr_prepaid_balances"].task_dict
    for task_id in ("control_credit", "deliver_switch_events", "measure_exposure"):
        assert tasks[task_id].trigger_rule == "all_done", task_id


def test_prepaid_runs_every_configured_interval(dag_bag):
    dag = dag_bag.dags["cdr_prepaid_balances"]
    assert type(dag.timetable).__name__ == "DeltaDataIntervalTimetable"
    assert dag.timetable.delta.total_seconds() == load_config().prepaid.interval_minutes * 60
    assert dag.max_active_runs == 1


def test_a_dag_parsed_again_takes_the_config_of_its_time(tmp_path, monkeypatch, dag_bag):
    """Tests (and a deployment that changes pipeline.yaml) parse the DAGs again in one process:
    the shared tasks must not keep the first parse's config."""
    from airflow.dag_processing.dagbag import DagBag

    shipped = PROJECT_ROOT / "include/config/pipeline.yaml"
    changed = tmp_path / "pipeline.yaml"
    changed.write_text(shipped.read_text().replace("files_at_once: 2", "files_at_once: 1"))
    (tmp_path / "profiles.yaml").write_text((shipped.parent / "profiles.yaml").read_text())
    monkeypatch.setenv("CDR_BILLING_CONFIG", str(changed))
    again = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    for dag_id in ("cdr_billing_monthly", "cdr_prepaid_balances"):
        assert again.dags[dag_id].task_dict["validate_cdr_file"].max_active_tis_per_dagrun == 1
