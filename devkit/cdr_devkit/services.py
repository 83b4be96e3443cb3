"""Start the local servers a demo or a test needs, and describe them as Airflow connections."""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from cdr_devkit.payment_gateway import PaymentGatewayServer

READY_TIMEOUT_SECONDS = 30


class ServiceError(RuntimeError):
    """A local server did not start."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `with LocalServices(...)` stops its servers."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def serve_until_terminated(server: socketserver.BaseServer, ready_file: Path) -> None:
    """Serve a local HTTP server's requests until SIGTERM or Ctrl-C, having written its port to
    the ready file its starter waits for."""
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    ready_file.write_text(str(server.server_address[1]), encoding="utf-8")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


def free_port() -> int:
    """Return a TCP port on loopback that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(process: subprocess.Popen, ready_file: Path, what: str) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{what} exited with code {process.returncode} before it was ready")
        if ready_file.exists() and ready_file.read_text().strip():
            return int(ready_file.read_text())
        time.sleep(0.05)
    process.kill()
    raise ServiceError(f"{what} was not ready after {READY_TIMEOUT_SECONDS} s")


@dataclass
class ServerProcess:
    """A server running in its own process."""

    name: str
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class SftpServer(ServerProcess):
    """An SFTP server and the host key it presents."""

    root: Path = Path()
    host_key: str = ""
    log_path: Path = Path()
    login: str = "billing"

    def auth_attempts(self) -> list[str]:
        """The users that started to authenticate to this server, from its log."""
        from cdr_devkit.sftp_server import AUTH_ATTEMPT

        lines = (
            self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            if self.log_path.exists()
            else []
        )
        return [
            line.removeprefix(AUTH_ATTEMPT).strip()
            for line in lines
            if line.startswith(AUTH_ATTEMPT)
        ]

    def connection(self, client_key: Path, host_key: str | None = None) -> dict:
        """The Airflow connection for this server, with its host key pinned."""
        return {
            "conn_type": "sftp",
            "host": "127.0.0.1",
            "port": self.port,
            "login": self.login,
            "extra": {
                "key_file": str(client_key),
                "host_key": host_key or self.host_key,
                "no_host_key_check": False,
                "look_for_keys": False,
            },
        }


@dataclass
class SwitchServer(ServerProcess):
    """The local switch's webhook (cdr_devkit.switch_server): what it accepted and received."""

    secret: str = field(default="", repr=False)
    events_path: Path = Path()
    deliveries_path: Path = Path()

    @staticmethod
    def _records(path: Path) -> list[dict]:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def events(self) -> list[dict]:
        """The events accepted, each once, in the order accepted."""
        return self._records(self.events_path)

    def deliveries(self) -> list[dict]:
        """Every request to /events and its answer (duplicates and failures included)."""
        return self._records(self.deliveries_path)

    def control(self, **behaviour: object) -> dict:
        """Set how the switch answers (mode up|down|drop, fail_next, delay_seconds)."""
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/control",
            data=json.dumps(behaviour).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def connection(self, secret: str | None = None) -> dict:
        """The Airflow connection of this switch (the deliverer's `prepaid_switch`)."""
        return {
            "conn_type": "http",
            "schema": "http",
            "host": "127.0.0.1",
            "port": self.port,
            "password": self.secret if secret is None else secret,
        }


class KeyPair(NamedTuple):
    """An ed25519 key's private key file and its public key file (OpenSSH format)."""

    private: Path
    public: Path


class Spawned(NamedTuple):
    """A server process that is ready, and the port it bound."""

    process: subprocess.Popen
    port: int


