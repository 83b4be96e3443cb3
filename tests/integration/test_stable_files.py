"""A file still being written is never fetched, over real SFTP servers on loopback: it must keep
its size and mtime over sftp.stable_seconds (and while it downloads), or have its done marker or
required sidecar; until then the fetch leaves it for a later run and the sensor waits."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdr_billing.acquire import FetchResult, FileRequest, fetch_with_failover
from cdr_billing.config import PipelineConfig
from cdr_billing.contracts import Run, to_xcom
from cdr_billing.tasks.fetch import fetch_cdr_files, files_arrived
from cdr_billing.tasks.run import start_run
from cdr_devkit.services import LocalServices, connection_env

CARRIER = "cdr/carrier/carrier_cdr_202610.csv"
LATE = "carrier_cdr_202610_late.csv"
ROW = b"T202610-9999999,S1,voice,SUB-00061,2026-10-10T10:00:00Z,,,60,60,+4670,+4687,1,1,,X,0,o,p\n"


@contextmanager
def growing(path: Path) -> Iterator[None]:
    """Append a row to the file every 0.1 s until the block ends, as a slow upload would."""
    stop = threading.Event()

    def write() -> None:
        with path.open("ab") as handle:
            while not stop.is_set():
                handle.write(ROW)
                handle.flush()
                stop.wait(0.1)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


@pytest.fixture
def root(tmp_path, sftp_root) -> Path:
    """A copy of the month the test may change."""
    shutil.copytree(sftp_root, tmp_path / "root")
    return tmp_path / "root"


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """serve(root, **options): start an SFTP server as cdr_sftp_primary and cdr_sftp_secondary."""
    with LocalServices(tmp_path / "servers") as local:

        def start(root: Path, **options):
            server = local.start_sftp("sftp", root, **options)
            connection = server.connection(local.client_key)
            for key, value in connection_env(
                {"cdr_sftp_primary": connection, "cdr_sftp_secondary": connection}
            ).items():
                monkeypatch.setenv(key, value)
            return server

        yield start


def fetch(dest: Path, stable_seconds: float, **request_options) -> FetchResult:
    request = FileRequest(
        "cdr", "carrier", "/cdr/carrier", "carrier_cdr_202610*.csv", **request_options
    )
    return fetch_with_failover(
        ["cdr_sftp_primary"], [request], dest, timeout_seconds=5, stable_seconds=stable_seconds
    )


def names(result: FetchResult) -> tuple[list[str], list[str]]:
    return sorted(f.name for f in result.files), sorted(r.name for r in result.not_yet_stable)


def test_a_file_growing_between_the_listings_is_left_for_a_later_run(root, serve, tmp_path):
    serve(root)
    late = root / "cdr/carrier" / LATE
    late.write_bytes(ROW)
    with growing(late):
        first = fetch(tmp_path / "run-1", stable_seconds=1)
    assert names(first) == (["carrier_cdr_202610.csv"], [LATE])
    assert not (tmp_path / "run-1" / LATE).exists() and not list(
        (tmp_path / "run-1").glob(".*.part")
    )
    second = fetch(tmp_path / "run-2", stable_seconds=1)  # the upload has finished
    assert names(second) == (["carrier_cdr_202610.csv", LATE], [])
    assert (tmp_path / "run-2" / LATE).read_bytes() == late.read_bytes()


def test_a_file_that_grows_while_it_downloads_is_not_kept(root, serve, tmp_path):
    big = root / "cdr/carrier/carrier_cdr_202610_big.csv"
    big.write_bytes(ROW * (4 * 1024 * 1024 // len(ROW)))
    serve(root, max_bytes_per_second=2 * 1024 * 1024)  # about 2 s for the file

    def append_once_the_download_started() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (tmp_path / "run" / f".{big.name}.part").exists():
            time.sleep(0.02)
        with big.open("ab") as handle:
            handle.write(ROW)

    writer = threading.Thread(target=append_once_the_download_started)
    writer.start()
    result = fetch(tmp_path / "run", stable_seconds=0)
    writer.join()
    assert names(result) == (["carrier_cdr_202610.csv"], [big.name])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["carrier_cdr_202610.csv"]


def test_a_done_marker_source_fetches_marked_files_without_waiting(root, serve, tmp_path):
    serve(root)
    (root / "cdr/carrier" / LATE).write_bytes(ROW)
    (root / "cdr/carrier/carrier_cdr_202610.csv.done").write_text("")
    started = time.monotonic()
    result = fetch(tmp_path / "run-1", stable_seconds=60, done_marker="{name}.done")
    assert time.monotonic() - started < 10, "a marked source must not wait for the stable interval"
    assert names(result) == (["carrier_cdr_202610.csv"], [LATE])
    assert result.ignored == 5  # the other months' files; the marker is neither fetched nor ignored
    (root / "cdr/carrier" / f"{LATE}.done").write_text("")
    assert names(fetch(tmp_path / "run-2", stable_seconds=60, done_marker="{name}.done")) == (
        ["carrier_cdr_202610.csv", LATE],
        [],
    )


def test_a_source_requiring_sidecars_fetches_a_file_once_its_checksum_is_there(
    root, serve, tmp_path
):
    serve(root)
    carrier = root / CARRIER
    assert names(fetch(tmp_path / "run-1", stable_seconds=60, require_sidecar=True)) == (
        [],
        [carrier.name],
    )
    Path(f"{carrier}.sha256").write_text(
        f"{hashlib.sha256(carrier.read_bytes()).hexdigest()}  {carrier.name}\n"
    )
    assert names(fetch(tmp_path / "run-2", stable_seconds=60, require_sidecar=True)) == (
        [carrier.name],
        [],
    )


@pytest.fixture
def config(fetch_environment) -> PipelineConfig:
    """The shipped config on a fresh ledger, the carrier source marked done by "{name}.done"."""
    shipped = fetch_environment.config
    sources = tuple(
        replace(s, done_marker="{name}.done") if s.name == "carrier" else s for s in shipped.sources
    )
    return replace(shipped, sources=sources)


def october(config: PipelineConfig, run_id: str) -> Run:
    return start_run("2026-10", None, run_id, config)


BEFORE_THE_DEADLINE = datetime(2026, 11, 5, tzinfo=UTC)


def test_the_sensor_waits_while_a_sources_only_file_is_unmarked(root, serve, config):
    serve(root)
    assert files_arrived(october(config, "wait-1"), config, now=BEFORE_THE_DEADLINE) is False
    Path(f"{root / CARRIER}.done").write_text("")
    assert files_arrived(october(config, "wait-2"), config, now=BEFORE_THE_DEADLINE) is True


def test_the_sensor_waits_while_a_sources_only_file_grows(root, serve, config):
    carrier = next(s for s in config.sources if s.name == "carrier")
    config = replace(
        config,
        stable_seconds=1,
        sources=tuple(
            replace(carrier, done_marker=None) if s is carrier else s for s in config.sources
        ),
    )
    serve(root)
    with growing(root / CARRIER):
        assert files_arrived(october(config, "wait-1"), config, now=BEFORE_THE_DEADLINE) is False
    assert files_arrived(october(config, "wait-2"), config, now=BEFORE_THE_DEADLINE) is True


def test_the_fetch_counts_a_file_not_yet_stable_and_bills_the_marked_ones(root, serve, config):
    (root / "cdr/carrier" / LATE).write_bytes(ROW)
    Path(f"{root / CARRIER}.done").write_text("")
    serve(root)
    meta = to_xcom(fetch_cdr_files(october(config, "run-1"), config))
    assert meta["file_counts"]["not_yet_stable"] == 1
    assert LATE not in {f["name"] for f in meta["files"]} and "carrier_cdr_202610.csv" in {
        f["name"] for f in meta["files"]
    }
