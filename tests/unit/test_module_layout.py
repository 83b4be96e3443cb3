"""The package's layout as rules: kernels import only kernels, each stage only kernels and the
stages before it, the task bodies anything but the UI, and the UI never the task bodies (it
runs in the API server, which must not load what the workers run)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "cdr_billing"
KERNELS = {
    "money",
    "durations",
    "canonical",
    "schema",
    "storage",
    "text_bytes",
    "hashing",
    "frames",
    "months",
    "privacy",
    "config",
    "database",
    "migrations",
    "reference_table",
}
STAGES = [  # pipeline order
    "acquire",
    "ledger",
    "read",
    "validate",
    "dedupe",
    "tariff",
    "entitlements",
    "rate",
    "attribute",
    "aggregate",
    "statements",
    "load",
    "lineage",
    "not_billed",
    "report",
    "billing_file",
    "alerts",
    "statement_render",
    "statement_mail",
]
# What a run hands on and records: after the stages, before the tasks
RUN_RECORDS = {"contracts", "workdir", "run_attempts"}
# What the scheduler loads through a plugin (the timetable, the run notes): kernels only
SCHEDULING = {"timetables", "run_notes"}
# Prepaid credit control: the stages' functions applied to balances (a package of its own)
PREPAID = "prepaid"
# The users' self-service portal: a web app of its own, beside the Billing page (ui)
PORTAL = "portal"
# What every Celery worker loads as it starts (it names the modules to preload as strings)
WORKER_START = "celery_config"


def _imports(path: Path) -> set[str]:
    """The cdr_billing modules a file imports (first component under cdr_billing), anywhere."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("cdr_billing")
        ):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cdr_billing.")}
    return found


def _module_imports(name: str) -> set[str]:
    target = PACKAGE / name
    files = target.rglob("*.py") if target.is_dir() else [PACKAGE / f"{name}.py"]
    return set().union(*(_imports(f) for f in files)) - {name}


def test_every_module_has_a_place_in_the_layout():
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir()
    }
    placed = (
        KERNELS
        | set(STAGES)
        | RUN_RECORDS
        | SCHEDULING
        | {
            PREPAID,
            PORTAL,
            WORKER_START,
            "taskflow",
            "dag_tasks",
            "tasks",
            "ui",
            "__init__",
            "__pycache__",
        }
        | {"templates"}  # the statement's Jinja2 template (statement_render)
    )
    assert modules - placed == set()


def test_kernels_import_only_kernels():
    for kernel in KERNELS:
        assert _module_imports(kernel) <= KERNELS, kernel


def test_each_stage_imports_only_kernels_and_earlier_stages():
    for n, stage in enumerate(STAGES):
        assert _module_imports(stage) <= KERNELS | set(STAGES[:n]), stage


def test_the_run_records_import_no_task_body():
    for module in RUN_RECORDS:
        assert _module_imports(module) <= KERNELS | set(STAGES) | RUN_RECORDS, module


def test_what_the_scheduler_loads_imports_only_kernels():
    for module in SCHEDULING:
        assert _module_imports(module) <= KERNELS, module


def test_prepaid_builds_on_the_stages_not_on_the_tasks():
    assert _module_imports(PREPAID) <= KERNELS | set(STAGES) | RUN_RECORDS


def test_the_ui_never_imports_the_task_bodies():
    assert not _module_imports("ui") & {"tasks", "taskflow"}


def test_the_task_bodies_never_import_the_ui():
    assert "ui" not in _module_imports("tasks")


def test_the_portal_never_imports_the_task_bodies():
    assert not _module_imports(PORTAL) & {"tasks", "taskflow", "dag_tasks"}


def test_nothing_imports_the_portal_but_the_portal():
    others = {p.stem for p in PACKAGE.glob("*.py")} | {"tasks", "ui", PREPAID}
    assert all(PORTAL not in _module_imports(name) for name in others)


def test_a_worker_imports_nothing_of_the_package_while_it_starts():
    assert _module_imports(WORKER_START) == set()