@dataclass
class LocalServices:
    """Owns the servers it starts; stops them all on exit."""

    base: Path
    servers: list[ServerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.client_key, self.client_public_key = self._key_pair("client")

    def _key_pair(self, name: str) -> KeyPair:
        import asyncssh

        private, public = self.base / f"{name}_ed25519", self.base / f"{name}_ed25519.pub"
        if not private.exists():
            key = asyncssh.generate_private_key("ssh-ed25519")
            key.write_private_key(str(private))
            key.write_public_key(str(public))
            private.chmod(0o600)
        return KeyPair(private, public)

    def _spawn(self, name: str, module: str, *args: str) -> Spawned:
        ready = self.base / f"{name}.ready"
        ready.unlink(missing_ok=True)
        log = (self.base / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--ready-file", str(ready)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        return Spawned(process, _wait_ready(process, ready, name))

    def start_sftp(
        self, name: str, root: Path, port: int = 0, max_bytes_per_second: int = 0
    ) -> SftpServer:
        """Start an SFTP server with its own host key, serving root (optionally throttled)."""
        host_key = self._key_pair(f"{name}_host")
        spawned = self._spawn(
            name,
            "cdr_devkit.sftp_server",
            "--root",
            str(root),
            "--host-key",
            str(host_key.private),
            "--authorized-keys",
            str(self.client_public_key),
            "--port",
            str(port),
            "--max-bytes-per-second",
            str(max_bytes_per_second),
        )
        key_type, key_data = host_key.public.read_text().split()[:2]
        server = SftpServer(
            name,
            spawned.port,
            spawned.process,
            root=root,
            host_key=f"{key_type} {key_data}",
            log_path=self.base / f"{name}.log",
        )
        self.servers.append(server)
        return server

    def start_openssh(self, name: str) -> SftpServer:
        """Start OpenSSH's sshd with its own host key (see cdr_devkit.openssh_server)."""
        from cdr_devkit.openssh_server import start_sshd

        host_key = self._key_pair(f"{name}_host")
        server = start_sshd(
            self.base, name, host_key.private, host_key.public, self.client_public_key
        )
        self.servers.append(server)
        return server

    def start_redis(
        self, name: str, password: str | None, port: int = 0, options: Sequence[str] = ()
    ) -> ServerProcess:
        """Start Debian's redis-server (cdr_devkit.redis_server) with its data in base/<name>;
        started again with the same name and port, it finds its queues (append-only file)."""
        from cdr_devkit.redis_server import redis_argv, wait_for_ping

        port = port or free_port()
        directory = self.base / name
        directory.mkdir(parents=True, exist_ok=True)
        with (self.base / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                redis_argv(port, directory, options), stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_ping(process, port, password)
        server = ServerProcess(name, port, process)
        self.servers.append(server)
        return server

    def start_smtp(self, maildir: Path) -> ServerProcess:
        """Start an SMTP server that writes each message to maildir."""
        spawned = self._spawn(
            "smtp", "cdr_devkit.smtp_server", "--maildir", str(maildir), "--port", str(free_port())
        )
        server = ServerProcess("smtp", spawned.port, spawned.process)
        self.servers.append(server)
        return server

    def start_switch(self, name: str, secret: str, port: int = 0) -> SwitchServer:
        """Start a switch webhook that verifies `secret`; its records survive a restart on
        the same port (a switch that refuses connections: stop it, start it again later)."""
        secret_file = self.base / f"{name}.secret"
        secret_file.touch(mode=0o600)
        secret_file.write_text(secret, encoding="utf-8")
        events, deliveries = (
            self.base / f"{name}.events.jsonl",
            self.base / f"{name}.deliveries.jsonl",
        )
        spawned = self._spawn(
            name,
            "cdr_devkit.switch_server",
            "--secret-file",
            str(secret_file),
            "--events",
            str(events),
            "--deliveries",
            str(deliveries),
            "--port",
            str(port),
        )
        server = SwitchServer(
            name,
            spawned.port,
            spawned.process,
            secret=secret,
            events_path=events,
            deliveries_path=deliveries,
        )
        self.servers.append(server)
        return server

    def start_payment_gateway(
        self, name: str = "payment_gateway", hang_seconds: float = 30.0
    ) -> PaymentGatewayServer:
        """Start a local HTTPS payment gateway with a fresh token and certificate authority
        (see cdr_devkit.payment_gateway); returns its PaymentGatewayServer."""
        import secrets

        from cdr_devkit.payment_gateway import PaymentGatewayServer

        state_dir, token_file = self.base / name, self.base / f"{name}.token"
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        spawned = self._spawn(
            name,
            "cdr_devkit.payment_gateway",
            "--state-dir",
            str(state_dir),
            "--token-file",
            str(token_file),
            "--hang-seconds",
            str(hang_seconds),
        )
        server = PaymentGatewayServer(
            name, spawned.port, spawned.process, state_dir=state_dir, token=token_file.read_text()
        )
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        """Stop every server started here."""
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def __enter__(self) -> LocalServices:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()


def smtp_connection(port: int) -> dict:
    """The Airflow connection for a local SMTP server without TLS or login."""
    return {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "extra": {
            "disable_tls": True,
            "disable_ssl": True,
            "from_email": "cdr-billing@localhost",
            "retry_limit": 1,
        },
    }


def connection_env(connections: dict[str, dict]) -> dict[str, str]:
    """Airflow connections as AIRFLOW_CONN_<ID> environment variables (JSON)."""
    return {
        f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(spec) for conn_id, spec in connections.items()
    }
