"""`make bench-pipeline`: a month of CDRs from read to aggregate, the project against DuckDB
SQL and Polars.

Generates (once, cached in `.bench/pipeline/`) a month of N carrier CDRs in several CSV files,
a 5,000-prefix tariff and a 50,000-account entitlement snapshot (see `bench_data`), then runs,
each in a process of its own so that each peak RSS is its own:

1. a bare pyarrow CSV parse of the files, every column as text (the floor);
2. the project: the DAG's own task functions, chained as the DAG chains them
   (cdr_billing.tasks.chain) on a SQLite billing database, the mapped tasks in worker
   processes, and the Great Expectations suites timed separately;
3. DuckDB SQL (threads = 2) doing the same work by the same rules;
4. Polars' lazy API (2 threads) doing it by the same rules (`bench_polars`).

It checks that all three give identical billing lines and identical row counts, that the
counts reconcile, and prints wall time per stage, rows per second, peak RSS and the ratios.
Exit status 1 when they disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from iso4217 import Currency

from cdr_billing.months import BillingMonth
from cdr_billing.report import OUTCOMES  # read = the sum of these
from cdr_devkit.airflow_env import ALLOCATOR_SETTINGS
from cdr_devkit.bench_data import MONTH, BenchMonth, ensure_month, month_dir
from cdr_devkit.memory import peak_rss_mib, process_tree_rss_mib
from cdr_devkit.services import stop_on_sigterm

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE = PROJECT_ROOT / ".bench" / "pipeline"
LINE_KEYS = ["customer_id", "sequence_number", "currency"]
LINE_COLUMNS = [*LINE_KEYS, "total_minor", "call_count", "billed_seconds"]
SOURCE = "carrier"  # its profile (carrier_csv) comes from pipeline.yaml
PARSE_REPEATS = 3
PEERS = ("duckdb", "polars")  # the engines the project is compared with
CONTENDERS = ("parse", "project", *PEERS)


class Stopwatch:
    """Adds up wall seconds per stage; prints progress with the peak RSS so far."""

    def __init__(self, label: str, progress: Callable[[str], None] | None = None) -> None:
        self.label, self.progress, self.seconds = label, progress, {}

    def add(self, seconds: dict[str, float]) -> None:
        """Add another clock's stage seconds (a worker's)."""
        for name, value in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value

    def report(self, what: str) -> None:
        if self.progress:
            self.progress(
                f"[{self.label}] {what} done: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
            )

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        if self.progress:
            self.progress(
                f"[{self.label}] {name:<14}{elapsed:8.2f} s   peak RSS {peak_rss_mib():8,.0f} MiB"
            )


# --- the project ------------------------------------------------------------------------

MAPPED_TASKS = ("check_cdr_file_only", "validate_cdr_file", "bill_cdr_file")


def _timed(function: Callable, arguments: tuple) -> tuple[float, object]:
    """One task instance in a worker: its wall seconds and its result."""
    started = time.perf_counter()
    result = function(*arguments)
    return time.perf_counter() - started, result


def _warm_up(threads: int) -> None:
    """A worker's start: import what the tasks use (a worker of a running Airflow is warm too)
    and give Arrow's thread pool this worker's share of the cores."""
    import pyarrow

    from cdr_billing import database
    from cdr_billing.config import load_config
    from cdr_billing.tasks import bill, validate  # noqa: F401

    database.billing_engine(load_config().billing.connection).dispose()  # Airflow's settings
    pyarrow.set_cpu_count(threads)


def _started() -> None:
    time.sleep(0.5)  # long enough that each worker takes one of these


@contextmanager
def _pool(count: int, fresh_process_per_task: bool = False):
    """`count` worker processes, as mapped tasks run side by side (None when count is 1)."""
    if count <= 1 and not fresh_process_per_task:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    if fresh_process_per_task:
        pool = ProcessPoolExecutor(max(count, 1), mp_context=context, max_tasks_per_child=1)
    else:
        threads = max(1, (os.cpu_count() or 1) // count)
        pool = ProcessPoolExecutor(
            count, mp_context=context, initializer=_warm_up, initargs=(threads,)
        )
        for started in [pool.submit(_started) for _ in range(count)]:
            started.result()
    with pool:
        yield pool


def _runner(clock: Stopwatch, pool):
    """Run the chain's tasks as the DAG runs them: a mapped task's instances in the worker
    processes, the others here; each task's seconds (summed over its instances) on the clock."""

    def run(function: Callable, arguments: list[tuple]) -> list:
        name = function.__name__
        if pool is None or name not in MAPPED_TASKS:
            with clock.stage(name):
                return [function(*a) for a in arguments]
        results = [f.result() for f in [pool.submit(_timed, function, a) for a in arguments]]
        clock.add({name: sum(seconds for seconds, _ in results)})
        return [result for _, result in results]

    return run


def _expect(run, file, config) -> dict[str, float]:
    """The GX half of a validate_cdr_file task, in a fresh process as a task has."""
    from cdr_billing import workdir
    from cdr_billing.tasks.validate import expect_cdr_file

    accepted = workdir.read_part(run, file.dir, "accepted")
    started = time.perf_counter()
    expect_cdr_file(run, file, accepted, config)
    return {"expect_cdr_file": time.perf_counter() - started}


