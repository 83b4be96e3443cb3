"""The fetch stage against OpenSSH's sshd (primary and secondary, as in production), a real
PostgreSQL ledger and a real SMTP server: a month fetched, failover when the primary is down,
a changed host key, the primary killed in the middle of a transfer."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, replace
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from sqlalchemy import select

from cdr_billing.acquire import READ_REQUEST_BYTES, open_sftp, read_request_bytes
from cdr_billing.config import PipelineConfig, RemoteFiles
from cdr_billing.contracts import to_xcom
from cdr_billing.schema import cdr_file
from cdr_billing.tasks.fetch import fetch_cdr_files
from cdr_billing.tasks.run import start_run
from cdr_devkit.openssh_server import login_name
from cdr_devkit.services import LocalServices, SftpServer, connection_env

BIG = "carrier_cdr_202610_big.csv"


def served_from(config: PipelineConfig, root: Path) -> PipelineConfig:
    """The config with every remote directory under root: sshd serves absolute paths."""

    def under(files: RemoteFiles) -> RemoteFiles:
        return replace(files, remote_dir=f"{root}{files.remote_dir}")

    return replace(
        config,
        sources=tuple(under(s) for s in config.sources),
        tariff=under(config.tariff),
        entitlements=under(config.entitlements),
    )


@dataclass
class Site:
    """OpenSSH primary and secondary serving one copy of the month, a fresh ledger, the mailbox."""

    local: LocalServices
    root: Path
    primary: SftpServer
    secondary: SftpServer
    config: PipelineConfig
    engine: object
    maildir: Path
    mails_before: set
    monkeypatch: pytest.MonkeyPatch

    def connect(self, primary: dict, secondary: dict) -> None:
        for key, value in connection_env(
            {"cdr_sftp_primary": primary, "cdr_sftp_secondary": secondary}
        ).items():
            self.monkeypatch.setenv(key, value)

    def connection(self, server: SftpServer, **overrides: object) -> dict:
        return {**server.connection(self.local.client_key), **overrides}

    def fetch(self) -> dict:
        return to_xcom(
            fetch_cdr_files(start_run("2026-10", None, "run-1", self.config), self.config)
        )

    def ledger(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(select(cdr_file)).all()

    def new_mails(self) -> list[Message]:
        return [
            message_from_bytes(p.read_bytes())
            for p in sorted(set(self.maildir.glob("*.eml")) - self.mails_before)
        ]


@pytest.fixture
def site(tmp_path, sftp_root, fetch_environment, services, monkeypatch):
    root = tmp_path / "served"
    shutil.copytree(sftp_root, root)
    with LocalServices(tmp_path / "servers") as local:
        site = Site(
            local,
            root,
            local.start_openssh("openssh_primary"),
            local.start_openssh("openssh_secondary"),
            served_from(fetch_environment.config, root),
            fetch_environment.engine,
            services.maildir,
            set(services.maildir.glob("*.eml")),
            monkeypatch,
        )
        site.connect(site.connection(site.primary), site.connection(site.secondary))
        yield site


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mail_text(mail: Message) -> str:
    part = mail.get_payload(0) if mail.is_multipart() else mail
    return part.get_payload(decode=True).decode()


def test_openssh_primary_delivers_the_month(site):
    meta = site.fetch()
    assert meta["server"] == "cdr_sftp_primary" and meta["failovers"] == []
    rows = site.ledger()
    assert len(rows) == len(meta["files"]) and {r.server for r in rows} == {"cdr_sftp_primary"}
    carrier = next(r for r in rows if r.name == "carrier_cdr_202610.csv")
    assert carrier.sha256 == sha256_of(site.root / "cdr/carrier/carrier_cdr_202610.csv")
    assert meta["file_counts"]["ignored"] == 11
    assert site.primary.auth_attempts() == [login_name()] and site.secondary.auth_attempts() == []
    assert site.new_mails() == []


def test_openssh_primary_down_fails_over(site):
    site.primary.kill()
    meta = site.fetch()
    assert meta["server"] == "cdr_sftp_secondary"
    assert meta["failovers"] == [{"server": "cdr_sftp_primary", "error": "connection refused"}]
    assert {r.server for r in site.ledger()} == {"cdr_sftp_secondary"}
    (mail,) = site.new_mails()
    assert "cdr_sftp_primary failed, cdr_sftp_secondary took over" in mail["Subject"]


def test_openssh_changed_host_key_fails_over_and_alerts(site):
    site.connect(
        site.connection(
            site.primary,
            extra={**site.connection(site.primary)["extra"], "host_key": site.secondary.host_key},
        ),
        site.connection(site.secondary),
    )
    meta = site.fetch()
    assert meta["server"] == "cdr_sftp_secondary"
    assert site.primary.auth_attempts() == [], "a key was offered to a server with another host key"
    (mail,) = site.new_mails()
    assert "host key does not match the pinned key: possible man-in-the-middle attack" in mail_text(
        mail
    )


def test_openssh_primary_killed_in_the_middle_of_a_transfer(site):
    big = site.root / "cdr/carrier" / BIG
    big.write_bytes(os.urandom(100 * 1024 * 1024))

    def kill_primary_midway() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parts = list(site.config.archive_root.rglob(f".{BIG}.part"))
            if parts and parts[0].stat().st_size > 10 * 1024 * 1024:
                site.primary.kill()  # the session process and the daemon, SIGKILL
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_primary_midway)
    killer.start()
    meta = site.fetch()
    killer.join()
    assert site.primary.process.returncode is not None, "the primary was not killed mid-transfer"
    assert meta["server"] == "cdr_sftp_secondary"
    assert not list(site.config.archive_root.rglob("*.part"))
    (big_row,) = [r for r in site.ledger() if r.name == BIG]  # the secondary's copy only
    assert (big_row.server, big_row.sha256) == ("cdr_sftp_secondary", sha256_of(big))
    (mail,) = site.new_mails()
    assert "cdr_sftp_primary failed, cdr_sftp_secondary took over" in mail["Subject"]


def test_openssh_is_read_in_255_kib_requests_over_aes_gcm(site):
    """The fetch's speed (87 % of OpenSSH's own client, `make bench-sftp`) rests on these two:
    sshd's announced read limit is used, and AES-GCM is negotiated, not paramiko's aes128-ctr."""
    with open_sftp("cdr_sftp_primary", 10) as sftp:
        transport = sftp.get_channel().get_transport()
        assert read_request_bytes(sftp) == READ_REQUEST_BYTES == 255 * 1024
        assert (transport.local_cipher, transport.remote_cipher) == (
            "aes128-gcm@openssh.com",
            "aes128-gcm@openssh.com",
        )
