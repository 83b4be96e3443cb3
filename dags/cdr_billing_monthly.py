"""
### CDR billing, monthly

Turns the providers' call detail records of one **billing month** into billing lines:

fetch over SFTP (primary, then secondary) → validate (Great Expectations) → rate (tariff)
→ attribute (entitlement snapshot) → aggregate per customer id and sequence number
→ load into the billing database → month report.

**Which month.** The scheduled run for the interval starting on the 1st of month M bills
month M (it runs once M is over). A manual run bills the last complete month, or the month
given in the `billing_month` param (`YYYY-MM`). Backfill a range with
`airflow backfill create --dag-id cdr_billing_monthly --from-date 2026-01-01 --to-date 2026-03-31`.

**Re-running is safe.** Every run loads a new batch that replaces the month's current one
in a single transaction; the old batch is kept as superseded.

**On failure** every task mails the alert recipients of `include/config/pipeline.yaml`.
Intermediate data lives as Parquet files in the run's work directory (see the task logs).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from cdr_billing.config import load_config

CONFIG = load_config()

failure_mail = SmtpNotifier(
    to=list(CONFIG.alert_to),
    subject="[CDR billing] {{ ti.task_id }} failed ({{ dag.dag_id }}, {{ run_id }})",
    html_content=(
        "<p>Task <b>{{ ti.task_id }}</b> of <b>{{ dag.dag_id }}</b> failed on try {{ ti.try_number }}.</p>"
        "<p>Run: {{ run_id }}<br>Billing month param: {{ params.billing_month or 'from the data interval' }}</p>"
        "<p>Error: {{ exception }}</p>"
        '<p><a href="{{ ti.log_url }}">Task log</a>. Fix the cause, then clear the task in the Airflow UI '
        "to re-run it; re-running a month never bills it twice.</p>"
    ),
)


@dag(
    dag_id="cdr_billing_monthly",
    schedule=CronDataIntervalTimetable("0 0 1 * *", timezone=CONFIG.billing.timezone),
    start_date=pendulum.datetime(2026, 1, 1, tz=CONFIG.billing.timezone),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["billing", "cdr"],
    default_args={
        "owner": "billing-ops",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "on_failure_callback": [failure_mail],
    },
    params={
        "billing_month": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
            title="Billing month",
            description="YYYY-MM. Leave empty to bill the month of the run's data interval.",
        ),
    },
)
def cdr_billing_monthly():
    @task
    def fetch_cdr_files() -> dict:
        """Resolve the billing month and download its CDR files, tariff and entitlements."""
        from cdr_billing import stages

        context = get_current_context()
        meta = stages.start_run(context["params"].get("billing_month"), context.get("data_interval_start"), context["run_id"])
        return stages.fetch(meta)

    @task
    def validate_cdrs(meta: dict) -> dict:
        """Read every file, quarantine bad rows, run the Great Expectations suites."""
        from cdr_billing import stages

        return stages.validate_files(meta)

    @task
    def rate_calls(meta: dict) -> dict:
        """Price calls by the provider's cost or the tariff's longest prefix."""
        from cdr_billing import stages

        return stages.rate_calls(meta)

    @task
    def attribute_calls(meta: dict) -> dict:
        """Join calls to the entitlement snapshot: customer id and sequence number."""
        from cdr_billing import stages

        return stages.attribute_calls(meta)

    @task
    def aggregate_lines(meta: dict) -> dict:
        """Sum calls into billing lines; prove rows and money reconcile."""
        from cdr_billing import stages

        return stages.aggregate_lines(meta)

    @task
    def load_billing(meta: dict) -> dict:
        """Load the lines as the month's new current batch, atomically."""
        from cdr_billing import stages

        return stages.load_billing(meta)

    @task
    def report_month(meta: dict) -> dict:
        """Write the month report from the loaded batch."""
        from cdr_billing import stages

        return stages.report_month(meta)

    report_month(load_billing(aggregate_lines(attribute_calls(rate_calls(validate_cdrs(fetch_cdr_files()))))))


cdr_billing_monthly()