@contextmanager
def _sqlite_billing_db(path: Path):
    """The billing database as a SQLite file (PostgreSQL in production), through the same
    Airflow connection id the tasks use."""
    path.unlink(missing_ok=True)
    key, before = "AIRFLOW_CONN_BILLING_DB", os.environ.get("AIRFLOW_CONN_BILLING_DB")
    os.environ[key] = json.dumps({"conn_type": "sqlite", "host": str(path)})
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def run_project(
    files: Sequence[Path],
    tariff_path: Path,
    entitlements_path: Path,
    month: BillingMonth = MONTH,
    work_dir: Path | None = None,
    *,
    validation: bool = True,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
):
    """Bill one month of carrier CSV files with the DAG's own task functions, chained as the
    DAG chains them (cdr_billing.tasks.chain): the files recorded in the ledger, the references
    loaded, each file checked in `workers` processes (read, row checks, quarantine, duplicates
    inside the file), the month's duplicates and partial calls, each file billed in the workers
    again, the lines aggregated and proven; a SQLite billing database. With `validation`, the
    files' Great Expectations suites run after the timed run, a fresh process per file as a
    task has (timed apart). Returns (lines, counts, stage_seconds): seconds per task, summed
    over its instances; "wall" is the run's wall time (without the billing DB migrations)."""
    import dataclasses

    from cdr_billing import database, migrations, workdir
    from cdr_billing.config import load_config
    from cdr_billing.contracts import Run
    from cdr_billing.tasks import chain

    config = load_config()
    work_dir = Path(work_dir or Path.cwd())
    work_dir.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch("project", progress)
    inputs = [("cdr", SOURCE, Path(f)) for f in files]
    inputs += [("tariff", "tariff", Path(tariff_path))]
    inputs += [("entitlements", "entitlements", Path(entitlements_path))]
    run = Run(str(month), work_dir.name, str(work_dir))
    with _sqlite_billing_db(work_dir / "billing.sqlite"), _pool(workers) as pool:
        with clock.stage("db_setup"):
            migrations.upgrade(database.billing_engine(config.billing.connection))
        with clock.stage("fetched_locally"):  # stands in for the fetch: not in the wall time
            fetched = chain.fetched_locally(config, run, inputs)
        started = time.perf_counter()
        lines = chain.bill_month(config, fetched, _runner(clock, pool), expectations=False)
        clock.seconds["wall"] = time.perf_counter() - started
        clock.report("the month's tasks")
        if validation:
            with _pool(workers, fresh_process_per_task=True) as gx_pool:
                started = time.perf_counter()
                jobs = [gx_pool.submit(_expect, run, f, config) for f in lines.month.files]
                for job in jobs:
                    clock.add(job.result())
                clock.seconds["gx_wall"] = time.perf_counter() - started
            clock.report("GX")
    counts = dataclasses.asdict(lines.counts)
    return workdir.read(run, "lines")[LINE_COLUMNS], counts, clock.seconds


# --- the DuckDB peer --------------------------------------------------------------------


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _check_sql(files: Sequence[Path], month: BillingMonth, config) -> str:
    """Read every file as text and type and check each row as `validate.check_rows` does
    for the carrier profile (a row failing any check is rejected)."""
    rules, profile = config.billing, config.profile_for(SOURCE)
    start, end = month.bounds(rules.timezone)
    tolerance = int(rules.month_tolerance_hours * 3600)
    month_start = (
        f"timezone({_quote(rules.timezone)}, TIMESTAMP '{start:%Y-%m-%d %H:%M:%S}') "
        f"- to_seconds({tolerance})"
    )
    month_end = (
        f"timezone({_quote(rules.timezone)}, TIMESTAMP '{end:%Y-%m-%d %H:%M:%S}') "
        f"+ to_seconds({tolerance})"
    )
    file_list = "[" + ", ".join(_quote(str(f)) for f in files) + "]"
    text = {field: f"coalesce(trim(\"{header}\"), '')" for field, header in profile.columns.items()}
    return f"""
CREATE TEMP TABLE checked AS
WITH raw AS (
    SELECT {text["transaction_id"]} AS transaction_id, {text["session_id"]} AS session_id,
           {text["user_id"]} AS user_id,
           {text["start_of_usage"]} AS start_text, {text["duration_of_usage"]} AS duration_text,
           {text["completion_status"]} AS status_text,
           -- separators
           regexp_replace({text["destination_party"]}, '[\\s\\-().]', '', 'g') AS destination_party,
           {text["transaction_part_number"]} AS part_number,
           {text["revenue_share_percentage"]} AS share_text
    FROM read_csv({file_list}, all_varchar = true, header = true,
                  delim = {_quote(profile.delimiter)})
), typed AS (
    SELECT *,
        -- a number is an Excel serial day, anything else ISO 8601 (naive: the profile's zone,
        -- the session's)
        CASE WHEN isfinite(try_cast(start_text AS DOUBLE))
             THEN timezone({_quote(profile.timezone)},
                           TIMESTAMP '1899-12-30'
                           + to_seconds(round_even(try_cast(start_text AS DOUBLE) * 86400, 0)))
             ELSE try_cast(start_text AS TIMESTAMPTZ) END AS start_utc,
        -- the grammar of check_rows: whole seconds are digits (a "-" allowed, then out of range),
        -- ".0" allowed
        CASE WHEN regexp_full_match(duration_text, '-?[0-9]+(\\.0+)?')
             THEN try_cast(regexp_replace(duration_text, '\\.0+$', '') AS DOUBLE) END AS seconds,
        CASE WHEN regexp_full_match(status_text, '[0-3](\\.0+)?')
             THEN CAST(left(status_text, 1) AS TINYINT) END
            AS status_number
    FROM raw
)
SELECT {_quote(SOURCE)} AS source, transaction_id, session_id, user_id, start_utc,
       CASE WHEN seconds BETWEEN 0 AND {int(rules.max_call_seconds)} THEN seconds::BIGINT END
           AS duration_seconds,
       status_number AS completion_status,
       destination_party, part_number,
       coalesce(NOT (
           transaction_id <> ''                                        -- MISSING_TRANSACTION_ID
           AND user_id <> ''                                           -- MISSING_ACCOUNT
           AND start_utc IS NOT NULL                                   -- BAD_TIMESTAMP
           AND start_utc >= {month_start} AND start_utc < {month_end}  -- OUTSIDE_MONTH
           AND seconds IS NOT NULL                                     -- BAD_DURATION
           AND seconds BETWEEN 0 AND {int(rules.max_call_seconds)}     -- DURATION_OUT_OF_RANGE
           AND status_number IS NOT NULL                               -- BAD_COMPLETION_STATUS
           AND regexp_full_match(part_number, '[0-9]*')                -- BAD_PART_NUMBER
           AND (share_text = '' OR (                                   -- BAD_REVENUE_SHARE:
                regexp_full_match(share_text, '[0-9]+(\\.[0-9]+)?')     -- 0-100, two decimals
                AND try_cast(share_text AS DECIMAL(38, 10)) BETWEEN 0 AND 100
                AND try_cast(share_text AS DECIMAL(38, 2))
                    = try_cast(share_text AS DECIMAL(38, 10))))
           AND regexp_full_match(destination_party, '\\+?[0-9]{{4,17}}')  -- BAD_NUMBER
       ), true) AS rejected
FROM typed
"""


