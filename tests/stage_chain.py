"""A month through the functions the DAG's tasks run (stages.*), without Airflow or SFTP: the
files are recorded in the ledger as the fetch records them, then validated, deduplicated,
billed and aggregated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from cdr_billing import database, ledger, migrations, stages
from cdr_billing.acquire import FetchedFile
from cdr_billing.config import PipelineConfig


def item(role: str, source: str, path: Path) -> dict:
    """A fetched file as the fetch task hands it on."""
    return {
        "role": role,
        "source": source,
        "name": path.name,
        "local_path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def record_in_ledger(config: PipelineConfig, month: str, items: list[dict]) -> None:
    """Record the files in one ledger transaction, in the order given, as one fetch does."""
    engine = database.billing_engine(config.billing.connection)
    migrations.upgrade(engine)
    fetched = [
        FetchedFile(
            i["role"],
            i["source"],
            i["name"],
            i["local_path"],
            Path(i["local_path"]).stat().st_size,
            0,
            i["sha256"],
            "test",
        )
        for i in items
    ]
    ledger.record(engine, month, fetched)


def bill_month(
    config: PipelineConfig, month: str, work_dir: Path, cdr: list[dict], references: list[dict]
) -> dict:
    """The month's stages on these files (in this listing order); returns the aggregated meta."""
    work_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "billing_month": month,
        "run_id": work_dir.name,
        "work_dir": str(work_dir),
        "files": cdr + references,
    }
    record_in_ledger(config, month, cdr + references)
    loaded = stages.load_references(meta, config)
    deduped = stages.dedupe_calls(
        meta, [stages.validate_file(meta, i, config) for i in cdr], config
    )
    billed = [stages.bill_file(deduped, part, loaded, config) for part in deduped["parts"]]
    return stages.aggregate_lines(deduped, billed, loaded)


def lines_of(month_meta: dict) -> pd.DataFrame:
    """The month's billing lines, as aggregate_lines wrote them."""
    return stages._read(month_meta, "lines")
