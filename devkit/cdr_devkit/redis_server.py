"""Debian's redis-server on a loopback port: the Celery broker of `make cluster` and its tests.

The data lives in a directory of its own with the append-only file on, as the compose stack's
redis keeps its queues on a volume: a server stopped and started again on the same port and
directory still holds the messages the workers had not taken yet.
Needs Debian's redis-server (`make redis-server`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from cdr_devkit.services import READY_TIMEOUT_SECONDS, ServiceError

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_argv(port: int, directory: Path, options: Sequence[str] = ()) -> list[str]:
    """redis-server's command line: the given options (e.g. --requirepass) on one loopback port,
    its files in directory, every write appended to its AOF."""
    return [
        REDIS_SERVER,
        *options,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
    ]


def ping(port: int, password: str | None) -> bool:
    """True when the server on port answers PING (authenticated with password)."""
    import redis

    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1)
        return bool(client.ping())
    except redis.RedisError:
        return False


def wait_for_ping(process: subprocess.Popen, port: int, password: str | None) -> None:
    """Wait until the server answers PING; fail if it exits or stays silent."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"redis-server exited with code {process.returncode}")
        if ping(port, password):
            return
        time.sleep(0.05)
    process.kill()
    raise ServiceError(f"redis-server did not answer PING within {READY_TIMEOUT_SECONDS} s")