CALLS_SQL = """
CREATE TEMP TABLE calls AS
WITH accepted AS (
    -- rowid: file order, then row order
    SELECT rowid AS rid, * EXCLUDE (rejected) FROM checked WHERE NOT rejected
), firsts AS (  -- the first of each (source, transaction id)
    SELECT * FROM accepted
    QUALIFY row_number() OVER (PARTITION BY source, transaction_id ORDER BY rid) = 1
), parts AS (
    -- partial calls: one per session, the first by start, part number as a number, id;
    -- durations summed
    SELECT *,
        row_number() OVER (
            PARTITION BY source, session_id
            ORDER BY start_utc, length(ltrim(part_number, '0')), ltrim(part_number, '0'),
                     transaction_id
        ) AS part_rank,
        sum(duration_seconds) OVER (PARTITION BY source, session_id) AS session_seconds,
        count(*) OVER (PARTITION BY source, session_id) AS session_parts
    FROM firsts WHERE completion_status = 2 AND session_id <> ''
)
SELECT rid, user_id, start_utc, duration_seconds, completion_status, destination_party, 1 AS parts
FROM firsts WHERE NOT (completion_status = 2 AND session_id <> '')
UNION ALL
SELECT rid, user_id, start_utc, session_seconds, completion_status, destination_party, session_parts
FROM parts WHERE part_rank = 1
"""


def _micro_per_minor_sql(currency: str) -> str:
    """Micro-units per minor unit of a currency, from ISO 4217 (the iso4217 package, as the
    project)."""
    cases = " ".join(
        f"WHEN {_quote(c.code)} THEN {10 ** (6 - c.exponent)}"
        for c in Currency
        if c.exponent is not None
    )
    return f"CASE {currency} {cases} END"


