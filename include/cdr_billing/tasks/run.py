"""What every task of a billing run shares: the run record, and the mails it sends."""

from __future__ import annotations

from datetime import datetime

from cdr_billing import alerts, run_attempts, workdir
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import Run
from cdr_billing.months import resolve_billing_month


def start_run(
    billing_month_param: str | None,
    data_interval_start: datetime | None,
    run_id: str,
    config: PipelineConfig | None = None,
    refresh_entitlements: bool = False,
    clear_number: int = 0,
    release_held_files: list[str] | None = None,
) -> Run:
    """Resolve the billing month and create the run's work directory.

    A run cleared in the UI (or re-run by a reprocessing backfill) keeps its Airflow run id but
    is a new billing run: its clear number makes it a new batch; a retried task is not.
    """
    config = config or load_config()
    month = resolve_billing_month(billing_month_param, data_interval_start, config.billing.timezone)
    run_id = run_id if clear_number == 0 else f"{run_id}#clear{clear_number}"
    work_dir = workdir.run_work_dir(config, str(month), run_id)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_attempts.record_start(config, str(month), run_id, str(work_dir))
    return Run(
        billing_month=str(month),
        run_id=run_id,
        work_dir=str(work_dir),
        work_connection=config.work_connection,
        refresh_entitlements=refresh_entitlements,
        release_held_files=tuple(release_held_files or ()),
    )


def send(config: PipelineConfig, alert: alerts.Alert) -> None:
    """Mail an alert to the recipients of its kind."""
    alerts.send(alert, list(config.recipients(alert.kind)), config.smtp_connection)
