"""report_month: the month report from the loaded batch, checked against the run, mailed."""

from __future__ import annotations

import dataclasses
import json
import logging

from cdr_billing import (
    alerts,
    billing_file,
    database,
    ledger,
    load,
    not_billed,
    report,
    run_attempts,
    workdir,
)
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import LoadedBatch, MonthReport, PrepaidSettlement
from cdr_billing.tasks.prepaid_settlement import REFUSED_FILE
from cdr_billing.tasks.run import send

log = logging.getLogger(__name__)


def report_month(
    loaded_batch: LoadedBatch,
    config: PipelineConfig | None = None,
    settlement: PrepaidSettlement | None = None,
) -> MonthReport:
    """Write the month report and the billing file from the loaded batch, after checking that
    the billing database's current lines are this run's, with the prepaid settlement's postings
    and refused calls when given; mail it, and the unbillable ranges and suspense accounts when
    there are any."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    lines, run = loaded_batch.lines, loaded_batch.run
    month = run.billing_month
    loaded = load.current_lines(engine, month)
    computed = workdir.read(run, "lines").astype(loaded.dtypes.to_dict())
    if not loaded.reset_index(drop=True).equals(computed.reset_index(drop=True)):
        raise report.ReconciliationError(
            "the billing database's current lines differ from this run's lines"
        )
    dirs = [f.dir for f in lines.month.files]
    batch = {
        "batch_id": loaded_batch.batch_id,
        "superseded_batch_id": loaded_batch.superseded_batch_id,
    }
    previous = loaded_batch.superseded_batch_id
    month_report = report.month_report(
        month,
        batch,
        dataclasses.asdict(lines.counts),
        loaded,
        run_facts={
            "files": [dataclasses.asdict(f) for f in lines.month.files],
            "data_docs": lines.month.data_docs,
            "delivery_failed_billed": lines.delivery_failed_billed,
            "credits": list(lines.credits),
            "held_files": ledger.held_files(engine, month),
            "changed_files": ledger.changed_files(engine, month),
            "price_differences": lines.price_differences,
            "stale_entitlements": workdir.read(run, "stale_accounts").to_dict("records"),
            "entitlement_snapshot": lines.references.entitlement_snapshot,
        },
        frames={
            "exceptions": not_billed.rows_not_billed(lambda n: workdir.read_parts(run, dirs, n)),
            "revenue_share": workdir.read(run, "revenue_share"),
            "unbillable": workdir.read_parts(run, dirs, "unbillable"),
            "suspense": workdir.read_parts(run, dirs, "suspense"),
        },
        previous_lines=None if previous is None else load.batch_lines(engine, previous),
    )
    csv_file, excel_file = billing_file.write(
        loaded, month, config.billing_file_columns, workdir.folder(run)
    )
    month_report["billing_file"] = {"csv": str(csv_file), "xlsx": str(excel_file)}
    if settlement is not None:
        month_report["prepaid"] = report.prepaid_settlement(
            dataclasses.asdict(settlement.postings), workdir.read(run, REFUSED_FILE)
        )
    _mail_exceptions(config, month, month_report)
    report_file = workdir.run_file(run, "report.json")
    report_file.write_text(json.dumps(month_report, indent=1), encoding="utf-8")
    text = report.render_text(month_report)
    workdir.run_file(run, "report.txt").write_text(text + "\n", encoding="utf-8")
    log.info("month report\n%s", text)
    subject = (
        f"[CDR billing] Month report {month}: {len(loaded)} billing lines "
        f"(batch {loaded_batch.batch_id})"
    )
    send(config, alerts.Alert("month_report", subject, html_body=report.render_html(month_report)))
    run_attempts.record_success(config, month, run.run_id)
    return MonthReport(loaded_batch, str(report_file))


def _mail_exceptions(config: PipelineConfig, month: str, month_report: dict) -> None:
    if month_report["unbillable_ranges"]:
        send(config, alerts.unbillable_alert(month, month_report["unbillable_ranges"]))
    if month_report["suspense_accounts"]:
        send(config, alerts.suspense_alert(month, month_report["suspense_accounts"]))
