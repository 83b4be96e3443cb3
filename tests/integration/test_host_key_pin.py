"""The connection's pinned host key is the only trust, over real SFTP servers on loopback: a
rogue server on the primary's address whose key is in known_hosts (a temporary HOME's and the
running user's real one) is refused before any credential is offered; a connection without a
pinned key is refused. Both fail over to the secondary and mail the failover alert."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from pathlib import Path

import pytest
from sqlalchemy import select

from cdr_billing.contracts import to_xcom
from cdr_billing.schema import cdr_file
from cdr_billing.tasks.fetch import fetch_cdr_files
from cdr_billing.tasks.run import start_run
from cdr_devkit.services import LocalServices, SftpServer, connection_env


@contextmanager
def planted_in_known_hosts(known_hosts: Path, line: str) -> Iterator[None]:
    """Append a line to a known_hosts file; restore the file (or its absence) afterwards."""
    created_dir = not known_hosts.parent.exists()
    original = known_hosts.read_bytes() if known_hosts.exists() else None
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with known_hosts.open("ab") as handle:
        handle.write(f"{line}\n".encode())
    try:
        yield
    finally:
        if original is None:
            known_hosts.unlink()
        else:
            known_hosts.write_bytes(original)
        if created_dir:
            known_hosts.parent.rmdir()


@pytest.fixture
def run(fetch_environment, services, monkeypatch):
    """fetch(primary, secondary) -> the fetch stage's result, its ledger rows and new mails."""
    config = fetch_environment.config
    mails_before = set(services.maildir.glob("*.eml"))

    def fetch(primary: dict, secondary: dict) -> tuple[dict, list, list]:
        for key, value in connection_env(
            {"cdr_sftp_primary": primary, "cdr_sftp_secondary": secondary}
        ).items():
            monkeypatch.setenv(key, value)
        meta = to_xcom(fetch_cdr_files(start_run("2026-10", None, "pin-1", config), config))
        with fetch_environment.engine.connect() as conn:
            rows = conn.execute(select(cdr_file)).all()
        mails = [
            message_from_bytes(p.read_bytes())
            for p in sorted(set(services.maildir.glob("*.eml")) - mails_before)
        ]
        return meta, rows, mails

    return fetch


@pytest.fixture
def rogue(tmp_path, sftp_root) -> Iterator[SftpServer]:
    """An SFTP server with a host key of its own, serving the month: an impostor."""
    with LocalServices(tmp_path / "rogue") as local:
        yield local.start_sftp("rogue", sftp_root)


def known_hosts_line(server: SftpServer) -> str:
    return f"[127.0.0.1]:{server.port} {server.host_key}"


def mail_text(mail) -> str:
    part = mail.get_payload(0) if mail.is_multipart() else mail
    return part.get_payload(decode=True).decode()


def test_a_rogue_server_in_known_hosts_is_refused_before_authentication(
    services, rogue, run, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real_known_hosts = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh/known_hosts"
    impostor = services.sftp_connection(
        services.primary, port=rogue.port
    )  # the primary's pin, the rogue's address
    impostor["extra"] = {
        **impostor["extra"],
        "no_host_key_check": True,
        "allow_host_key_change": True,
    }  # ignored
    with (
        planted_in_known_hosts(tmp_path / "home/.ssh/known_hosts", known_hosts_line(rogue)),
        planted_in_known_hosts(real_known_hosts, known_hosts_line(rogue)),
    ):
        meta, rows, mails = run(impostor, services.sftp_connection(services.secondary))
    assert meta["server"] == "cdr_sftp_secondary"
    assert meta["failovers"] == [
        {
            "server": "cdr_sftp_primary",
            "error": "host key does not match the pinned key: possible man-in-the-middle attack, "
            "server not trusted",
        }
    ]
    assert rogue.auth_attempts() == [], "a credential was offered to the rogue server"
    assert (
        "billing" in services.secondary.auth_attempts()
    )  # the log records authentication when it happens
    assert {r.server for r in rows} == {"cdr_sftp_secondary"} and len(rows) == len(meta["files"])
    (mail,) = mails
    assert "cdr_sftp_primary failed, cdr_sftp_secondary took over" in mail["Subject"]
    assert "possible man-in-the-middle attack" in mail_text(mail)


def test_a_connection_without_a_pinned_host_key_is_refused(
    services, rogue, run, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    unpinned = services.sftp_connection(services.primary, port=rogue.port)
    unpinned["extra"] = {k: v for k, v in unpinned["extra"].items() if k != "host_key"} | {
        "no_host_key_check": True
    }
    with planted_in_known_hosts(tmp_path / "home/.ssh/known_hosts", known_hosts_line(rogue)):
        meta, rows, mails = run(unpinned, services.sftp_connection(services.secondary))
    assert meta["server"] == "cdr_sftp_secondary"
    (failover,) = meta["failovers"]
    assert failover == {
        "server": "cdr_sftp_primary",
        "error": "connection cdr_sftp_primary pins no host key (extra host_key): "
        "server unknown, not trusted "
        "(no trust on first use)",
    }
    assert rogue.auth_attempts() == []
    assert {r.server for r in rows} == {"cdr_sftp_secondary"}
    (mail,) = mails
    assert "connection cdr_sftp_primary pins no host key" in mail_text(mail)
