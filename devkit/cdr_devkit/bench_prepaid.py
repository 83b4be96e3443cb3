"""`make bench-prepaid`: a day of 30-minute CDR files through the prepaid DAG on a running Airflow.

50,000 prepaid accounts (EUR; most credited for the day, 1 % topped up by the local payment
gateway during the day, 0.2 % declined and locked, then credited at the desk and unlocked) and a
day of 48 carrier CSV files, one per half hour, 1,000,000 calls of those accounts. Airflow runs as
in production (api-server, scheduler with the LocalExecutor, dag-processor, PostgreSQL metadata
and billing databases) with a local SFTP server, payment gateway, switch and SMTP server. For
each file: the file is renamed into the served folder, a cdr_prepaid_balances run is triggered
through the REST API, and the time from the rename to the balances committed (debit_balances'
end) and to the lock events delivered (deliver_switch_events' end; the switch's own record of
the events) is measured.

The ledger step is measured against a set-based SQL peer in the same run: the run's prepaid
calls (the DAG's own rated calls) go through `balances.debit_calls` on a copy of the ledger
and, on a copy of the same tables, through one INSERT ... ON CONFLICT DO NOTHING RETURNING plus
one UPDATE of the balances, each in one transaction, in alternating order.

Then every increment is replayed with injected retries (the runs' debit_balances and
control_credit cleared through the REST API so Airflow runs them again; the debits run again
in this process from two threads at once) and the ledger is proven: each call one un-reversed
debit, every cached balance the sum of its entries and equal to the initial credit plus the
gateway's own record of the approved top-ups plus the desk credits, less the day's costs as this
generator priced them (longest prefix, increments, fee, minimum charge, rounded half up once:
not the project's engine). Exit 1 when a check fails. The data is cached under
`.bench/prepaid/data/`, the run's servers and files live under `.bench/prepaid/run/`, the
figures in `.bench/prepaid/bench_prepaid.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import Connection, Engine

from cdr_billing.canonical import CARRIER_FIELDS
from cdr_devkit.airflow_env import PROJECT_ROOT, airflow_settings, migrate
from cdr_devkit.airflow_server import RunningAirflow
from cdr_devkit.bench_data import DURATIONS, _Clock, _write_entitlements, _write_tariff
from cdr_devkit.bench_pipeline import SOURCE
from cdr_devkit.postgres import LocalPostgres
from cdr_devkit.services import (
    LocalServices,
    ServiceError,
    connection_env,
    smtp_connection,
    stop_on_sigterm,
)

DAG_ID = "cdr_prepaid_balances"
DATA_VERSION = 1  # bump when the generated content changes: the cache key includes it
DAY = date(2026, 10, 21)  # in the billing month; after the tariff's changes of the 15th and 20th
ZONE = ZoneInfo("Europe/Stockholm")
SLOT_SECONDS = 1800
NUMBER_DIGITS = 12
DEFAULT_ROOT = PROJECT_ROOT / ".bench" / "prepaid"
SHIPPED_CONFIG = PROJECT_ROOT / "include" / "config" / "pipeline.yaml"
RUN_TIMEOUT_SECONDS = 900
DAG_PARSE_TIMEOUT_SECONDS = 180
TARGET_END_TO_END_SECONDS = 60.0
TARGET_CALLS = 20_000
DECLINING_SHARE, TOPPED_UP_SHARE = 0.002, 0.01
LOW_MINOR, LOCK_MINOR, UNLOCK_MINOR, TOPUP_MINOR = 500, 0, 100, 2_000
OPERATOR = "bench"


# --- the day's data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepaidDay:
    """Where a generated day's files are: the CDR files (one per slot), the references, the
    accounts (their settings and initial credit) and each call's price by this generator."""

    root: Path
    cdr_files: tuple[Path, ...]
    tariff: Path
    entitlements: Path
    accounts: Path  # parquet: account_id, payment_method_ref, credit_minor, topup_minor, role
    calls: Path  # parquet: call_key, account_id, cost_minor, file


class Rates(NamedTuple):
    """The tariff's rates valid on the day, per prefix (micro-units, seconds)."""

    prefixes: dict[str, int]  # prefix -> row index
    fee: np.ndarray
    price: np.ndarray
    minimum: np.ndarray
    first: np.ndarray
    following: np.ndarray
    currency: np.ndarray


def day_dir(base: Path, accounts: int, files: int, calls: int, seed: int) -> Path:
    return base / f"accounts{accounts}_files{files}_calls{calls}_seed{seed}_v{DATA_VERSION}"


def _listing(root: Path, files: int) -> PrepaidDay:
    stamp = DAY.strftime("%Y%m%d")
    cdr = tuple(
        root / "cdr" / f"carrier_cdr_{stamp}_{k * 30 // 60:02d}{k * 30 % 60:02d}.csv"
        for k in range(files)
    )
    return PrepaidDay(
        root,
        cdr,
        root / "reference" / f"tariff_{DAY:%Y-%m}-01.csv",
        root / "reference" / "entitlements_2026-11-02.csv",
        root / "accounts.parquet",
        root / "calls.parquet",
    )