def _reference_sql(
    tariff_path: Path, entitlements_path: Path, columns: set[str], config
) -> list[str]:
    """The tariff (integer micro-units, validity in UTC) and the entitlement snapshot as tables."""
    zone = _quote(config.billing.timezone)

    def optional(name: str) -> str:
        return f"nullif(trim({name}), '')" if name in columns else "NULL"

    def micro(name: str) -> str:
        return (
            f"CAST(CAST(coalesce(nullif(trim({name}), ''), '0') AS DECIMAL(18, 6)) "
            "* 1000000 AS BIGINT)"
        )

    tariff_text_sql = f"""
CREATE TEMP TABLE tariff_text AS
SELECT * FROM read_csv({_quote(str(tariff_path))}, all_varchar = true, header = true)
"""
    tariff_sql = f"""
CREATE TEMP TABLE tariff AS
SELECT rowid + 2 AS tariff_row, ltrim(trim(prefix), '+') AS prefix,  -- tariff_row: the file's line
       {micro("price_per_minute")} AS price_micro, {micro("connection_fee")} AS fee_micro,
       {micro("minimum_charge")} AS minimum_micro,
       CAST(trim(first_increment) AS BIGINT) AS first_increment,
       CAST(trim(next_increment) AS BIGINT) AS next_increment,
       upper(trim(currency)) AS currency,
       {_micro_per_minor_sql("upper(trim(currency))")} AS micro_per_minor,
       coalesce(timezone({zone}, CAST({
        optional("valid_from")
    } AS TIMESTAMP)), TIMESTAMPTZ '1970-01-01 00:00:00+00')
           AS valid_from,
       coalesce(timezone({zone}, CAST({
        optional("valid_to")
    } AS TIMESTAMP)), TIMESTAMPTZ 'infinity') AS valid_to,
       {
        " OR ".join(
            f"try_cast(nullif(trim({c}), '') AS DECIMAL(38, 12)) "
            f"<> try_cast(nullif(trim({c}), '') AS DECIMAL(38, 6))"
            for c in ("price_per_minute", "connection_fee", "minimum_charge")
        )
    } AS too_precise
FROM tariff_text
"""
    entitlements_sql = f"""
CREATE TEMP TABLE entitlements AS
SELECT coalesce(trim(account_id), '') AS account_id, coalesce(trim(customer_id), '') AS customer_id,
       coalesce(nullif(coalesce(trim(sequence_number), ''), ''),
                coalesce(trim(default_sequence_number), '')) AS sequence_number,
       lower(coalesce(trim(entitled), '')) IN ('true', '1', 'yes', 'y', 't') AS entitled,
       lower(coalesce(trim(entitled), ''))
           IN ('true', '1', 'yes', 'y', 't', 'false', '0', 'no', 'n', 'f') AS flag_ok
FROM read_csv({_quote(str(entitlements_path))}, all_varchar = true, header = true)
"""
    return [tariff_text_sql, tariff_sql, entitlements_sql]


def _outcomes_sql(config) -> str:
    """Rate (E.164, longest prefix with a rate valid at the start, increments, half-up cost in
    integer micro-units), attribute (snapshot: customer and cost center, else suspense)."""
    rules = config.billing
    international, national = rules.international_prefix, rules.national_prefix
    return f"""
CREATE TEMP TABLE outcomes AS
WITH numbers AS (
    SELECT rid, start_utc, duration_seconds,
        -- checked numbers are '+'? and digits only (separators removed when read)
        CASE WHEN starts_with(destination_party, '+') THEN substr(destination_party, 2)
             WHEN starts_with(destination_party, {_quote(international)})
                  THEN substr(destination_party, {len(international) + 1})
             WHEN starts_with(destination_party, {_quote(national)})
                  THEN {_quote(rules.country_code)}
                       || substr(destination_party, {len(national) + 1})
             ELSE destination_party END AS e164
    FROM calls WHERE completion_status <> 0
), keys AS (
    -- every leading part of an E.164 number (1-15 digits, no leading 0) as long as a tariff
    -- prefix
    SELECT n.rid, n.start_utc, substr(n.e164, 1, w.width) AS key
    FROM numbers n
    JOIN (SELECT DISTINCT length(prefix) AS width FROM tariff) w ON w.width <= length(n.e164)
    WHERE length(n.e164) BETWEEN 1 AND 15 AND NOT starts_with(n.e164, '0')
), best AS (
    -- the longest prefix with a rate valid at the call's start (one version: the later line on
    -- a tie)
    SELECT k.rid, arg_max(t.tariff_row, length(t.prefix) * 1000000 + t.tariff_row) AS tariff_row
    FROM keys k
    JOIN tariff t
      ON t.prefix = k.key AND t.valid_from <= k.start_utc AND k.start_utc < t.valid_to
    GROUP BY k.rid
), priced AS (
    SELECT n.rid, t.currency, t.micro_per_minor, t.fee_micro, t.price_micro, t.minimum_micro,
        CASE WHEN n.duration_seconds > 0
             THEN t.first_increment
                  + (greatest(n.duration_seconds - t.first_increment, 0) + t.next_increment - 1)
                  // t.next_increment * t.next_increment
             ELSE 0 END AS billed_seconds
    FROM numbers n JOIN best b USING (rid) JOIN tariff t ON t.tariff_row = b.tariff_row
), costed AS (  -- fee + price x seconds / 60, at least the minimum, half up to the minor unit once
    SELECT rid, currency, billed_seconds,
        sign(greatest(fee_micro * 60 + price_micro * billed_seconds, minimum_micro * 60))
        * ((abs(greatest(fee_micro * 60 + price_micro * billed_seconds, minimum_micro * 60))
            + micro_per_minor * 30)
           // (micro_per_minor * 60)) AS cost_minor
    FROM priced
)
SELECT c.rid, c.parts,
    CASE WHEN c.completion_status = 0 THEN 'not_billable'
         WHEN p.rid IS NULL THEN 'unbillable'
         WHEN e.account_id IS NULL OR NOT e.entitled OR e.customer_id = ''
              OR e.sequence_number = '' THEN 'suspense'
         ELSE 'billed' END AS outcome,
    e.customer_id, e.sequence_number, p.currency, p.cost_minor, p.billed_seconds
FROM calls c LEFT JOIN costed p USING (rid) LEFT JOIN entitlements e ON e.account_id = c.user_id
"""


