"""A throwaway PostgreSQL cluster on loopback, for tests: initdb, start, stop.

initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cdr_devkit.services import free_port


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def server_bin_dir() -> Path:
    """Return the directory holding initdb and pg_ctl."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = [Path(c) for c in candidates if Path(c, "initdb").exists()]
    if shutil.which("initdb"):
        found.append(Path(shutil.which("initdb")).parent)
    if not found:
        raise PostgresNotFoundError(
            "PostgreSQL server binaries not found: install the postgresql package"
        )
    return found[0]


class LocalPostgres:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1."""

    def __init__(self, database: str = "billing") -> None:
        self.bin = server_bin_dir()
        self.database = database
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="cdr-pg-"))
        self.data = self.base / "data"
        self._as_root = os.geteuid() == 0

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()}"
            )

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database."""
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        """SQLAlchemy URL of a database of this cluster."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def connection(self, database: str | None = None) -> dict:
        """The Airflow connection of a database (default: the billing database)."""
        return {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": self.port,
            "login": "postgres",
            "schema": database or self.database,
        }

    def create_database(self, name: str) -> str:
        """Create an empty database; return its name."""
        self._run(
            str(self.bin / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            name,
        )
        return name

    def start(self) -> LocalPostgres:
        """initdb, start the server and create the database."""
        self.base.chmod(0o755)
        if self._as_root:
            shutil.chown(self.base, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.base / "server.log"),
            "-w",
            "start",
        )
        self._run(
            str(self.bin / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            self.database,
        )
        return self

    def stop(self) -> None:
        """Stop the server and remove its files."""
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