def ensure_day(
    base: Path, accounts: int, files: int, calls: int, seed: int = 26, log=print
) -> PrepaidDay:
    """The cached day for these parameters, generated first when needed."""
    root = day_dir(base, accounts, files, calls, seed)
    day = _listing(root, files)
    if (root / "complete").exists():
        log(f"reusing the generated day in {root}")
        return day
    log(f"generating {calls:,} calls of {accounts:,} accounts in {files} files under {root} ...")
    shutil.rmtree(root, ignore_errors=True)
    (root / "cdr").mkdir(parents=True)
    (root / "reference").mkdir()
    prefixes = _write_tariff(day.tariff, random.Random(seed))
    _write_entitlements(day.entitlements, np.random.default_rng(seed + 1))
    rates = day_rates(day.tariff)
    priced = _write_calls(day, calls, accounts, prefixes, rates, seed)
    priced.to_parquet(day.calls, index=False)
    _plan_accounts(priced, accounts, seed).to_parquet(day.accounts, index=False)
    (root / "complete").write_text("complete\n", encoding="utf-8")
    return day


def _micro(text_value: str) -> int:
    whole, _, fraction = text_value.partition(".")
    return int(whole) * 1_000_000 + int((fraction + "000000")[:6])


def day_rates(tariff: Path) -> Rates:
    """The tariff file's rows valid on DAY (valid_to exclusive), read with csv, not the engine."""
    valid = []
    with tariff.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            starts = not row["valid_from"] or date.fromisoformat(row["valid_from"]) <= DAY
            ends = not row["valid_to"] or date.fromisoformat(row["valid_to"]) > DAY
            if starts and ends:
                valid.append(row)
    return Rates(
        {row["prefix"]: n for n, row in enumerate(valid)},
        np.array([_micro(r["connection_fee"]) for r in valid], dtype=np.int64),
        np.array([_micro(r["price_per_minute"]) for r in valid], dtype=np.int64),
        np.array([_micro(r["minimum_charge"]) for r in valid], dtype=np.int64),
        np.array([int(r["first_increment"]) for r in valid], dtype=np.int64),
        np.array([int(r["next_increment"]) for r in valid], dtype=np.int64),
        np.array([r["currency"] for r in valid]),
    )


def longest_prefix_rows(digits: np.ndarray, rates: Rates) -> np.ndarray:
    """Per 12-digit number: the row of its longest tariff prefix valid on the day (-1: none)."""
    found = np.full(len(digits), -1, dtype=np.int64)
    by_length: dict[int, list[str]] = {}
    for prefix in rates.prefixes:
        by_length.setdefault(len(prefix), []).append(prefix)
    for length in sorted(by_length):  # longer prefixes overwrite shorter ones
        values = np.array(sorted(int(p) for p in by_length[length]), dtype=np.int64)
        rows = np.array(
            [rates.prefixes[str(v)] for v in values], dtype=np.int64
        )  # no leading zeros in prefixes
        head = digits // 10 ** (NUMBER_DIGITS - length)
        at = np.minimum(np.searchsorted(values, head), len(values) - 1)
        hit = values[at] == head
        found[hit] = rows[at[hit]]
    return found