LINES_SQL = """
SELECT customer_id, sequence_number, currency, sum(cost_minor)::BIGINT AS total_minor,
       count(*)::BIGINT AS call_count,
       sum(billed_seconds)::BIGINT AS billed_seconds
FROM outcomes WHERE outcome = 'billed' GROUP BY ALL ORDER BY ALL
"""
COUNTS_SQL = """
SELECT (SELECT count(*) FROM checked) AS read,
       (SELECT count(*) FILTER (WHERE rejected) FROM checked) AS quarantined,
       (SELECT count(*) FILTER (WHERE NOT rejected) FROM checked) - (SELECT sum(parts) FROM calls)
           AS duplicates,
       (SELECT sum(parts) - count(*) FROM calls) AS combined,
       count(*) FILTER (WHERE outcome = 'billed') AS billed,
       count(*) FILTER (WHERE outcome = 'not_billable') AS not_billable,
       count(*) FILTER (WHERE outcome = 'unbillable') AS unbillable,
       count(*) FILTER (WHERE outcome = 'suspense') AS suspense,
       0 AS prepaid  -- the benchmark's month has no prepaid account
FROM outcomes
"""


def run_duckdb(
    files: Sequence[Path],
    tariff_path: Path,
    entitlements_path: Path,
    month: BillingMonth = MONTH,
    *,
    threads: int = 2,
    progress: Callable[[str], None] | None = None,
):
    """The same month as DuckDB SQL by the project's rules; returns (lines, counts,
    stage_seconds)."""
    import duckdb

    from cdr_billing.config import load_config

    config = load_config()
    clock = Stopwatch("duckdb", progress)
    connection = duckdb.connect()
    connection.execute(f"SET threads = {int(threads)}")
    connection.execute(
        f"SET TimeZone = {_quote(config.profile_for(SOURCE).timezone)}"
    )  # naive CDR timestamps
    with clock.stage("read+check"):
        connection.execute(_check_sql(files, month, config))
    with clock.stage("dedupe+combine"):
        connection.execute(CALLS_SQL)
    with clock.stage("reference"):
        described = connection.execute(
            f"DESCRIBE SELECT * FROM read_csv({_quote(str(tariff_path))}, all_varchar = true)"
        )
        columns = {row[0] for row in described.fetchall()}
        if columns & {"band", "weekdays", "start_hour", "end_hour"}:
            raise NotImplementedError("the DuckDB peer has no weekday/hour bands")
        for statement in _reference_sql(
            Path(tariff_path), Path(entitlements_path), columns, config
        ):
            connection.execute(statement)
        if connection.execute("SELECT count(*) FROM tariff WHERE too_precise").fetchone()[0]:
            raise ValueError(
                "tariff: a price with more than six decimals (the project refuses the file)"
            )
        bad_flags, repeated = connection.execute(
            "SELECT count(*) FILTER (WHERE NOT flag_ok), count(*) - count(DISTINCT account_id) "
            "FROM entitlements"
        ).fetchone()
        if bad_flags or repeated:
            raise ValueError(
                f"entitlements: {bad_flags} bad 'entitled' flags, {repeated} repeated accounts"
            )
    with clock.stage("rate+attribute"):
        connection.execute(_outcomes_sql(config))
    with clock.stage("aggregate"):
        lines = connection.execute(LINES_SQL).df()
        cursor = connection.execute(COUNTS_SQL)
        counts = dict(
            zip(
                [d[0] for d in cursor.description], (int(v) for v in cursor.fetchone()), strict=True
            )
        )
    connection.close()
    return lines[LINE_COLUMNS], counts, clock.seconds


# --- the bare parse ---------------------------------------------------------------------


