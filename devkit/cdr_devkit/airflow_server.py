"""A running Airflow (api-server, scheduler, dag-processor) on a project Airflow home.

What `airflow standalone` starts, on a free port and with a known admin password, so that
tests can use the REST API, the UI and the scheduler the way an operator does (backfills,
the Billing page).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cdr_devkit.services import ServiceError, free_port

COMPONENTS = ("api-server", "scheduler", "dag-processor")
ADMIN_USER = "admin"
START_TIMEOUT_SECONDS = 120


class AirflowClient:
    """Airflow's REST API on an api-server, as the admin user (SimpleAuthManager)."""

    def __init__(self, base_url: str, admin_password: str = "admin") -> None:
        self.base_url = base_url
        self.admin_password = admin_password
        self._token: str | None = None

    def token(self) -> str:
        """A JWT for the admin user (SimpleAuthManager), cached."""
        if self._token is None:
            body = self.request(
                "POST",
                "/auth/token",
                {"username": ADMIN_USER, "password": self.admin_password},
                auth=False,
            )
            self._token = body["access_token"]
        return self._token

    def request(self, method: str, path: str, payload: Any = None, auth: bool = True) -> Any:
        """Call the api-server and return the decoded JSON answer; raise on an HTTP error."""
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_for_dag(self, dag_id: str, timeout_seconds: float = 180) -> None:
        """Wait until the dag-processor has parsed a DAG (the API knows it)."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            try:
                self.api("GET", f"/dags/{dag_id}")
                return
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise
            time.sleep(1)
        raise ServiceError(f"the dag-processor did not parse {dag_id} within {timeout_seconds} s")

    def api(self, method: str, path: str, payload: Any = None) -> Any:
        """Call the REST API (`/api/v2` + path) as admin."""
        return self.request(method, f"/api/v2{path}", payload)


def write_admin_password(airflow_home: Path, admin_password: str) -> Path:
    """SimpleAuthManager's passwords file in the Airflow home, with the admin's password."""
    passwords = airflow_home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps({ADMIN_USER: admin_password}))
    return passwords


def wait_for_api(base_url: str, processes: dict[str, subprocess.Popen]) -> None:
    """Wait until the api-server at base_url answers its health check; fail as soon as one of
    the processes exits."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for component, process in processes.items():
            if process.poll() is not None:
                raise ServiceError(f"airflow {component} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/api/v2/monitor/health", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise ServiceError(f"the api-server did not answer within {START_TIMEOUT_SECONDS} s")


def airflow_command(env: dict[str, str], *args: str) -> str:
    """Run an `airflow ...` CLI command with env; return its output, raise when it fails."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise ServiceError(
            f"airflow {' '.join(args)} failed ({done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done.stdout


class RunningAirflow(AirflowClient):
    """Airflow's components as subprocesses of one Airflow home; stops them on exit."""

    def __init__(
        self, airflow_home: Path, env: dict[str, str], admin_password: str = "admin"
    ) -> None:
        self.airflow_home = airflow_home
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", admin_password)
        passwords = write_admin_password(airflow_home, admin_password)
        self.env = {
            **env,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            # LocalExecutor worker processes: enough for a 2-core machine
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def airflow(self, *args: str) -> str:
        """Run an `airflow ...` CLI command against this Airflow home; return its output."""
        return airflow_command(self.env, *args)

    def start(self) -> RunningAirflow:
        """Start the components and wait until the api-server answers."""
        logs = self.airflow_home / "component-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for component in COMPONENTS:
            with open(logs / f"{component}.log", "ab") as log:
                self.processes[component] = subprocess.Popen(
                    [str(Path(sys.executable).with_name("airflow")), component],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        wait_for_api(self.base_url, self.processes)
        return self

    def stop(self) -> None:
        """Stop every component (SIGTERM to its process group, then SIGKILL)."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> RunningAirflow:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
