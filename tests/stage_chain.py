"""A month through the functions the DAG's tasks run (cdr_billing.tasks.chain), without Airflow
or SFTP: the files are recorded in the ledger as the fetch records them, then validated,
deduplicated, billed and aggregated."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cdr_billing import database, migrations, workdir
from cdr_billing.config import PipelineConfig
from cdr_billing.contracts import MonthLines, Run
from cdr_billing.tasks import chain


def item(role: str, source: str, path: Path) -> tuple[str, str, Path]:
    """A local file of the month: its role (cdr, tariff, entitlements) and source."""
    return role, source, path


def bill_month(
    config: PipelineConfig,
    month: str,
    work_dir: Path,
    cdr: list[tuple[str, str, Path]],
    references: list[tuple[str, str, Path]],
) -> MonthLines:
    """The month's tasks on these files (in this listing order); returns the month's lines."""
    work_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(database.billing_engine(config.billing.connection))
    run = Run(month, work_dir.name, str(work_dir))
    return chain.bill_month(config, chain.fetched_locally(config, run, cdr + references))


def lines_of(month: MonthLines) -> pd.DataFrame:
    """The month's billing lines, as aggregate_lines wrote them."""
    return workdir.read(month.run, "lines")