def run_parse(files: Sequence[Path]) -> tuple[int, float]:
    """pyarrow's CSV reader on every file, every column as text: (rows, seconds)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from cdr_billing.canonical import CARRIER_FIELDS

    options = pacsv.ConvertOptions(column_types=dict.fromkeys(CARRIER_FIELDS, pa.string()))
    started = time.perf_counter()
    tables = [pacsv.read_csv(path, convert_options=options) for path in files]
    return sum(t.num_rows for t in tables), time.perf_counter() - started


# --- the Polars peer ------------------------------------------------------------------------


def _run_polars(*arguments, **options):
    """`bench_polars.run_polars`, imported in its own process only (Polars' thread pool is
    sized when it is first imported)."""
    from cdr_devkit.bench_polars import run_polars

    return run_polars(*arguments, **options)


# --- one run per process ------------------------------------------------------------------


def _child(kind: str, month: BenchMonth, out: Path, validation: bool, workers: int) -> None:
    """Run one contender in this process; write its lines (Parquet) and facts (JSON) to out."""
    progress = lambda text: print(text, flush=True)  # noqa: E731
    facts: dict = {}
    if (
        kind == "parse"
    ):  # cheap: the best of a few, so one unlucky moment on a shared machine does not set the floor
        runs = [run_parse(month.cdr_files) for _ in range(PARSE_REPEATS)]
        facts.update(rows=runs[0][0], stage_seconds={"parse": min(seconds for _, seconds in runs)})
    else:
        if kind == "project":
            # a fresh work dir, as each DAG run has its own (replacing a 200 MB file costs 0.15 s)
            shutil.rmtree(out / "project", ignore_errors=True)
            result = run_project(
                month.cdr_files,
                month.tariff,
                month.entitlements,
                month.month,
                out / "project",
                validation=validation,
                workers=workers,
                progress=progress,
            )
        else:
            peer = run_duckdb if kind == "duckdb" else _run_polars
            result = peer(
                month.cdr_files, month.tariff, month.entitlements, month.month, progress=progress
            )
        lines, counts, seconds = result
        lines.to_parquet(out / f"{kind}_lines.parquet", index=False)
        facts.update(counts=counts, stage_seconds=seconds)
    facts["peak_rss_mib"] = peak_rss_mib()
    (out / f"{kind}.json").write_text(json.dumps(facts, indent=1), encoding="utf-8")


def spawn_contender(
    kind: str,
    month: BenchMonth,
    base: Path,
    files: int,
    seed: int,
    out: Path,
    validation: bool,
    max_rss_gib: float | None,
    workers: int,
) -> dict:
    """Run one contender in a child process; stop it (only it) if its RSS (with its workers')
    passes max_rss_gib; the facts it wrote, with the peak RSS of its process tree (sampled)."""
    calls = int(month.root.name.split("_")[0].removeprefix("calls"))
    command = [
        sys.executable,
        "-m",
        "cdr_devkit.bench_pipeline",
        "--run",
        kind,
        "--base",
        str(base),
        "--calls",
        str(calls),
        "--files",
        str(files),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--workers",
        str(workers),
    ]
    if not validation:
        command.append("--no-validation")
    paths = [str(PROJECT_ROOT / "include"), str(PROJECT_ROOT / "devkit")]
    env = {
        **os.environ,
        **ALLOCATOR_SETTINGS,
        "PYTHONPATH": os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")])),
    }
    print(f"--- {kind} (own process) ---", flush=True)
    (out / f"{kind}.json").unlink(missing_ok=True)
    child, tree_peak = subprocess.Popen(command, env=env), 0.0
    while child.poll() is None:
        tree_peak = max(tree_peak, process_tree_rss_mib(child.pid))
        if max_rss_gib and tree_peak > max_rss_gib * 1024:
            child.kill()
            child.wait()
            raise RuntimeError(f"{kind}: stopped, its RSS passed --max-rss-gib {max_rss_gib}")
        time.sleep(0.2)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    facts = json.loads((out / f"{kind}.json").read_text(encoding="utf-8"))
    return {**facts, "peak_rss_mib": max(facts["peak_rss_mib"], tree_peak)}


def total_seconds(kind: str, stage_seconds: dict[str, float]) -> float:
    """A contender's time: the project's wall time read -> aggregate (GX and the DB migrations
    out); a peer's stages; the parse."""
    return stage_seconds["wall"] if kind == "project" else sum(stage_seconds.values())


# --- the comparison -----------------------------------------------------------------------


def compare_lines(project, peer, peer_name: str = "duckdb") -> tuple[bool, str]:
    """Whether two line frames are identical (after sorting), and a description of the first
    differences."""
    import pandas as pd

    def tidy(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[LINE_COLUMNS].astype(
            {k: str for k in LINE_KEYS} | dict.fromkeys(LINE_COLUMNS[3:], "int64")
        )
        return frame.sort_values(LINE_KEYS).reset_index(drop=True)

    left, right = tidy(project), tidy(peer)
    if left.equals(right):
        return True, f"{len(left):,} lines, identical"
    suffix = f"_{peer_name}"
    both = left.merge(
        right, on=LINE_KEYS, how="outer", suffixes=("_project", suffix), indicator=True
    )
    differing = both[
        (both["_merge"] != "both")
        | (both["total_minor_project"] != both[f"total_minor{suffix}"])
        | (both["call_count_project"] != both[f"call_count{suffix}"])
        | (both["billed_seconds_project"] != both[f"billed_seconds{suffix}"])
    ]
    return (
        False,
        f"{len(differing):,} of {len(both):,} lines differ, e.g.:\n"
        f"{differing.head(10).to_string()}",
    )


def run_benchmark(
    calls: int,
    files: int,
    seed: int = 11,
    base: Path = DEFAULT_BASE,
    validation: bool = True,
    repeat: int = 1,
    max_rss_gib: float | None = None,
    workers: int = 2,
) -> dict:
    """Generate (or reuse) the month, run the four contenders in their own processes (in
    `repeat` rounds, keeping each one's fastest run and each round's times; GX in the first
    round only), compare each peer's lines and counts with the project's."""
    import pandas as pd

    if calls // files < 1_000:
        raise ValueError("at least 1,000 calls per file")
    started = time.perf_counter()
    month = ensure_month(base, calls, files, seed)
    print(f"month ready in {time.perf_counter() - started:.1f} s", flush=True)
    out = month_dir(base, calls, files, seed) / "run"
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    facts: dict[str, dict] = {}
    rounds, gx_seconds = [], {}
    for round_number in range(repeat):
        seconds = {}
        for kind in CONTENDERS:
            validated = (
                validation and round_number == 0
            )  # GX once: it is timed apart from the total
            run = spawn_contender(
                kind, month, base, files, seed, out, validated, max_rss_gib, workers
            )
            run["peak_rss_mib"] = max(
                run["peak_rss_mib"], facts.get(kind, {}).get("peak_rss_mib", 0.0)
            )
            seconds[kind] = total_seconds(kind, run["stage_seconds"])
            if kind == "project" and validated:
                gx_seconds = {k: v for k, v in run["stage_seconds"].items() if k.startswith("gx_")}
            if kind not in facts or seconds[kind] < total_seconds(
                kind, facts[kind]["stage_seconds"]
            ):
                facts[kind] = run
            if kind != "parse" and run["counts"] != facts[kind]["counts"]:
                raise RuntimeError(f"{kind}: counts changed between runs")
        rounds.append(seconds)
    facts["project"]["stage_seconds"].update(gx_seconds)
    project_lines = pd.read_parquet(out / "project_lines.parquet")
    compared = {
        peer: compare_lines(project_lines, pd.read_parquet(out / f"{peer}_lines.parquet"), peer)
        for peer in PEERS
    }
    counts = {kind: facts[kind]["counts"] for kind in ("project", *PEERS)}
    identity = {kind: sum(c[o] for o in OUTCOMES) == c["read"] for kind, c in counts.items()}
    return {
        "month": month,
        "facts": facts,
        "lines_identical": all(same for same, _ in compared.values()),
        "lines_detail": "; ".join(f"{peer}: {detail}" for peer, (_, detail) in compared.items()),
        "counts": counts,
        "counts_identical": all(counts[peer] == counts["project"] for peer in PEERS),
        "identity": identity,
        "parse_rows": facts["parse"]["rows"],
        "repeat": repeat,
        "rounds": rounds,
        "load": (load_before, os.getloadavg()),
        "workers": workers,
    }


PEER_TITLES = {  # the peers' headings, their versions read when the report is printed
    "duckdb": lambda: f"DuckDB {__import__('duckdb').__version__} SQL",
    "polars": lambda: f"Polars {__import__('polars').__version__} lazy API",
}

PROJECT_STAGES = [  # the DAG's tasks, in its order: (function, what it does, rows it takes in)
    ("fetched_locally", "the files recorded in the ledger (the fetch without SFTP)", None),
    ("load_references", "tariff version and entitlement snapshot into SQLite", None),
    ("check_cdr_file_only", "validate_cdr_file less GX: read, row checks, quarantine", "read"),
    ("dedupe_calls", "the month's duplicates, partial calls combined, rows reconciled", "accepted"),
    ("bill_cdr_file", "price, attribute, per-user sums (and intermediate files)", "combined"),
    ("aggregate_lines", "billing lines, proven against the calls and the counts", "billed"),
]


def _stage_rows(counts: dict) -> dict:
    accepted = counts["read"] - counts["quarantined"]
    deduplicated = accepted - counts["duplicates"]
    combined = deduplicated - counts["combined"]
    priced = combined - counts["not_billable"] - counts["unbillable"]
    return {
        "read": counts["read"],
        "accepted": accepted,
        "deduplicated": deduplicated,
        "combined": combined,
        "priced": priced,
        "billed": counts["billed"],
    }


def _round_ratios(rounds: list[dict[str, float]]) -> list[str]:
    """With several rounds: each round's ratios (contenders run one after the other, so a slow
    spell on a shared machine shows as one round's outlier) and their median."""
    if len(rounds) < 2:
        return []
    out = []
    for label, ratio in (
        ("vs DuckDB", lambda r: r["duckdb"] / r["project"]),
        ("vs Polars", lambda r: r["polars"] / r["project"]),
        ("vs parse", lambda r: r["project"] / r["parse"]),
    ):
        values = [ratio(r) for r in rounds]
        out.append(
            f"  {label} per round: {', '.join(f'{v:.2f}x' for v in values)}; "
            f"median {statistics.median(values):.2f}x"
        )
    return out


def format_report(result: dict, validation: bool) -> str:
    """The printed table."""
    facts, counts = result["facts"], result["counts"]["project"]
    rows, out = _stage_rows(counts), []
    read_rows = counts["read"]

    def line(label: str, seconds: float, n: int | None) -> str:
        rate = f"{n / seconds:>14,.0f}" if n and seconds > 0 else " " * 14
        count = f"{n:>13,}" if n is not None else " " * 13
        return f"  {label:<58}{seconds:>9.2f} s{count}{rate}"

    project = facts["project"]["stage_seconds"]
    project_total = total_seconds("project", project)
    peer_totals = {peer: total_seconds(peer, facts[peer]["stage_seconds"]) for peer in PEERS}
    parse = facts["parse"]["stage_seconds"]["parse"]
    head = f"  {'stage':<58}{'wall':>11}{'rows in':>13}{'rows/s':>14}"
    (before, after) = result["load"]
    runs = (
        f"the fastest of {result['repeat']} rounds each (GX in the first)"
        if result["repeat"] > 1
        else "one run each"
    )
    out += [
        f"\n{read_rows:,} rows read in {len(result['month'].cdr_files)} files "
        f"(month {result['month'].month}); "
        f"{os.cpu_count()} cores; wall clock, {runs} (the parse: best of {PARSE_REPEATS}); "
        "load average "
        f"{before[0]:.1f} before, {after[0]:.1f} after "
        "(timings are noisy when the machine is shared)",
        "",
        f"project (cdr_billing): per-file steps in {result['workers']} worker processes, "
        "as mapped tasks; "
        "stage times summed over the workers",
        head,
    ]
    for name, what, rows_key in PROJECT_STAGES:
        out.append(
            line(f"{name} ({what})", project.get(name, 0.0), rows[rows_key] if rows_key else None)
        )
    out.append(line("TOTAL the month's tasks, wall clock (GX out)", project_total, read_rows))
    if validation:
        out.append(
            line(
                "GX: expect_cdr_file, summed (not in the total)",
                project.get("expect_cdr_file", 0.0),
                rows["accepted"],
            )
        )
        out.append(
            line(
                "GX: wall clock, a fresh process per file",
                project.get("gx_wall", 0.0),
                rows["accepted"],
            )
        )
    else:
        out.append("  GX validation: skipped (--no-validation)")
    out.append(
        line("billing DB migrations (setup, not in the total)", project.get("db_setup", 0.0), None)
    )
    peer_rows = {
        "read+check": read_rows,
        "dedupe+combine": rows["accepted"],
        "reference": None,
        "rate+attribute": rows["combined"],
        "aggregate": None,
    }
    for peer in PEERS:
        out += ["", f"{PEER_TITLES[peer]()} (threads = 2)", head]
        for name, seconds in facts[peer]["stage_seconds"].items():
            out.append(line(name, seconds, peer_rows.get(name)))
        out.append(line("TOTAL", peer_totals[peer], read_rows))
    out += [
        "",
        "bare pyarrow.csv.read_csv, every column as text",
        head,
        line("parse", parse, result["parse_rows"]),
    ]
    rss = {kind: facts[kind]["peak_rss_mib"] for kind in CONTENDERS}
    gx_note = "with GX" if validation else "no GX"
    out += [
        "",
        f"peak RSS: project {rss['project']:,.0f} MiB ({gx_note}), "
        f"DuckDB {rss['duckdb']:,.0f} MiB, Polars {rss['polars']:,.0f} MiB, "
        f"parse {rss['parse']:,.0f} MiB",
    ]
    versus_parse = project_total / parse
    out += [
        f"project vs DuckDB: {peer_totals['duckdb'] / project_total:.2f}x "
        "(DuckDB time / project time; > 1: the project is faster; target >= 1.5)",
        f"project vs Polars: {peer_totals['polars'] / project_total:.2f}x "
        "(Polars time / project time; > 1: the project is faster; target > 1)",
        f"project vs bare parse: {versus_parse:.2f}x (project time / parse time; target <= 3)",
        *_round_ratios(result["rounds"]),
        "",
        f"  {'count':<14}{'project':>14}" + "".join(f"{peer:>14}" for peer in PEERS),
    ]
    for key in ("read", *OUTCOMES):
        out.append(
            f"  {key:<14}{counts[key]:>14,}"
            + "".join(f"{result['counts'][peer][key]:>14,}" for peer in PEERS)
        )
    identity = result["identity"]
    out += [
        "read = billed + quarantined + duplicates + not_billable + unbillable + suspense + "
        "combined + prepaid: "
        + ", ".join(
            f"{kind} {'holds' if identity[kind] else 'FAILS'}" for kind in ("project", *PEERS)
        ),
        f"counts identical: {'yes' if result['counts_identical'] else 'NO'}",
        f"billing lines: {result['lines_detail']}",
    ]
    return "\n".join(out)


def add_month_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick the generated month: calls, files, seed and where months are cached."""
    parser.add_argument(
        "--calls", type=int, default=10_000_000, help="calls in the month (default 10,000,000)"
    )
    parser.add_argument(
        "--files", type=int, default=10, help="carrier CSV files they are spread over (default 10)"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--base", type=Path, default=DEFAULT_BASE, help="where generated months are cached"
    )


class LimitBench(NamedTuple):
    """What a bench against a limit (bench_sftp, bench_load) was asked for."""

    month: BenchMonth
    root: Path
    repeat: int


def limit_bench_arguments(
    description: str, default_root: Path, argv: Sequence[str] | None
) -> LimitBench:
    """The month, the bench's folder and its rounds from the command line; SIGTERM then stops
    the bench's servers as Ctrl-C does."""
    parser = argparse.ArgumentParser(description=description)
    add_month_arguments(parser)
    parser.add_argument("--root", type=Path, default=default_root, help="where the bench lives")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; each contender's best counts"
    )
    args = parser.parse_args(argv)
    stop_on_sigterm()
    month = ensure_month(args.base, args.calls, args.files, args.seed)
    return LimitBench(month, args.root.resolve(), args.repeat)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_month_arguments(parser)
    parser.add_argument(
        "--no-validation", action="store_true", help="skip the Great Expectations suites"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of runs; each contender's fastest counts"
    )
    parser.add_argument(
        "--max-rss-gib", type=float, help="stop a contender whose RSS passes this (shared machines)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes for the project's per-file steps (default 2)",
    )
    parser.add_argument("--run", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    validation = not args.no_validation
    if args.run:
        month = ensure_month(args.base, args.calls, args.files, args.seed, log=lambda _: None)
        _child(args.run, month, args.out, validation, args.workers)
        return 0
    result = run_benchmark(
        args.calls,
        args.files,
        args.seed,
        args.base,
        validation,
        args.repeat,
        args.max_rss_gib,
        args.workers,
    )
    print(format_report(result, validation))
    ok = (
        result["lines_identical"]
        and result["counts_identical"]
        and all(result["identity"].values())
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
