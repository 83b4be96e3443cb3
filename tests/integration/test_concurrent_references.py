"""Shared reference writes under concurrency, on a real PostgreSQL: 20 attempts at once, each
with its own engine (as parallel runs and retried tasks have), of the month's entitlement pin
(first billing and refresh), a snapshot, a tariff version, ledger rows, quarantine rows and the
month's load. None fails; each leaves one row, and every attempt gets the same id back."""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from cdr_billing import entitlements, ledger, load, migrations, tariff
from cdr_billing.acquire import FetchedFile
from cdr_billing.config import load_config

ATTEMPTS = 20
DATABASES = itertools.count()
T = TypeVar("T")
HEADER = (
    "account_id,user_principal_name,customer_id,sequence_number,default_sequence_number,"
    "entitled,last_login\n"
)
SNAPSHOT = HEADER + "0001,a@x,C1,101,100,true,2026-09-30\n0002,b@x,C1,,100,true,2026-09-30\n"
NOW = datetime(2026, 11, 3, tzinfo=UTC)
TIMEZONE = "Europe/Stockholm"


@pytest.fixture
def database(postgres) -> str:
    """The URL of a new, migrated billing database."""
    url = postgres.url_of(postgres.create_database(f"concurrent_{next(DATABASES)}"))
    migrations.upgrade(create_engine(url))
    return url


def at_once(url: str, attempt: Callable[[Engine], T]) -> list[T]:
    """Run ATTEMPTS attempts together, each on an engine of its own, released at the same moment."""
    start = threading.Barrier(ATTEMPTS)

    def one(_: int) -> T:
        engine = create_engine(url)
        try:
            # connected before the start, so the attempts meet in the database
            with engine.connect():
                pass
            start.wait()
            return attempt(engine)
        finally:
            engine.dispose()

    with ThreadPoolExecutor(ATTEMPTS) as pool:
        return list(pool.map(one, range(ATTEMPTS)))


