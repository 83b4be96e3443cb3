"""`make bench-rating`: rate N calls against a 5,000-prefix tariff three ways, in one process.

1. the project's engine (`cdr_billing.rate.rate_calls`: E.164 normalisation, longest-prefix
   match by binary search over prefix intervals, integer micro-unit costs);
2. a straightforward per-row Python loop (dict lookups from the longest prefix down, Decimal);
3. DuckDB SQL implementing the same rules (candidate prefixes joined on equality).
All three must agree on every call's cost; prints wall time, peak memory and ratios.
"""

from __future__ import annotations

import argparse
import random
import time
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd

from cdr_billing.config import BillingSettings
from cdr_billing.rate import normalise_numbers, price_numbers, rate_calls
from cdr_devkit.memory import peak_rss_mib

RULES = BillingSettings("billing_db", "UTC", "46", "0", "00", 86400, 0, 0.01)
INCREMENTS = [(60, 60), (30, 6), (1, 1)]


def make_tariff(prefixes: int, seed: int = 3) -> pd.DataFrame:
    rng = random.Random(seed)
    chosen: set[str] = set()
    while len(chosen) < prefixes:
        country = rng.choice(
            [
                "1",
                "44",
                "46",
                "49",
                "33",
                "358",
                "47",
                "45",
                "31",
                "34",
                "39",
                "61",
                "81",
                "86",
                "91",
            ]
        )
        chosen.add(country + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 5))))
    rows = []
    for line, prefix in enumerate(sorted(chosen), start=2):
        first, following = rng.choice(INCREMENTS)
        rows.append(
            {
                "prefix": prefix,
                "destination": f"d{line}",
                "price_micro": rng.randrange(1_000, 500_000, 100),
                "fee_micro": rng.choice([0, 0, 10_000, 50_000]),
                "minimum_micro": rng.choice([0, 0, 100_000]),
                "first_increment": first,
                "next_increment": following,
                "currency": "EUR",
                "line": line,
            }
        )
    tariff = pd.DataFrame(rows)
    return tariff.assign(
        version_id=1,
        band="all",
        weekday_mask=127,
        start_hour=0,
        end_hour=24,
        valid_from=pd.Timestamp("1970-01-01", tz="UTC"),
        valid_to=pd.NaT,
    )


