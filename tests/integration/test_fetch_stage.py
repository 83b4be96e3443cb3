"""The fetch stage against real SFTP servers (two per test), a real PostgreSQL ledger and a
real SMTP server: failover, host keys, broken transfers, re-runs, changed content,
hostile names and checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import tracemalloc
from dataclasses import dataclass, replace
from datetime import UTC
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from sqlalchemy import select

from cdr_billing.acquire import AllServersFailedError, UnsafeRemoteNameError
from cdr_billing.config import PipelineConfig
from cdr_billing.contracts import to_xcom
from cdr_billing.schema import cdr_file
from cdr_billing.tasks.fetch import fetch_cdr_files, files_arrived
from cdr_billing.tasks.run import start_run
from cdr_devkit.services import LocalServices, SftpServer, connection_env, free_port

CARRIER = "cdr/carrier/carrier_cdr_202610.csv"


@dataclass
class Site:
    """Two SFTP servers with their own copies of the month, a fresh ledger, the mailbox."""

    local: LocalServices
    primary_root: Path
    secondary_root: Path
    config: PipelineConfig
    engine: object
    maildir: Path
    monkeypatch: pytest.MonkeyPatch
    mails_before: set

    def start(self, name: str, root: Path, **options) -> SftpServer:
        return self.local.start_sftp(name, root, **options)

    def connect(self, primary: dict, secondary: dict) -> None:
        for key, value in connection_env(
            {"cdr_sftp_primary": primary, "cdr_sftp_secondary": secondary}
        ).items():
            self.monkeypatch.setenv(key, value)

    def serve_both(self) -> tuple[SftpServer, SftpServer]:
        primary, secondary = (
            self.start("primary", self.primary_root),
            self.start("secondary", self.secondary_root),
        )
        self.connect(
            primary.connection(self.local.client_key), secondary.connection(self.local.client_key)
        )
        return primary, secondary

    def fetch(self, run_id: str = "run-1") -> dict:
        return to_xcom(
            fetch_cdr_files(start_run("2026-10", None, run_id, self.config), self.config)
        )

    def ledger(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(select(cdr_file).order_by(cdr_file.c.file_id)).all()

    def new_mails(self) -> list[Message]:
        paths = sorted(set(self.maildir.glob("*.eml")) - self.mails_before)
        return [message_from_bytes(p.read_bytes()) for p in paths]


def mail_text(mail: Message) -> str:
    part = mail.get_payload(0) if mail.is_multipart() else mail
    return part.get_payload(decode=True).decode()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def site(tmp_path, sftp_root, fetch_environment, services, monkeypatch):
    roots = []
    for name in ("primary", "secondary"):
        root = tmp_path / name
        shutil.copytree(sftp_root, root)
        roots.append(root)
    with LocalServices(tmp_path / "servers") as local:
        yield Site(
            local,
            roots[0],
            roots[1],
            fetch_environment.config,
            fetch_environment.engine,
            services.maildir,
            monkeypatch,
            set(services.maildir.glob("*.eml")),
        )


def test_healthy_primary_delivers_and_the_ledger_records_every_file(site):
    site.serve_both()
    meta = site.fetch()
    assert meta["server"] == "cdr_sftp_primary" and meta["failovers"] == []
    rows = site.ledger()
    assert sorted(r.name for r in rows) == sorted(
        [
            "conferencing_cdr_2026-10.xlsx",
            "carrier_cdr_202610.csv",
            "pbx_cdr_2026-10.csv",
            "tariff_2026-10-01.csv",
            "entitlements_2026-04-02.csv",  # the snapshot in force on October 1st
            "entitlements_2026-11-02.csv",  # and the later one
        ]
    )
    assert {(r.status, r.server, r.billing_month) for r in rows} == {
        ("accepted", "cdr_sftp_primary", "2026-10")
    }
    carrier = next(r for r in rows if r.name == "carrier_cdr_202610.csv")
    assert carrier.sha256 == sha256_of(site.primary_root / CARRIER)
    assert carrier.size == (site.primary_root / CARRIER).stat().st_size
    assert (
        meta["file_counts"]["ignored"] == 11
    )  # the other months' CDR files (see conftest.BACKFILL_MONTHS)
    assert site.new_mails() == []


def test_primary_down_before_the_run_fails_over_with_one_alert(site):
    secondary = site.start("secondary", site.secondary_root)
    dead_primary = {**secondary.connection(site.local.client_key), "port": free_port()}
    site.connect(dead_primary, secondary.connection(site.local.client_key))
    started = time.monotonic()
    meta = site.fetch()
    assert time.monotonic() - started < 15, "failover must take seconds, not the hook's retries"
    assert meta["server"] == "cdr_sftp_secondary"
    assert {r.server for r in site.ledger()} == {"cdr_sftp_secondary"}
    (mail,) = site.new_mails()
    assert mail["Subject"] == (
        "[CDR billing] SFTP failover for 2026-10: cdr_sftp_primary failed, "
        "cdr_sftp_secondary took over"
    )
    assert "connection refused" in mail_text(mail)


def test_primary_killed_in_the_middle_of_a_100_mb_transfer(site, tmp_path):
    big_name = "carrier_cdr_202610_big.csv"
    (site.primary_root / "cdr/carrier" / big_name).write_bytes(os.urandom(100 * 1024 * 1024))
    os.link(
        site.primary_root / "cdr/carrier" / big_name, site.secondary_root / "cdr/carrier" / big_name
    )
    primary = site.start("primary", site.primary_root, max_bytes_per_second=20 * 1024 * 1024)
    secondary = site.start("secondary", site.secondary_root)
    site.connect(
        primary.connection(site.local.client_key), secondary.connection(site.local.client_key)
    )

    def kill_primary_midway() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parts = list(site.config.archive_root.rglob(f".{big_name}.part"))
            if parts and parts[0].stat().st_size > 10 * 1024 * 1024:
                primary.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_primary_midway)
    killer.start()
    tracemalloc.start()
    meta = site.fetch()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    killer.join()
    assert primary.process.returncode is not None, "the primary was not killed mid-transfer"
    assert not list(site.config.archive_root.rglob("*.part"))
    assert meta["server"] == "cdr_sftp_secondary"
    big = next(r for r in site.ledger() if r.name == big_name)
    assert big.sha256 == sha256_of(site.secondary_root / "cdr/carrier" / big_name)
    assert big.server == "cdr_sftp_secondary"
    assert peak < 40 * 1024 * 1024, (
        f"download memory grew to {peak / 2**20:.0f} MiB for a 100 MiB file"
    )
    (mail,) = site.new_mails()
    assert "cdr_sftp_primary failed, cdr_sftp_secondary took over" in mail["Subject"]


def test_changed_host_key_on_the_primary_is_never_trusted(site):
    primary, secondary = site.serve_both()
    impostor = primary.connection(site.local.client_key, host_key=secondary.host_key)
    site.connect(impostor, secondary.connection(site.local.client_key))
    meta = site.fetch()
    assert meta["server"] == "cdr_sftp_secondary"
    (mail,) = site.new_mails()
    assert "host key does not match the pinned key: possible man-in-the-middle attack" in mail_text(
        mail
    )


def test_authentication_failure_fails_over(site, tmp_path):
    primary, secondary = site.serve_both()
    other = LocalServices(tmp_path / "other")  # has a client key of its own, unknown to the servers
    site.connect(primary.connection(other.client_key), secondary.connection(site.local.client_key))
    assert site.fetch()["failovers"] == [
        {"server": "cdr_sftp_primary", "error": "authentication failed"}
    ]


def test_missing_remote_directory_fails_over(site):
    shutil.rmtree(site.primary_root / "cdr/carrier")
    site.serve_both()
    meta = site.fetch()
    assert meta["server"] == "cdr_sftp_secondary"
    assert meta["failovers"][0]["error"].startswith("listing failed")


def test_both_servers_down_is_a_clear_failure(site):
    site.connect(
        {
            **site.start("primary", site.primary_root).connection(site.local.client_key),
            "port": free_port(),
        },
        {
            **site.start("secondary", site.secondary_root).connection(site.local.client_key),
            "port": free_port(),
        },
    )
    with pytest.raises(
        AllServersFailedError,
        match="cdr_sftp_primary: connection refused; cdr_sftp_secondary: connection refused",
    ):
        site.fetch()
    assert site.ledger() == []


def test_a_rerun_of_the_month_downloads_nothing_again(site):
    site.serve_both()
    first = site.fetch("run-1")
    again = site.fetch("run-2")
    assert first["file_counts"]["downloaded"] == 6
    assert again["file_counts"] == {**again["file_counts"], "downloaded": 0, "reused": 6}
    assert sorted(f["local_path"] for f in again["files"]) == sorted(
        f["local_path"] for f in first["files"]
    )
    assert len(site.ledger()) == 6


def test_same_name_with_new_content_is_held_and_the_billed_content_stays(site):
    site.serve_both()
    first = site.fetch("run-1")
    original_sha = sha256_of(site.primary_root / CARRIER)
    for root in (site.primary_root, site.secondary_root):
        with (root / CARRIER).open("a") as handle:
            handle.write(
                "T202610-9999999,S1,voice,SUB-00061,2026-10-10T10:00:00Z,"
                ",,60,60,+4670,+4687,1,1,,X,0,o,p\n"
            )
    again = site.fetch("run-2")
    carrier_rows = [r for r in site.ledger() if r.name == "carrier_cdr_202610.csv"]
    assert [(r.status, r.sha256 == original_sha) for r in carrier_rows] == [
        ("accepted", True),
        ("held", False),
    ]
    assert again["file_counts"]["held"] == 1
    used = next(f for f in again["files"] if f["name"] == "carrier_cdr_202610.csv")
    billed_before = next(f for f in first["files"] if f["name"] == used["name"])
    assert (used["sha256"], used["local_path"]) == (original_sha, billed_before["local_path"])
    (mail,) = site.new_mails()
    assert (
        mail["Subject"]
        == "[CDR billing] carrier_cdr_202610.csv changed content: held, not billed (2026-10)"
    )


@pytest.mark.parametrize(
    "hostile", ["carrier_cdr_202610\x1b[2J.csv", "carrier_cdr_202610..\\..\\evil.csv"]
)
def test_hostile_remote_names_are_refused(site, hostile):
    for root in (site.primary_root, site.secondary_root):
        (root / "cdr/carrier" / hostile).write_text("x")
    site.serve_both()
    with pytest.raises(UnsafeRemoteNameError, match="refusing unsafe remote file name"):
        site.fetch()
    assert site.ledger() == []
    assert not [
        p for p in site.config.archive_root.rglob("*") if p.is_file()
    ]  # downloads stage there


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_checksum_mismatch_fails_over_to_a_good_copy(site, algorithm):
    real = hashlib.new(algorithm, (site.primary_root / CARRIER).read_bytes()).hexdigest()
    (site.primary_root / f"{CARRIER}.{algorithm}").write_text(
        "0" * len(real) + "  carrier_cdr_202610.csv\n"
    )
    (site.secondary_root / f"{CARRIER}.{algorithm}").write_text(f"{real}  carrier_cdr_202610.csv\n")
    site.serve_both()
    meta = site.fetch()
    assert meta["server"] == "cdr_sftp_secondary"
    assert f"{algorithm} checksum does not match" in meta["failovers"][0]["error"]
    ledger_row = next(r for r in site.ledger() if r.name == "carrier_cdr_202610.csv")
    assert ledger_row.sha256 == sha256_of(site.secondary_root / CARRIER)
    assert len(site.new_mails()) == 1


def test_waiting_for_files_until_the_deadline(site):
    from datetime import datetime

    from cdr_billing.tasks.fetch import FilesNotArrivedError

    site.serve_both()
    november = start_run("2026-11", None, "wait-1", site.config)
    assert files_arrived(november, site.config, now=datetime(2026, 12, 5, tzinfo=UTC)) is False
    with pytest.raises(FilesNotArrivedError, match="files for month 2026-11 have not arrived"):
        files_arrived(november, site.config, now=datetime(2026, 12, 12, tzinfo=UTC))
    october = start_run("2026-10", None, "wait-2", site.config)
    assert files_arrived(october, site.config, now=datetime(2027, 6, 1, tzinfo=UTC)) is True


def test_processed_files_move_on_the_server_and_reruns_use_the_archive(site):
    carrier = next(s for s in site.config.sources if s.name == "carrier")
    moved = replace(carrier, processed_dir="/cdr/carrier/processed")
    site.config = replace(
        site.config, sources=tuple(moved if s is carrier else s for s in site.config.sources)
    )
    site.serve_both()
    first = site.fetch("run-1")
    assert not (site.primary_root / CARRIER).exists()
    assert (site.primary_root / "cdr/carrier/processed/carrier_cdr_202610.csv").exists()
    assert (site.secondary_root / CARRIER).exists(), "only the server that delivered moves its file"
    site.connect(*[site.local.servers[0].connection(site.local.client_key)] * 2)  # the primary only
    again = site.fetch("run-2")
    reused = next(f for f in again["files"] if f["name"] == "carrier_cdr_202610.csv")
    assert (
        reused["local_path"]
        == next(f for f in first["files"] if f["name"] == "carrier_cdr_202610.csv")["local_path"]
    )
    assert files_arrived(start_run("2026-10", None, "wait", site.config), site.config)


def test_a_server_that_never_answers_times_out_and_fails_over(site):
    import socket

    site.config = replace(site.config, connect_timeout_seconds=2)
    primary, secondary = site.serve_both()
    with socket.socket() as black_hole:  # accepts TCP, never says a word
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen()
        silent = {**primary.connection(site.local.client_key), "port": black_hole.getsockname()[1]}
        site.connect(silent, secondary.connection(site.local.client_key))
        started = time.monotonic()
        meta = site.fetch()
    assert time.monotonic() - started < 10
    assert meta["server"] == "cdr_sftp_secondary"
    assert meta["failovers"][0]["error"].startswith("connection timed out")