def cost_minor(rows: np.ndarray, duration: np.ndarray, rates: Rates) -> np.ndarray:
    """The calls' costs in cents: increments, fee, minimum charge, rounded half up once."""
    first, following = rates.first[rows], rates.following[rows]
    extra = np.maximum(duration - first, 0)
    billed = np.where(duration == 0, 0, first + -(-extra // following) * following)
    sixty = np.maximum(rates.fee[rows] * 60 + rates.price[rows] * billed, rates.minimum[rows] * 60)
    return (2 * sixty + 600_000) // 1_200_000  # micro * 60 -> cents, half up


def _destinations(rng: np.random.Generator, n: int, prefixes: list[str]) -> np.ndarray:
    """12-digit numbers under the tariff's EUR prefixes (a prepaid account pays in EUR)."""
    eur = [p for p in prefixes if not p.startswith("46")]
    values = np.array([int(p) for p in eur], dtype=np.int64)
    lengths = np.array([len(p) for p in eur], dtype=np.int64)
    pick = rng.integers(0, len(eur), n)
    scale = np.power(10, NUMBER_DIGITS - lengths[pick], dtype=np.int64)
    return values[pick] * scale + (rng.random(n) * scale).astype(np.int64)


def _slot_start(k: int) -> int:
    midnight = datetime(DAY.year, DAY.month, DAY.day, tzinfo=ZONE)
    return int(midnight.timestamp()) + k * SLOT_SECONDS


def _write_calls(
    day: PrepaidDay, calls: int, accounts: int, prefixes: list[str], rates: Rates, seed: int
) -> pd.DataFrame:
    """Each slot's file (the carrier_csv columns, completed calls) and every call's price."""
    files = len(day.cdr_files)
    clock = _Clock(_slot_start(0) - 3600, _slot_start(files) + 2 * 86_400)
    sizes = [calls // files + (k < calls % files) for k in range(files)]
    priced, first = [], 0
    for k, (path, n) in enumerate(zip(day.cdr_files, sizes, strict=True)):
        rng = np.random.default_rng([seed, k])
        starts = np.sort(rng.integers(_slot_start(k), _slot_start(k + 1), n))
        duration = np.where(
            rng.random(n) < 0.7,
            DURATIONS[rng.integers(0, len(DURATIONS), n)],
            rng.integers(1, 3601, n),
        )
        user = rng.integers(0, accounts, n)
        digits = _destinations(rng, n, prefixes)
        rows = longest_prefix_rows(digits, rates)
        if (rows < 0).any() or (rates.currency[rows] != "EUR").any():
            raise ValueError("a generated number has no EUR rate")
        g = np.arange(first, first + n)
        ids = np.char.add(f"T{DAY:%Y%m%d}-", np.char.zfill(g.astype(str), 9))
        users = np.char.add("SUB-", np.char.zfill(user.astype(str), 6))
        _write_file(path, ids, users, starts, duration, digits, rng, clock)
        priced.append(
            pd.DataFrame(
                {
                    "call_key": np.char.add(f"{SOURCE}:", ids),
                    "account_id": users,
                    "cost_minor": cost_minor(rows, duration, rates),
                    "file": k,
                }
            )
        )
        first += n
    return pd.concat(priced, ignore_index=True)


def _write_file(path, ids, users, starts, duration, digits, rng, clock) -> None:
    n = len(ids)
    number = pa.array(digits).cast(pa.string())
    table = {
        "transaction_id": pa.array(ids),
        "session_id": pa.array(np.char.replace(ids, "T", "S")),
        "service_name": pa.array(np.full(n, "voice")),
        "user_id": pa.array(users),
        "start_of_usage": clock.text(starts),
        "connect_time": clock.text(starts + 3),
        "end_of_usage": clock.text(starts + duration),
        "duration_of_usage": pa.array(duration.astype(str)),
        "amount_of_usage": pa.array(duration.astype(str)),
        "originating_party": pa.array(
            np.char.add("+46701", np.char.zfill(rng.integers(0, 10**6, n).astype(str), 6))
        ),
        "destination_party": pa.array(np.char.add("+", np.asarray(number, dtype=str))),
        "transaction_part_number": pa.array(np.full(n, "1")),
        "completion_status": pa.array(np.full(n, "1")),
        "additional_info": pa.array(np.full(n, "")),
        "service_provider": pa.array(np.full(n, "NordCarrier")),
        "revenue_share_percentage": pa.array(np.full(n, "")),
        "party_to_charge": pa.array(np.full(n, "originating")),
        "charging_info": pa.array(np.full(n, "prepaid")),
    }
    with path.open("wb") as handle:
        handle.write((",".join(CARRIER_FIELDS) + "\n").encode())
        pacsv.write_csv(
            pa.table({name: table[name] for name in CARRIER_FIELDS}),
            handle,
            write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
        )


def _plan_accounts(priced: pd.DataFrame, accounts: int, seed: int) -> pd.DataFrame:
    """Each account's role, payment method, top-up amount and initial credit: most are credited
    for the whole day and more; a few are credited half their day, topped up by the gateway
    (approve) or declined and locked (decline) on the way."""
    ids = np.char.add("SUB-", np.char.zfill(np.arange(accounts).astype(str), 6))
    day_cost = priced.groupby("account_id")["cost_minor"].sum().reindex(ids, fill_value=0)
    cost = day_cost.to_numpy(np.int64)
    rng = np.random.default_rng(seed + 3)
    draw = rng.random(accounts)
    spends = cost > 4 * LOW_MINOR
    declining = spends & (draw < DECLINING_SHARE * 2 + 0.002)
    declining &= np.cumsum(declining) <= max(2, round(accounts * DECLINING_SHARE))
    topped = spends & ~declining & (draw > 1 - TOPPED_UP_SHARE - 0.005)
    topped &= np.cumsum(topped) <= max(2, round(accounts * TOPPED_UP_SHARE))
    role = np.where(declining, "declines", np.where(topped, "topped_up", "steady"))
    credit = np.where(role == "steady", cost + cost // 5 + 1_000, cost // 2)
    return pd.DataFrame(
        {
            "account_id": ids,
            "role": role,
            "payment_method_ref": np.where(declining, "decline", "approve"),
            "credit_minor": credit,
            "topup_minor": np.where(topped, cost + TOPUP_MINOR, TOPUP_MINOR),
            "day_cost_minor": cost,
        }
    )


# --- the billing databases ----------------------------------------------------------------------


def load_accounts(engine: Engine, accounts: pd.DataFrame) -> None:
    """The accounts as prepaid_account rows (audited) with their initial manual credit, bulk."""
    from cdr_billing.prepaid.accounts import AccountSettings
    from cdr_billing.schema import balance_entry, prepaid_account, prepaid_account_change

    now = datetime.now(UTC)
    settings = [
        AccountSettings("EUR", LOW_MINOR, int(t), LOCK_MINOR, UNLOCK_MINOR, method, 1)
        for t, method in zip(accounts["topup_minor"], accounts["payment_method_ref"], strict=True)
    ]
    ids = accounts["account_id"].tolist()
    with engine.begin() as conn:
        conn.execute(
            insert(prepaid_account),
            [
                {
                    "account_id": a,
                    **s.__dict__,
                    "balance_minor": 0,
                    "last_entry_id": None,
                    "locked": False,
                    "updated_at": now,
                }
                for a, s in zip(ids, settings, strict=True)
            ],
        )
        conn.execute(
            insert(prepaid_account_change),
            [
                {
                    "account_id": a,
                    "changed_by": OPERATOR,
                    "changed_at": now,
                    "settings": s.as_json(),
                }
                for a, s in zip(ids, settings, strict=True)
            ],
        )
        conn.execute(
            insert(balance_entry),
            [
                {
                    "account_id": a,
                    "kind": "credit",
                    "amount_minor": int(c),
                    "currency": "EUR",
                    "idempotency_key": f"manual:bench-initial-{a}",
                    "reason": "initial credit (bench)",
                    "created_by": OPERATOR,
                    "created_at": now,
                }
                for a, c in zip(ids, accounts["credit_minor"], strict=True)
                if c > 0
            ],
        )
        conn.execute(
            text(
                "UPDATE prepaid_account a SET balance_minor = e.amount_minor, "
                "last_entry_id = e.entry_id FROM balance_entry e "
                "WHERE e.idempotency_key = 'manual:bench-initial-' || a.account_id"
            )
        )
        conn.execute(text("ANALYZE"))


def create_peer(engine: Engine) -> None:
    """The SQL peer's tables: copies of prepaid_account and balance_entry (indexes, keys and
    rows) in schema `peer`, with the ledger's foreign keys."""
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA peer"))
        for table in ("prepaid_account", "balance_entry"):
            conn.execute(text(f"CREATE TABLE peer.{table} (LIKE public.{table} INCLUDING ALL)"))
            conn.execute(text(f"INSERT INTO peer.{table} SELECT * FROM public.{table}"))
        conn.execute(
            text(
                "ALTER TABLE peer.balance_entry ADD FOREIGN KEY (account_id) "
                "REFERENCES peer.prepaid_account (account_id), "
                "ADD FOREIGN KEY (reverses_entry_id) REFERENCES peer.balance_entry (entry_id)"
            )
        )
        conn.execute(text("ANALYZE peer.prepaid_account"))
        conn.execute(text("ANALYZE peer.balance_entry"))


_PEER_CALLS = """CREATE TEMPORARY TABLE peer_calls (call_key TEXT, account_id VARCHAR(128),
  cost_minor BIGINT, currency VARCHAR(3), call_start TIMESTAMPTZ, billed_seconds BIGINT,
  tariff_version INTEGER, source_file TEXT, source_row BIGINT) ON COMMIT DROP"""
_PEER_DEBIT = """WITH posted AS (
  INSERT INTO peer.balance_entry (account_id, kind, amount_minor, currency, idempotency_key,
    call_key, call_start, billed_seconds, tariff_version, source_file, source_row, run_id,
    created_by, created_at)
  SELECT c.account_id, 'debit', -c.cost_minor, c.currency, 'debit:' || c.call_key || '\\:1',
    c.call_key, c.call_start, c.billed_seconds, c.tariff_version, c.source_file, c.source_row,
    :run_id, 'pipeline', now()
  FROM peer_calls c JOIN peer.prepaid_account a ON a.account_id = c.account_id
  WHERE a.active AND a.currency = c.currency AND c.cost_minor >= 0
  ORDER BY c.call_key
  ON CONFLICT (idempotency_key) DO NOTHING
  RETURNING account_id, amount_minor, entry_id
)
UPDATE peer.prepaid_account a
SET balance_minor = a.balance_minor + p.delta, last_entry_id = p.last_entry_id, updated_at = now()
FROM (SELECT account_id, SUM(amount_minor) AS delta, MAX(entry_id) AS last_entry_id
      FROM posted GROUP BY account_id) p
WHERE a.account_id = p.account_id"""


def peer_debit(conn: Connection, calls: pd.DataFrame, run_id: str) -> int:
    """The SQL peer: the calls by COPY, one INSERT ... ON CONFLICT DO NOTHING RETURNING feeding
    one UPDATE of the balances; returns the accounts whose balance moved."""
    from cdr_billing import database
    from cdr_billing.prepaid.balances import _call_rows

    conn.execute(text(_PEER_CALLS))
    rows = _call_rows(calls)
    if not rows.empty:
        database.copy_batches(conn, "peer_calls", [rows])
    return conn.execute(text(_PEER_DEBIT), {"run_id": run_id}).rowcount


class LedgerTiming(NamedTuple):
    """One increment's ledger step: seconds of debit_calls and of the peer, what each posted."""

    project_seconds: float
    peer_seconds: float
    debited: int
    peer_accounts: int


def time_ledger_step(engine: Engine, calls: pd.DataFrame, run_id: str, peer_first: bool):
    """debit_calls and the peer on identical calls, each in its own committed transaction."""
    from cdr_billing.prepaid import balances

    def project() -> tuple[float, int]:
        started = time.perf_counter()
        with engine.begin() as conn:
            summary = balances.debit_calls(conn, calls, run_id, new_calls_only=True)
        return time.perf_counter() - started, summary.debited

    def peer() -> tuple[float, int]:
        started = time.perf_counter()
        with engine.begin() as conn:
            moved = peer_debit(conn, calls, run_id)
        return time.perf_counter() - started, moved

    if peer_first:
        peer_result = peer()
        project_result = project()
    else:
        project_result = project()
        peer_result = peer()
    return LedgerTiming(project_result[0], peer_result[0], project_result[1], peer_result[1])


# --- Airflow ----------------------------------------------------------------------------------


def write_config(root: Path) -> Path:
    """The shipped config with only the carrier source, files under root, and an exposure limit
    above any account's (no mail per run listing thousands of accounts: the bench measures the
    debits)."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    config["sources"] = [source for source in config["sources"] if source["name"] == SOURCE]
    config["profiles_file"] = str(
        SHIPPED_CONFIG.with_name(config.get("profiles_file", "profiles.yaml"))
    )
    config["prepaid"]["exposure_limit"] = {"EUR": "100000000.00", "SEK": "100000000.00"}
    config.update(work_root=str(root / "work"), archive_root=str(root / "archive"))
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _run_state(airflow: RunningAirflow, run_id: str) -> str:
    """The run's state; 'failed' as soon as a task waits for a retry (the bench injects none)."""
    state = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
    retrying = airflow.api(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?state=up_for_retry"
    )
    return "failed" if retrying["total_entries"] else state


def wait_for_runs(airflow: RunningAirflow, run_ids: Sequence[str], poll: float = 0.25) -> dict:
    """Poll until every run has ended; each run's end state."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS * max(1, len(run_ids) // 4)
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for run_id in run_ids:
            if run_id not in states:
                state = _run_state(airflow, run_id)
                if state in ("success", "failed"):
                    states[run_id] = state
        if len(states) == len(run_ids):
            return states
        time.sleep(poll)
    raise ServiceError(f"runs not ended after the timeout: {sorted(set(run_ids) - set(states))}")


def task_ends(airflow: RunningAirflow, run_id: str) -> dict[str, dict]:
    """Each task of the run: its state, start and end (epoch seconds; mapped: the last end)."""
    answer = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=1000")
    tasks: dict[str, dict] = {}
    for ti in answer["task_instances"]:
        if not ti["end_date"]:
            continue
        start = datetime.fromisoformat(ti["start_date"]).timestamp()
        end = datetime.fromisoformat(ti["end_date"]).timestamp()
        seen = tasks.setdefault(ti["task_id"], {"start": start, "end": end, "tries": 0})
        seen.update(start=min(seen["start"], start), end=max(seen["end"], end))
        seen["state"] = ti["state"]
        seen["tries"] = max(seen["tries"], ti.get("try_number") or 0)
    return tasks


# --- one increment ----------------------------------------------------------------------------


@dataclass
class World:
    """What the run uses: Airflow, the databases, the servers, the paths."""

    airflow: RunningAirflow
    billing: Engine
    ledger_copy: Engine
    gateway: object
    switch: object
    served: Path
    staging: Path
    work_root: Path


def deliver(world: World, path: Path) -> float:
    """Put a file on the SFTP server atomically (written beside it, renamed in); when."""
    staged = world.staging / path.name
    shutil.copyfile(path, staged)
    os.replace(staged, world.served / path.name)
    return time.time()


def run_calls(world: World, run_id: str) -> pd.DataFrame:
    """The prepaid calls the run's rating tasks wrote (what debit_balances debited)."""
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in run_id)
    parts = sorted((world.work_root / f"{DAY:%Y-%m}" / safe).glob("**/prepaid.parquet"))
    if not parts:
        raise ServiceError(f"no prepaid calls written by {run_id}")
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def desk_topups(world: World, accounts: pd.DataFrame, done: dict[str, int]) -> list[str]:
    """Credit the locked accounts at the desk (their day's cost and 10 EUR), as an operator
    would after a decline: the line unlocks in that transaction, the switch hears it next run."""
    from cdr_billing.prepaid.accounts import post_manual
    from cdr_billing.prepaid.locks import apply_lock_rules

    cost = accounts.set_index("account_id")["day_cost_minor"]
    with world.billing.begin() as conn:
        locked = conn.execute(
            text("SELECT account_id FROM prepaid_account WHERE locked ORDER BY account_id")
        ).scalars()
        fresh = [a for a in locked if a not in done]
        for account in fresh:
            amount = int(cost[account]) + 1_000
            post_manual(
                conn, account, "topup", amount, "paid at the desk", OPERATOR, f"desk-{account}"
            )
            apply_lock_rules(conn, [account], f"topup by {OPERATOR}", created_by=OPERATOR)
            done[account] = amount
    return fresh


def run_increment(
    world: World, k: int, path: Path, accounts: pd.DataFrame, desk: dict, last: bool
) -> dict:
    """Deliver file k, trigger a run, measure; time the ledger step against the peer; credit
    the lines it locked at the desk (not after the last: the switch would hear it no more)."""
    events_before = len(world.switch.events())
    delivered_at = deliver(world, path)
    logical = datetime.fromtimestamp(_slot_start(k + 1), UTC)
    run_id = world.airflow.api(
        "POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": logical.isoformat(), "conf": {}}
    )["dag_run_id"]
    state = wait_for_runs(world.airflow, [run_id])[run_id]
    ended = time.time()
    tasks = task_ends(world.airflow, run_id)
    events = world.switch.events()[events_before:]
    row = {
        "increment": k + 1,
        "file": path.name,
        "run_id": run_id,
        "state": state,
        "run_seconds": ended - delivered_at,
        "balances_seconds": tasks.get("debit_balances", {}).get("end", ended) - delivered_at,
        "delivered_seconds": tasks.get("deliver_switch_events", {}).get("end", ended)
        - delivered_at,
        "switch_events": len(events),
        "last_event_seconds": max((e["received_at"] for e in events), default=delivered_at)
        - delivered_at
        if events
        else None,
        "first_task_seconds": min((t["start"] for t in tasks.values()), default=ended)
        - delivered_at,
        "debit_task_seconds": tasks.get("debit_balances", {}).get("end", 0)
        - tasks.get("debit_balances", {}).get("start", 0),
    }
    if state != "success":
        return row
    calls = run_calls(world, run_id)
    timing = time_ledger_step(world.ledger_copy, calls, run_id, peer_first=bool(k % 2))
    row.update(
        calls=len(calls),
        debit_calls_seconds=timing.project_seconds,
        peer_seconds=timing.peer_seconds,
        ratio=timing.peer_seconds / timing.project_seconds,
        ledger_copy_debited=timing.debited,
    )
    row["desk_topups"] = 0 if last else len(desk_topups(world, accounts, desk))
    return row


# --- replay and proofs -----------------------------------------------------------------------


def replay_through_airflow(world: World, run_ids: list[str], first: datetime, last: datetime):
    """Clear every run's debit_balances and control_credit (Airflow runs them again, as a retry
    or an operator's clear would); wait for all; their states."""
    world.airflow.api(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        {
            "dry_run": False,
            "only_failed": False,
            "reset_dag_runs": True,
            "task_ids": ["debit_balances", "control_credit"],
            "start_date": first.isoformat(),
            "end_date": last.isoformat(),
        },
    )
    return wait_for_runs(world.airflow, run_ids, poll=1.0)


def replay_in_process(world: World, run_ids: list[str]) -> dict:
    """Every run's calls debited again on the billing database, from two threads at once (one as
    a prepaid run, one as the monthly run would: new_calls_only False), and on the copies by
    debit_calls and the peer: what they posted (all must be 0)."""
    from cdr_billing.prepaid import balances

    posted = {"debited": 0, "rerated": 0, "redelivered": 0, "refused": 0, "peer_accounts": 0}
    lock = threading.Lock()

    def again(calls: pd.DataFrame, run_id: str, new_only: bool) -> None:
        for attempt in range(5):
            try:
                with world.billing.begin() as conn:
                    summary = balances.debit_calls(conn, calls, f"{run_id}#replay", new_only)
                break
            except Exception:  # a deadlock or serialisation failure is retried, as Airflow does
                if attempt == 4:
                    raise
        with lock:
            for name in ("debited", "rerated", "redelivered", "refused"):
                posted[name] += getattr(summary, name)

    for run_id in run_ids:
        calls = run_calls(world, run_id)
        threads = [
            threading.Thread(target=again, args=(calls, run_id, flag)) for flag in (True, False)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        timing = time_ledger_step(world.ledger_copy, calls, f"{run_id}#replay", False)
        posted["debited"] += timing.debited
        posted["peer_accounts"] += timing.peer_accounts
    return posted


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


def _scalar(conn: Connection, sql: str) -> int:
    return int(conn.execute(text(sql)).scalar() or 0)


def prove(world: World, day: PrepaidDay, accounts: pd.DataFrame, desk: dict, files: int) -> list:
    """The ledger's proofs after the replays (see the module's docstring)."""
    priced = pd.read_parquet(day.calls)
    priced = priced[priced["file"] < files]
    approved: dict[str, int] = {}
    for charge in world.gateway.charges():
        if charge.charged:
            approved[charge.account_id] = approved.get(charge.account_id, 0) + charge.amount_minor
    expected = (
        accounts.set_index("account_id")["credit_minor"]
        + pd.Series(approved, dtype="int64").reindex(accounts["account_id"], fill_value=0)
        + pd.Series(desk, dtype="int64").reindex(accounts["account_id"], fill_value=0)
        - priced.groupby("account_id")["cost_minor"]
        .sum()
        .reindex(accounts["account_id"], fill_value=0)
    ).astype("int64")
    checks = []
    with world.billing.connect() as conn:
        net = pd.DataFrame(
            conn.execute(
                text(
                    "SELECT call_key, SUM(CASE kind WHEN 'debit' THEN 1 ELSE -1 END) AS live, "
                    "SUM(amount_minor) AS amount FROM balance_entry "
                    "WHERE kind IN ('debit', 'reversal') GROUP BY call_key"
                )
            ).all(),
            columns=["call_key", "live", "amount"],
        )
        balances = pd.DataFrame(
            conn.execute(
                text(
                    "SELECT a.account_id, a.balance_minor, COALESCE(SUM(e.amount_minor), 0) "
                    "FROM prepaid_account a LEFT JOIN balance_entry e USING (account_id) "
                    "GROUP BY a.account_id, a.balance_minor"
                )
            ).all(),
            columns=["account_id", "cached", "summed"],
        ).set_index("account_id")
        call_debits = _scalar(conn, "SELECT count(*) FROM call_debit")
        undelivered = _scalar(conn, "SELECT count(*) FROM switch_outbox WHERE delivered_at IS NULL")
        events = _scalar(conn, "SELECT count(*) FROM lock_event")
    costs = priced.set_index("call_key")["cost_minor"]
    net = net.set_index("call_key")
    checks.append(
        Check(
            "each call exactly one un-reversed debit",
            len(net) == len(priced) and bool((net["live"] == 1).all()),
            f"{len(net):,} call keys (generated {len(priced):,}), "
            f"{int((net['live'] != 1).sum())} with another count",
        )
    )
    same_cost = net["amount"].reindex(costs.index).eq(-costs)
    checks.append(
        Check(
            "each call debited at the generator's price",
            bool(same_cost.all()),
            f"{int((~same_cost).sum())} calls at another price",
        )
    )
    checks.append(
        Check("call_debit one row per call", call_debits == len(priced), f"{call_debits:,} rows")
    )
    cache = balances["cached"].eq(balances["summed"])
    checks.append(
        Check(
            "each balance = the sum of its entries",
            bool(cache.all()),
            f"{int((~cache).sum())} of {len(balances):,} differ",
        )
    )
    oracle = balances["summed"].reindex(expected.index).eq(expected)
    checks.append(
        Check(
            "each balance = credit + approved top-ups (gateway) + desk - costs (generator)",
            bool(oracle.all()),
            f"{int((~oracle).sum())} of {len(expected):,} differ",
        )
    )
    received = world.switch.events()
    per_account: dict[str, list[str]] = {}
    for event in received:
        per_account.setdefault(event["account_id"], []).append(event["action"])
    alternate = all(
        actions == ["LOCK", "UNLOCK"] * (len(actions) // 2) + ["LOCK"] * (len(actions) % 2)
        for actions in per_account.values()
    )
    checks.append(
        Check(
            "switch: every lock event delivered once, in order per account",
            len(received) + undelivered == events and alternate,
            f"{len(received)} received, {undelivered} waiting, {events} lock events",
        )
    )
    with world.ledger_copy.connect() as conn:
        copies = conn.execute(
            text(
                "SELECT count(*) FROM public.prepaid_account a JOIN peer.prepaid_account p "
                "USING (account_id) WHERE a.balance_minor <> p.balance_minor"
            )
        ).scalar()
        copy_debits = _scalar(conn, "SELECT count(*) FROM public.balance_entry WHERE kind='debit'")
        peer_debits = _scalar(conn, "SELECT count(*) FROM peer.balance_entry WHERE kind='debit'")
    checks.append(
        Check(
            "the copies: debit_calls and the peer end with the same balances and debits",
            copies == 0 and copy_debits == peer_debits == len(priced),
            f"{copies} balances differ; debits {copy_debits:,} and {peer_debits:,}",
        )
    )
    return checks


# --- the whole bench --------------------------------------------------------------------------


def summary(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def run(day: PrepaidDay, root: Path, log: Callable[[str], None] = print) -> dict:
    """Serve the day one file at a time through the DAG, measure, replay, prove."""
    run_root = root / "run"
    shutil.rmtree(run_root, ignore_errors=True)
    served, staging = run_root / "sftp" / "cdr" / SOURCE, run_root / "sftp" / "staging"
    for folder in (served, staging, run_root / "sftp" / "reference"):
        folder.mkdir(parents=True)
    for reference in (day.tariff, day.entitlements):
        shutil.copyfile(reference, run_root / "sftp" / "reference" / reference.name)
    os.environ["CDR_BILLING_CONFIG"] = str(write_config(run_root))
    os.environ["CDR_BILLING_STABLE_SECONDS"] = "0"  # each file is renamed in whole
    os.environ.update(airflow_settings(run_root / "airflow", log_level="WARNING"))
    accounts = pd.read_parquet(day.accounts)
    files = len(day.cdr_files)
    with ExitStack() as stack:
        services = stack.enter_context(LocalServices(run_root / "services"))
        sftp = services.start_sftp("sftp_primary", run_root / "sftp")
        gateway = services.start_payment_gateway("payment_gateway", hang_seconds=5)
        switch = services.start_switch("prepaid_switch", secret="bench-switch-secret")
        smtp = services.start_smtp(run_root / "mail")
        postgres = stack.enter_context(LocalPostgres())
        billing = create_engine(postgres.url)
        ledger_copy = create_engine(postgres.url_of(postgres.create_database("ledger_copy")))
        from cdr_billing.migrations import upgrade

        started = time.perf_counter()
        for engine in (billing, ledger_copy):
            upgrade(engine)
            load_accounts(engine, accounts)
        create_peer(ledger_copy)
        log(f"{len(accounts):,} accounts loaded in {time.perf_counter() - started:.1f} s")
        connections = {
            "cdr_sftp_primary": sftp.connection(services.client_key),
            "cdr_sftp_secondary": sftp.connection(services.client_key),
            "billing_db": postgres.connection(),
            "smtp_default": smtp_connection(smtp.port),
            "payment_gateway": gateway.connection(),
            "prepaid_switch": switch.connection(),
        }
        os.environ.update(connection_env(connections))
        env = {
            **os.environ,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url_of(
                postgres.create_database("airflow_metadata")
            ),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the triggered runs
        }
        migrate(run_root / "airflow", env)
        airflow = stack.enter_context(RunningAirflow(run_root / "airflow", env))
        airflow.wait_for_dag(DAG_ID, DAG_PARSE_TIMEOUT_SECONDS)
        airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        world = World(
            airflow, billing, ledger_copy, gateway, switch, served, staging, run_root / "work"
        )
        desk: dict[str, int] = {}
        rows = []
        for k, path in enumerate(day.cdr_files):
            row = run_increment(world, k, path, accounts, desk, k == files - 1)
            rows.append(row)
            log(format_row(row))
            if row["state"] != "success":
                break
        run_ids = [r["run_id"] for r in rows]
        replay: dict = {"airflow": {}, "in_process": {}}
        if all(r["state"] == "success" for r in rows):
            first = datetime.fromtimestamp(_slot_start(1), UTC)
            last = datetime.fromtimestamp(_slot_start(len(rows)), UTC)
            started = time.perf_counter()
            states = replay_through_airflow(world, run_ids, first, last)
            replay["airflow"] = {
                "runs": len(states),
                "succeeded": sum(s == "success" for s in states.values()),
                "seconds": time.perf_counter() - started,
                "debit_tries": [task_ends(airflow, r)["debit_balances"]["tries"] for r in run_ids],
            }
            log(f"replayed through Airflow: {replay['airflow']['succeeded']} runs succeeded")
            replay["in_process"] = replay_in_process(world, run_ids)
        checks = prove(world, day, accounts, desk, len(rows))
        checks.append(
            Check(
                "every run and replay succeeded, nothing posted again",
                len(rows) == files
                and all(r["state"] == "success" for r in rows)
                and replay["airflow"].get("succeeded") == len(rows)
                and min(replay["airflow"].get("debit_tries", [0])) >= 2
                and not any(replay["in_process"].values()),
                f"runs {sum(r['state'] == 'success' for r in rows)}/{files}, replay "
                f"{replay['airflow']}, in process posted {replay['in_process']}",
            )
        )
    return facts_of(day, accounts, rows, replay, checks, desk)


def facts_of(day, accounts, rows, replay, checks, desk) -> dict:
    measured = [r for r in rows if "calls" in r]
    project = sum(r["debit_calls_seconds"] for r in measured)
    peer = sum(r["peer_seconds"] for r in measured)
    return {
        "accounts": len(accounts),
        "roles": accounts["role"].value_counts().to_dict(),
        "files": len(day.cdr_files),
        "calls": int(sum(r.get("calls", 0) for r in rows)),
        "increments": rows,
        "summary": {
            "balances_seconds": summary([r["balances_seconds"] for r in rows]),
            "delivered_seconds": summary([r["delivered_seconds"] for r in rows]),
            "run_seconds": summary([r["run_seconds"] for r in rows]),
            "debit_calls_seconds": summary([r["debit_calls_seconds"] for r in measured]),
            "peer_seconds": summary([r["peer_seconds"] for r in measured]),
            "ratio": summary([r["ratio"] for r in measured]),
            "debit_calls_total_seconds": project,
            "peer_total_seconds": peer,
            "ratio_of_totals": peer / project if project else None,
            "switch_events": sum(r["switch_events"] for r in rows),
            "desk_topups": len(desk),
        },
        "targets": {
            "end_to_end_seconds": TARGET_END_TO_END_SECONDS,
            "end_to_end_met": bool(rows)
            and max(r["delivered_seconds"] for r in rows) <= TARGET_END_TO_END_SECONDS,
            "ledger_at_least_as_fast_as_peer": bool(project) and peer >= project,
        },
        "replay": replay,
        "checks": [c._asdict() for c in checks],
        "correct": all(c.ok for c in checks),
    }


def format_row(row: dict) -> str:
    if row["state"] != "success":
        return f"  {row['increment']:>3} {row['file']}: run {row['state']}"
    events = f"{row['switch_events']:>3}"
    return (
        f"  {row['increment']:>3} {row['calls']:>8,} {row['balances_seconds']:>9.1f}"
        f"{row['delivered_seconds']:>10.1f} {events} {row['debit_calls_seconds']:>9.3f}"
        f"{row['peer_seconds']:>8.3f}{row['ratio']:>7.2f}"
    )


HEADER = (
    "  inc    calls  balances  delivered ev  debit_calls   peer  peer/\n"
    "                  s after the rename       s       s    debit"
)


def format_report(facts: dict) -> str:
    s = facts["summary"]
    out = [
        f"Prepaid increments: {facts['accounts']:,} accounts ({facts['roles']}), "
        f"{facts['calls']:,} prepaid calls in {len(facts['increments'])} files",
        HEADER,
        *(format_row(r) for r in facts["increments"]),
    ]
    for name, label in (
        ("balances_seconds", "rename -> balances committed"),
        ("delivered_seconds", "rename -> lock events delivered"),
        ("debit_calls_seconds", "debit_calls"),
        ("peer_seconds", "SQL peer"),
        ("ratio", "peer / debit_calls"),
    ):
        if s[name]:
            out.append(
                f"{label:<34} min {s[name]['min']:7.3f}  median {s[name]['median']:7.3f}  "
                f"max {s[name]['max']:7.3f}"
            )
    if s["ratio_of_totals"]:
        out.append(
            f"ledger step in total: debit_calls {s['debit_calls_total_seconds']:.2f} s, peer "
            f"{s['peer_total_seconds']:.2f} s: peer/debit_calls {s['ratio_of_totals']:.2f}"
        )
    out.append(
        f"switch events {s['switch_events']}, desk top-ups {s['desk_topups']}; targets: end to "
        f"end <= {TARGET_END_TO_END_SECONDS:.0f} s {facts['targets']['end_to_end_met']}, ledger "
        f"step at least as fast as the peer {facts['targets']['ledger_at_least_as_fast_as_peer']}"
    )
    out.append(f"replay: {facts['replay']}")
    out += [f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}" for c in facts["checks"]]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=50_000, help="prepaid accounts")
    parser.add_argument("--files", type=int, default=48, help="30-minute files (increments)")
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls of the day, in all")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="data, run and figures")
    args = parser.parse_args(argv)
    if not 1 <= args.files <= 48 or args.accounts > 1_000_000 or args.calls < args.files:
        parser.error("--files 1 to 48 (half hours of a day), --accounts at most 1,000,000")
    stop_on_sigterm()
    root = args.root.resolve()
    day = ensure_day(root / "data", args.accounts, args.files, args.calls, args.seed)
    facts = run(day, root)
    (root / "bench_prepaid.json").write_text(json.dumps(facts, indent=1), encoding="utf-8")
    print(format_report(facts))
    print(f"figures in {root / 'bench_prepaid.json'}")
    return 0 if facts["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
