"""The run's work directory on object storage (ObjectStoragePath), chosen by one setting."""

from __future__ import annotations

import json
from decimal import Decimal

import pandas as pd
import pytest
import yaml

from cdr_billing.config import load_config
from cdr_billing.workdir import run_work_dir
from cdr_devkit.airflow_env import PROJECT_ROOT, load_dag, run_dag
from oracle import expected_lines


@pytest.fixture
def object_storage_dag(tmp_path, airflow_home, pipeline_connections, postgres, monkeypatch):
    raw = yaml.safe_load((PROJECT_ROOT / "include/config/pipeline.yaml").read_text())
    raw["work_root"] = (
        f"file://{tmp_path}/object-store/work"  # any fsspec URL: s3://, gs://, abfs://...
    )
    raw["profiles_file"] = str(PROJECT_ROOT / "include/config/profiles.yaml")
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("CDR_BILLING_CONFIG", str(tmp_path / "pipeline.yaml"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_BILLING_DB",
        json.dumps(postgres.connection(postgres.create_database("object_storage"))),
    )
    return load_dag()


def test_a_month_runs_with_its_work_directory_on_object_storage(object_storage_dag, sftp_root):
    run = run_dag(object_storage_dag, logical_date=None, run_conf={"billing_month": "2026-10"})
    assert run.state == "success"
    work_dir = run_work_dir(load_config(), "2026-10", run.run_id)
    assert type(work_dir).__name__ == "ObjectStoragePath" and str(work_dir).startswith("file://")
    report = json.loads((work_dir / "report.json").read_text())
    got = {
        (line["customer_id"], line["sequence_number"]): Decimal(line["total"])
        for line in report["lines"]
    }
    assert got == expected_lines(sftp_root, 2026, 10)
    for part in report[
        "files"
    ]:  # every file's intermediate data and Data Docs went to the object store
        assert part["dir"].startswith("file://") and part["data_docs"].startswith("file://")
    with (work_dir / "billing_2026-10.xlsx").open("rb") as handle:
        assert len(pd.read_excel(handle)) == 16
    local_default = run_work_dir(
        load_config(PROJECT_ROOT / "include/config/pipeline.yaml"), "2026-10", run.run_id
    )
    assert not local_default.exists()  # nothing of the run in the local work directory