def make_calls(tariff: pd.DataFrame, count: int, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    prefixes = tariff["prefix"].to_numpy()
    heads = prefixes[rng.integers(0, len(prefixes), count)].astype(object)
    heads[rng.random(count) < 0.01] = "999"  # an unknown range
    tails = rng.integers(10**6, 10**7, count).astype(str).astype(object)
    numbers = "+" + heads + tails
    starts = pd.Timestamp("2026-10-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 30 * 86400, count), unit="s"
    )
    return pd.DataFrame(
        {
            "transaction_id": np.arange(count).astype(str),
            "source": "carrier",
            "user_id": "u",
            "completion_status": 1,
            "duration_seconds": rng.integers(0, 3600, count),
            "destination_party": pd.array(numbers, dtype="str"),
            "pre_priced": False,
            "provider_cost_micro": pd.array(np.zeros(count, np.int64), dtype="Int64"),
            "currency": "",
            "source_file": "bench.csv",
            "source_row": np.arange(count) + 2,
            "start_utc": starts,
        }
    )


def engine(calls: pd.DataFrame, tariff: pd.DataFrame) -> pd.Series:
    """The rating step: normalise, match, cost; arrays in, costs out (as the SQL peer)."""
    e164 = normalise_numbers(calls["destination_party"], RULES)
    durations = calls["duration_seconds"].to_numpy(np.int64)
    position, _, cost = price_numbers(e164, calls["start_utc"], durations, tariff, RULES.timezone)
    return pd.Series(cost[position >= 0], index=calls["transaction_id"].to_numpy()[position >= 0])


def engine_frames(calls: pd.DataFrame, tariff: pd.DataFrame) -> pd.Series:
    """The same through `rate_calls`, which also carries every CDR column and lineage along."""
    priced, _, _ = rate_calls(calls, tariff, RULES)
    return pd.Series(priced["cost_minor"].to_numpy(), index=priced["transaction_id"].to_numpy())


def python_loop(calls: pd.DataFrame, tariff: pd.DataFrame) -> pd.Series:
    rates = {row.prefix: row for row in tariff.itertuples()}
    longest = max(len(p) for p in rates)
    cent, micro = Decimal("0.01"), Decimal(1_000_000)
    costs = {}
    for transaction_id, number, duration in zip(
        calls["transaction_id"], calls["destination_party"], calls["duration_seconds"], strict=True
    ):
        digits = number.lstrip("+")
        rate = next(
            (
                rates[digits[:n]]
                for n in range(min(longest, len(digits)), 0, -1)
                if digits[:n] in rates
            ),
            None,
        )
        if rate is None:
            continue
        billed = (
            0
            if duration == 0
            else rate.first_increment
            + -(-max(duration - rate.first_increment, 0) // rate.next_increment)
            * rate.next_increment
        )
        cost = (
            max(
                Decimal(rate.fee_micro) + Decimal(rate.price_micro) * billed / 60,
                Decimal(rate.minimum_micro),
            )
            / micro
        )
        costs[transaction_id] = int(cost.quantize(cent, rounding=ROUND_HALF_UP) * 100)
    return pd.Series(costs)


DUCKDB_SQL = """
WITH numbers AS (
    SELECT transaction_id, duration_seconds AS d, ltrim(destination_party, '+') AS digits FROM calls
), keys AS (
    SELECT n.transaction_id, n.d, substr(n.digits, 1, lengths.l) AS key
    FROM numbers n CROSS JOIN (SELECT DISTINCT length(prefix) AS l FROM tariff) lengths
), candidates AS (
    SELECT k.transaction_id, k.d, t.* FROM keys k JOIN tariff t ON t.prefix = k.key
), best AS (
    SELECT * FROM candidates
    QUALIFY row_number() OVER (PARTITION BY transaction_id ORDER BY length(prefix) DESC) = 1
), billed AS (
    SELECT *, CASE WHEN d = 0 THEN 0 ELSE first_increment
        + ceil(greatest(d - first_increment, 0) / next_increment)::BIGINT * next_increment
        END AS s
    FROM best
)
SELECT transaction_id,
       ((greatest(fee_micro * 60 + price_micro * s, minimum_micro * 60) + 300000)
        // 600000)::BIGINT AS cost
FROM billed
"""


def duckdb_sql(calls: pd.DataFrame, tariff: pd.DataFrame) -> pd.Series:
    import duckdb

    connection = duckdb.connect()
    connection.register("calls", calls[["transaction_id", "duration_seconds", "destination_party"]])
    connection.register("tariff", tariff.drop(columns=["valid_from", "valid_to"]))
    result = connection.execute(DUCKDB_SQL).df()
    return pd.Series(result["cost"].to_numpy(), index=result["transaction_id"].to_numpy())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000_000)
    parser.add_argument("--prefixes", type=int, default=5_000)
    args = parser.parse_args()
    tariff = make_tariff(args.prefixes)
    calls = make_calls(tariff, args.calls)
    print(
        f"{args.calls:,} calls, {args.prefixes:,} prefixes; "
        f"peak RSS after generating: {peak_rss_mib():,.0f} MiB"
    )
    results, times = {}, {}
    implementations = (
        ("engine", engine),
        ("engine frames", engine_frames),
        ("duckdb", duckdb_sql),
        ("python loop", python_loop),
    )
    for name, implementation in implementations:
        started = time.perf_counter()
        results[name] = implementation(calls, tariff).sort_index()
        times[name] = time.perf_counter() - started
        rate_per_second = args.calls / times[name]
        print(
            f"{name:<14}{times[name]:>9.2f} s{rate_per_second:>14,.0f} calls/s   "
            f"peak RSS so far {peak_rss_mib():,.0f} MiB"
        )
    agree = all(results["engine"].equals(other) for other in results.values())
    print(f"all agree on every cost ({len(results['engine']):,} priced calls): {agree}")
    for name in ("engine", "engine frames"):
        versus_duckdb, versus_loop = (
            times["duckdb"] / times[name],
            times["python loop"] / times[name],
        )
        print(
            f"{name} vs DuckDB: {versus_duckdb:.2f}x faster; "
            f"vs the Python loop: {versus_loop:.1f}x faster"
        )
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
