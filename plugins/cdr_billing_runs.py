"""What the scheduler, dag-processor and api-server need to run the billing DAGs: the monthly
DAG's timetable and the listener that writes each run's billing month in its note. Apart from
the Billing page's plugin, so that a page that fails to import never stops the scheduling."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from cdr_billing import run_notes
from cdr_billing.timetables import BillingMonthTimetable


class CdrBillingRunsPlugin(AirflowPlugin):
    """Registers BillingMonthTimetable and the run-note listener."""

    name = "cdr_billing_runs"
    # The billing month on every run's note, and why a run waits (set in the scheduler).
    listeners = [run_notes]
    # The monthly DAG's timetable, for the scheduler, dag-processor and api-server to load.
    timetables = [BillingMonthTimetable]
