"""The billing months the Billing page tests share, seeded once per session into the running
Airflow's billing database (`billing_ui`) with the pipeline's own load code: 2026-05 (two
batches, the second current, with unbillable, suspense and duplicate rows and its report files)
and 2026-06 (report files outside the work root). The fixture `seeded` (conftest.py) loads them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine

from cdr_billing import billing_file, validate
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.load import LINE_COLUMNS, Batch, current_lines, load_month
from cdr_billing.migrations import upgrade
from cdr_billing.workdir import run_work_dir

PHONE = "+46701234567"
MAY_LINES = pd.DataFrame(
    [
        ("C2001", "100", "EUR", 123456, 10, 600),
        ("C2001", "101", "EUR", 1, 1, 60),
        ("C2002", "200", "EUR", 50000, 4, 240),
        ("C2003", "300", "SEK", 9999, 2, 120),
    ],
    columns=LINE_COLUMNS,
)
MAY_COUNTS = {
    "read": 26,
    "billed": 17,
    "quarantined": 0,
    "duplicates": 1,
    "not_billable": 1,
    "unbillable": 2,
    "suspense": 3,
    "combined": 0,
    "prepaid": 2,
}
JUNE_LINES = pd.DataFrame([("C2001", "100", "EUR", 700, 1, 60)], columns=LINE_COLUMNS)


def exception_row(kind: str, reason: str, row: int, detail: dict) -> dict:
    """A non-billed row of the May file, as the load stores it."""
    return {
        "kind": kind,
        "reason_code": reason,
        "source_file": "carrier_cdr_202605.csv",
        "source_row": row,
        "transaction_id": f"t{row}",
        "detail": json.dumps(detail),
    }


MAY_EXCEPTIONS = pd.DataFrame(
    [
        exception_row(
            "unbillable", "NO_TARIFF_PREFIX", row, {"user_id": "acct-9", "number_range": "+8821"}
        )
        for row in (3, 4)
    ]
    + [
        exception_row(
            "suspense",
            "UNKNOWN_ACCOUNT",
            row,
            {"user_id": "acct-unknown-7", "number_range": "+4670"},
        )
        for row in (5, 6, 7)
    ]
    + [exception_row("duplicate", "DUPLICATE_TRANSACTION", 8, {"destination_party": PHONE})]
)


def batch_of(lines: pd.DataFrame, exceptions: pd.DataFrame | None = None) -> Batch:
    """A batch to load: the lines (one user each), their exceptions, no revenue shares."""
    shares = pd.DataFrame(
        columns=[
            "service_provider",
            "currency",
            "share_basis_points",
            "call_count",
            "billed_minor",
            "share_minor",
        ]
    )
    no_exceptions = pd.DataFrame(
        columns=["kind", "reason_code", "source_file", "source_row", "transaction_id", "detail"]
    )
    return Batch(
        lines,
        lines.assign(user_id="u1"),
        shares,
        [],
        no_exceptions if exceptions is None else exceptions,
    )


@dataclass(frozen=True)
class Seeded:
    """The seeded months: batch ids, and the files the current May report points at."""

    may_old: int
    may: int
    june: int
    data_docs: Path  # the run's index of the files' Data Docs
    file_docs: Path  # one file's Data Docs site
    billing_csv: Path


def _config_of(airflow) -> PipelineConfig:
    """The pipeline config as the running api-server reads it (work_root under its AIRFLOW_HOME)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_HOME", airflow.env["AIRFLOW_HOME"])
        return load_config()


def _write_report(work_dir: Path, **report: object) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "report.json").write_text(json.dumps(report), encoding="utf-8")


def seed_months(running_airflow, postgres, tmp_path_factory) -> Seeded:
    """Load the months and write the files their reports point at (once per session)."""
    engine = create_engine(postgres.url_of("billing_ui"))
    upgrade(engine)
    old = load_month(
        engine, "2026-05", "ui_2026-05_first", batch_of(MAY_LINES.assign(total_minor=5)), MAY_COUNTS
    )
    new = load_month(
        engine, "2026-05", "ui_2026-05_second", batch_of(MAY_LINES, MAY_EXCEPTIONS), MAY_COUNTS
    )
    june = load_month(
        engine, "2026-06", "ui_2026-06", batch_of(JUNE_LINES), {"read": 5, "billed": 1}
    )
    config = _config_of(running_airflow)

    work_dir = run_work_dir(config, "2026-05", "ui_2026-05_second")
    site = (
        work_dir / "files" / "0123456789abcdef" / "gx_results" / "data_docs"
    )  # one CDR file's GX site
    (site / "static").mkdir(parents=True)
    (site / "index.html").write_text(
        '<html><link href="static/style.css">Data Docs of the UI test</html>'
    )
    (site / "static" / "style.css").write_text("body { color: teal; }")
    (site.parent / "result.json").write_text("{}")
    (work_dir / "calls.parquet").write_text(f"the run's data, e.g. {PHONE}")
    docs = validate.write_docs_index(
        work_dir / "data_docs.html", {"carrier_cdr_202605.csv": str(site / "index.html")}
    )
    csv_file, xlsx_file = billing_file.write(
        current_lines(engine, "2026-05"), "2026-05", config.billing_file_columns, work_dir
    )
    _write_report(
        work_dir, data_docs=str(docs), billing_file={"csv": str(csv_file), "xlsx": str(xlsx_file)}
    )

    outside = tmp_path_factory.mktemp("outside-work-root")
    secret = outside / "secret.csv"
    secret.write_text("not for the billing page")
    june_dir = run_work_dir(config, "2026-06", "ui_2026-06")
    june_dir.mkdir(parents=True)
    (june_dir / "linked.xlsx").symlink_to(secret)
    _write_report(
        june_dir,
        data_docs=str(outside / "index.html"),
        billing_file={"csv": str(secret), "xlsx": str(june_dir / "linked.xlsx")},
    )
    engine.dispose()
    return Seeded(old.batch_id, new.batch_id, june.batch_id, docs, site / "index.html", csv_file)
