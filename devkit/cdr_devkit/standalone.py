"""`make standalone`: the Airflow UI at http://localhost:8080 with the demo's local servers.

Generates the sample month, starts the two SFTP servers, the SMTP server, the payment gateway
and the switch, then runs `airflow standalone` (api-server, scheduler, dag-processor,
triggerer) with the same connections, until Ctrl-C. Trigger `cdr_billing_monthly` in the UI
with billing_month; unpause `cdr_prepaid_balances` to debit the prepaid accounts every
prepaid.interval_minutes. The UI shows times, and reads the backfill form's dates, in the
billing timezone for a browser whose user has not picked a zone (billing.ui_timezone_default
in the shipped pipeline.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from cdr_devkit.airflow_env import airflow_settings, migrate
from cdr_devkit.demo import AIRFLOW_HOME, DEMO_DIR, start_demo_services
from cdr_devkit.services import LocalServices, stop_on_sigterm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month", default="2026-10", help="sample month to generate (YYYY-MM)")
    args = parser.parse_args()
    stop_on_sigterm()
    os.environ.update(airflow_settings(AIRFLOW_HOME))
    migrate(AIRFLOW_HOME)
    with LocalServices(DEMO_DIR / "services") as services:
        # airflow standalone starts `airflow ...` from PATH
        venv_bin = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            **start_demo_services(services, args.month).env,
            "PATH": f"{venv_bin}:{os.environ['PATH']}",
        }
        print(
            f"Sample month {args.month} is on the local SFTP servers. "
            "Starting Airflow at http://localhost:8080 (times in the billing timezone)"
        )
        passwords = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
        print(f"Log in as admin; the password is in {passwords}")
        airflow = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), "standalone"],
            env=env,
            start_new_session=True,
        )
        try:
            return airflow.wait()
        except KeyboardInterrupt:
            return stop_process_group(airflow)


def stop_process_group(process: subprocess.Popen) -> int:
    """Stop `airflow standalone` and every component it started."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # components that outlived their parent
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