def count(url: str, table: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
    engine.dispose()
    return rows


def snapshot_file(tmp_path: Path, name: str, content: str) -> Callable[[], entitlements.Snapshot]:
    path = tmp_path / name
    path.write_text(content)
    return lambda: entitlements.from_file(path, NOW, TIMEZONE)


def test_a_month_s_first_billing_pins_one_snapshot(database, tmp_path):
    capture = snapshot_file(tmp_path, "entitlements_2026-10-01.csv", SNAPSHOT)
    ids = at_once(
        database,
        lambda engine: entitlements.snapshot_for_month(engine, "2026-10", capture, refresh=False),
    )
    assert len(set(ids)) == 1
    assert (count(database, "month_entitlement"), count(database, "entitlement_snapshot")) == (1, 1)


def test_concurrent_refreshes_leave_one_pin_on_the_fresh_snapshot(database, tmp_path):
    first = entitlements.snapshot_for_month(
        create_engine(database),
        "2026-10",
        snapshot_file(tmp_path, "entitlements_2026-10-01.csv", SNAPSHOT),
        refresh=False,
    )
    fresh = snapshot_file(
        tmp_path, "entitlements_2026-10-20.csv", SNAPSHOT + "0003,c@x,C2,,200,true,2026-10-19\n"
    )
    ids = at_once(
        database,
        lambda engine: entitlements.snapshot_for_month(engine, "2026-10", fresh, refresh=True),
    )
    assert len(set(ids)) == 1 and ids[0] != first
    assert (count(database, "month_entitlement"), count(database, "entitlement_snapshot")) == (1, 2)
    with create_engine(database).connect() as conn:
        assert conn.execute(text("SELECT snapshot_id FROM month_entitlement")).scalar() == ids[0]


def test_a_snapshot_is_stored_once(database, tmp_path):
    snapshot = snapshot_file(tmp_path, "entitlements_2026-10-01.csv", SNAPSHOT)()
    ids = at_once(database, lambda engine: entitlements.store(engine, snapshot))
    assert len(set(ids)) == 1
    assert (count(database, "entitlement_snapshot"), count(database, "entitlement")) == (1, 2)


def test_a_tariff_file_is_stored_as_one_version(database, sftp_root):
    newest = sorted((sftp_root / "reference").glob("tariff*.csv"))[-1]
    billing = load_config().billing
    ids = at_once(database, lambda engine: tariff.load_file(engine, newest, billing))
    assert len(set(ids)) == 1
    assert count(database, "tariff_version") == 1


def test_fetched_files_are_recorded_once(database, tmp_path):
    files = [
        FetchedFile(
            "cdr",
            "carrier",
            name,
            str(tmp_path / name),
            10,
            1_700_000_000,
            hashlib.sha256(name.encode()).hexdigest(),
            "p",
        )
        for name in ("carrier_cdr_202610.csv", "carrier_cdr_202610_2.csv")
    ]
    results = at_once(
        database, lambda engine: [entry.status for entry in ledger.record(engine, "2026-10", files)]
    )
    assert results == [[ledger.ACCEPTED, ledger.ACCEPTED]] * ATTEMPTS
    assert count(database, "cdr_file") == 2


def test_a_file_s_quarantined_rows_are_stored_once(database):
    rows = pd.DataFrame(
        {
            "source": "carrier",
            "source_file": "carrier_cdr_202610.csv",
            "source_row": [2, 5],
            "reason_code": "BAD_NUMBER",
            "reasons": "BAD_NUMBER",
            "original_values": "{}",
        }
    )
    at_once(
        database,
        lambda engine: load.store_quarantine(
            engine, "2026-10", "run-1", "carrier_cdr_202610.csv", rows
        ),
    )
    assert count(database, "quarantined_row") == 2


def _batch() -> load.Batch:
    lines = pd.DataFrame(
        [("C1", "100", "EUR", 500, 2, 120)],
        columns=[
            "customer_id",
            "sequence_number",
            "currency",
            "total_minor",
            "call_count",
            "billed_seconds",
        ],
    )
    shares = pd.DataFrame(
        columns=[
            "service_provider",
            "currency",
            "share_basis_points",
            "call_count",
            "billed_minor",
            "share_minor",
        ]
    )
    exceptions = pd.DataFrame(
        columns=["kind", "reason_code", "source_file", "source_row", "transaction_id", "detail"]
    )
    return load.Batch(lines, lines.assign(user_id="u1"), shares, [], exceptions)


def test_a_run_s_load_makes_one_batch_and_every_attempt_gets_it(database):
    before = load.load_month(create_engine(database), "2026-10", "run-0", _batch(), {"read": 2})
    results = at_once(
        database, lambda engine: load.load_month(engine, "2026-10", "run-1", _batch(), {"read": 2})
    )
    assert {(r.batch_id, r.superseded_batch_id) for r in results} == {
        (before.batch_id + 1, before.batch_id)
    }
    assert sum(not r.already_loaded for r in results) == 1
    assert (count(database, "billing_batch"), count(database, "billing_line")) == (2, 2)


def test_concurrent_runs_of_a_month_chain_their_batches(database):
    runs = iter(range(ATTEMPTS))
    lock = threading.Lock()

    def load_a_run(engine: Engine) -> load.LoadResult:
        with lock:
            run = next(runs)
        return load.load_month(engine, "2026-10", f"run-{run}", _batch(), {"read": 2})

    results = at_once(database, load_a_run)
    superseded = sorted((r.superseded_batch_id for r in results), key=lambda batch: batch or 0)
    # each replaced the one loaded before it
    assert superseded == [
        None,
        *sorted(r.batch_id for r in results)[:-1],
    ]
    with create_engine(database).connect() as conn:
        statuses = conn.execute(
            text("SELECT status, count(*) FROM billing_batch GROUP BY status ORDER BY status")
        ).all()
    assert [tuple(s) for s in statuses] == [("current", 1), ("superseded", ATTEMPTS - 1)]
