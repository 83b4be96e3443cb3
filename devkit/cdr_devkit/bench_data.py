"""A large billing month for `make bench-pipeline`: carrier CSV files, tariff, entitlements.

Vectorised (numpy, pyarrow) so 10 million calls take about a minute; cached by parameters
under `.bench/pipeline/<params>/` (a `complete` marker is written last, so an interrupted
generation is redone). The files follow exactly what the project reads: the `carrier_csv`
profile's canonical columns (as `sample_data.write_carrier_csv` writes them, UTC
timestamps), the tariff CSV columns of `cdr_billing.tariff` (plus `valid_from`/`valid_to`)
and the entitlement snapshot columns of `cdr_billing.entitlements`.

What a month holds, on purpose (per file; "k" = max(1, rows per file // 100,000)):
- about 5,000 tariff prefixes (nested, EUR; Swedish `46...` prefixes in SEK; 60/60, 30/6
  and 1/1 increments, fees, minimum charges); 40 prefixes change price on the 15th
  (two rows with validity), 20 have a rate only from the 20th (earlier calls fall back to
  a shorter prefix, or are unbillable when there is none);
- destination numbers as `+E.164`, `00...` and national `0...` (Swedish); 1 % in an unknown
  range (unbillable) and k numbers with 16 digits (more than E.164 allows: unbillable);
- completion status 1 (93 %), 0 failed (4 %), 3 delivery failed (2 %), and 0.5 % of the
  rows as two partial parts (status 2) sharing a session id and account: most in time
  order with one number, 15 % transferred to another number and numbered against time or
  starting together (the part number as a number decides which part, and so which number, is
  billed: parts 9 and 10 too, where text order would pick 10), one session
  per file boundary split across two files, and k rows of status 2 without a session id;
- k rows of each invalid kind (quarantined): bad timestamp, start just before the month
  (Stockholm midnight), negative duration, fractional duration, duration above the
  maximum, empty account, status 7, a destination that is not a number, a revenue share
  above 100 % and one with three decimals; and k valid rows written oddly ("60.0" s,
  status "1.0", a start exactly at the month's first second, revenue share "12.50");
- max(3, rows // 10,000) re-delivered duplicates appended to each file (the same
  transaction id one second longer, so keeping the wrong copy changes the totals), copied
  from the previous file (the first file: from its own earlier rows);
- 50,000 accounts of 2,000 customers: 20 % without a cost center (default sequence), 1 %
  not entitled, 10 customers without a default sequence number (their accounts without
  a cost center go to suspense), `entitled` written as true/TRUE/yes/1 and false/0/no;
  0.5 % of the calls by 300 accounts the snapshot does not know (suspense).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cdr_billing.canonical import CARRIER_FIELDS
from cdr_billing.entitlements import COLUMNS as ENTITLEMENT_COLUMNS
from cdr_billing.months import BillingMonth
from cdr_billing.tariff import REQUIRED_COLUMNS as TARIFF_COLUMNS

GENERATOR_VERSION = 3  # bump when the generated content changes: the cache key includes it
MONTH = BillingMonth(2026, 10)
TIMEZONE = "Europe/Stockholm"  # the billing timezone of pipeline.yaml: month bounds
PREFIXES = 5_000
ACCOUNTS, CUSTOMERS, UNKNOWN_ACCOUNTS = 50_000, 2_000, 300
NUMBER_DIGITS = 12  # E.164 digits of a generated destination number
UNKNOWN_RANGE = 888  # no tariff prefix starts with 88
DURATIONS = np.array([0, 1, 12, 59, 60, 61, 95, 180, 600, 1800])
INCREMENTS = [(60, 60), (30, 6), (1, 1)]
COUNTRIES = [
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
PROVIDERS = np.array(["NordCarrier", "BalticTransit"])
SHARES = np.array(["", "12.5", "30"])


@dataclass(frozen=True)
class BenchMonth:
    """Where a generated month's files are."""

    root: Path
    cdr_files: tuple[Path, ...]
    tariff: Path
    entitlements: Path
    month: BillingMonth
    rows: int  # rows written, duplicates included


def month_dir(base: Path, calls: int, files: int, seed: int) -> Path:
    """The cache directory of one parameter set."""
    return base / f"calls{calls}_files{files}_seed{seed}_v{GENERATOR_VERSION}"


def _listing(root: Path, files: int) -> BenchMonth:
    cdr = tuple(
        root / "cdr" / f"carrier_cdr_{MONTH.year}{MONTH.month:02d}_{k + 1:02d}.csv"
        for k in range(files)
    )
    rows = int((root / "complete").read_text().split()[0]) if (root / "complete").exists() else 0
    return BenchMonth(
        root,
        cdr,
        root / "reference" / f"tariff_{MONTH}-01.csv",
        root / "reference" / f"entitlements_{MONTH.next()}-02.csv",
        MONTH,
        rows,
    )


def ensure_month(base: Path, calls: int, files: int, seed: int = 11, log=print) -> BenchMonth:
    """Return the cached month for these parameters, generating it first when needed."""
    root = month_dir(base, calls, files, seed)
    listing = _listing(root, files)
    if (root / "complete").exists() and all(
        p.exists() for p in (*listing.cdr_files, listing.tariff, listing.entitlements)
    ):
        log(f"reusing the generated month in {root}")
        return listing
    log(f"generating {calls:,} calls in {files} files under {root} ...")
    (root / "cdr").mkdir(parents=True, exist_ok=True)
    (root / "reference").mkdir(parents=True, exist_ok=True)
    (root / "complete").unlink(missing_ok=True)
    tariff = _write_tariff(listing.tariff, random.Random(seed))
    accounts = _write_entitlements(listing.entitlements, np.random.default_rng(seed + 1))
    rows = _write_calls(listing.cdr_files, calls, tariff, accounts, seed)
    (root / "complete").write_text(f"{rows} rows\n", encoding="utf-8")
    return _listing(root, files)


# --- tariff -------------------------------------------------------------------------


def _money(micro: int) -> str:
    return f"{micro // 1_000_000}.{micro % 1_000_000:06d}"


def _write_tariff(path: Path, rng: random.Random) -> list[str]:
    """~5,000 nested prefixes; returns the prefixes that have a rate before the 20th."""
    chosen: set[str] = set()
    while len(chosen) < PREFIXES:
        country = rng.choice(COUNTRIES)
        chosen.add(country + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 5))))
    prefixes = sorted(chosen)
    shuffled = rng.sample(prefixes, 60)
    changes, late = set(shuffled[:40]), set(shuffled[40:])
    rows = []
    for line, prefix in enumerate(prefixes):
        first, following = rng.choice(INCREMENTS)
        price = rng.randrange(1_000, 500_000, 100)
        base = {
            "prefix": prefix,
            "destination": f"destination {line}",
            "price_per_minute": _money(price),
            "connection_fee": _money(rng.choice([0, 0, 10_000, 50_000])),
            "minimum_charge": _money(rng.choice([0, 0, 100_000])),
            "first_increment": str(first),
            "next_increment": str(following),
            "currency": "SEK" if prefix.startswith("46") else "EUR",
            "valid_from": "",
            "valid_to": "",
        }
        if prefix in late:
            rows.append({**base, "valid_from": f"{MONTH}-20"})
        elif prefix in changes:
            rows.append({**base, "valid_to": f"{MONTH}-15"})
            rows.append(
                {
                    **base,
                    "price_per_minute": _money(price * 3 // 2 // 100 * 100),
                    "valid_from": f"{MONTH}-15",
                }
            )
        else:
            rows.append(base)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*TARIFF_COLUMNS, "valid_from", "valid_to"])
        writer.writeheader()
        writer.writerows(rows)
    return prefixes


# --- entitlements ---------------------------------------------------------------------


def _write_entitlements(path: Path, rng: np.random.Generator) -> int:
    customer = rng.integers(0, CUSTOMERS, ACCOUNTS)
    default = np.char.add("9", np.char.zfill((customer * 10).astype(str), 5)).astype(object)
    default[np.isin(customer, np.arange(10))] = ""  # customers without a default cost center
    own = np.char.add(
        np.char.add("9", np.char.zfill((customer * 10).astype(str), 5)),
        rng.integers(1, 5, ACCOUNTS).astype(str),
    )
    own = own.astype(object)
    own[rng.random(ACCOUNTS) < 0.2] = ""
    entitled = rng.random(ACCOUNTS) >= 0.01
    yes, no = np.array(["true", "true", "TRUE", "yes", "1"]), np.array(["false", "0", "no"])
    flags = np.where(
        entitled, yes[rng.integers(0, len(yes), ACCOUNTS)], no[rng.integers(0, len(no), ACCOUNTS)]
    )
    logins = rng.integers(0, 400, ACCOUNTS).astype("timedelta64[D]") + np.datetime64("2025-10-01")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ENTITLEMENT_COLUMNS)
        for n in range(ACCOUNTS):
            writer.writerow(
                [
                    _account(n),
                    f"user{n}@c{customer[n]}.example.com",
                    f"C{10_000 + customer[n]}",
                    own[n],
                    default[n],
                    flags[n],
                    str(logins[n]),
                ]
            )
    return ACCOUNTS


def _account(n: int) -> str:
    return f"SUB-{n:06d}"


# --- calls ----------------------------------------------------------------------------


def _utc_seconds(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp())


class _Clock:
    """ISO 8601 UTC text for epoch seconds, fast: an hour table joined with a mm:ss table."""

    def __init__(self, first: int, last: int) -> None:
        self.base = first - first % 3600
        hours = np.arange(self.base, last + 3600, 3600, dtype=np.int64)
        self.hours = pc.strftime(pa.array(hours, pa.timestamp("s", "UTC")), "%Y-%m-%dT%H:")
        self.minutes = pa.array([f"{m // 60:02d}:{m % 60:02d}Z" for m in range(3600)])

    def text(self, seconds: np.ndarray) -> pa.Array:
        offset = seconds - self.base
        return pc.binary_join_element_wise(
            pc.take(self.hours, offset // 3600), pc.take(self.minutes, offset % 3600), ""
        )


def _numbers(rng: np.random.Generator, n: int, prefixes: list[str]) -> pa.Array:
    """Destination numbers: a tariff prefix (60 % Swedish) plus digits, 1 % unknown range;
    written +E.164, 00... or (Swedish) national 0..."""
    values = np.array([int(p) for p in prefixes], dtype=np.int64)
    lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
    swedish = np.flatnonzero(np.char.startswith(np.array(prefixes), "46"))
    pick = np.where(
        rng.random(n) < 0.6,
        swedish[rng.integers(0, len(swedish), n)],
        rng.integers(0, len(prefixes), n),
    )
    tail_digits = NUMBER_DIGITS - lengths[pick]
    scale = np.power(10, tail_digits, dtype=np.int64)
    digits = values[pick] * scale + (rng.random(n) * scale).astype(np.int64)
    unknown = rng.random(n) < 0.01
    digits[unknown] = UNKNOWN_RANGE * 10 ** (NUMBER_DIGITS - 3) + rng.integers(
        0, 10 ** (NUMBER_DIGITS - 3), int(unknown.sum())
    )
    text = pa.array(digits).cast(pa.string())
    style = rng.random(n)
    is_swedish = (digits // 10 ** (NUMBER_DIGITS - 2)) == 46
    national = pc.binary_join_element_wise("0", pc.utf8_slice_codeunits(text, 2), "")
    written = np.where(style < 0.6, 0, np.where(style < 0.8, 1, 2))  # 0 "+", 1 "00", 2 national
    written[(written == 2) & ~is_swedish] = 0
    plus = pc.binary_join_element_wise("+", text, "")
    zeros = pc.binary_join_element_wise("00", text, "")
    return pc.if_else(
        pa.array(written == 0), plus, pc.if_else(pa.array(written == 1), zeros, national)
    )


class _OpenSession(NamedTuple):
    """The second part of a partial call that a file ends with the first part of: what the next
    file's first row takes over."""

    session: str
    status: str
    part: str
    user: str
    destination: str


class _FileRows(NamedTuple):
    """One file's rows, its clean rows (the next file re-delivers some of them) and the session
    it leaves open for the next file (None for the last file)."""

    table: pa.Table
    clean: pa.Table
    open_session: _OpenSession | None


def _write_calls(
    paths: tuple[Path, ...], calls: int, prefixes: list[str], accounts: int, seed: int
) -> int:
    month_start, month_end = (_utc_seconds(b) for b in MONTH.bounds(TIMEZONE))
    clock = _Clock(month_start - 86_400, month_end + 86_400 * 2)
    starts = np.sort(np.random.default_rng(seed + 2).integers(month_start, month_end, calls))
    sizes = [calls // len(paths) + (k < calls % len(paths)) for k in range(len(paths))]
    first_row, rows, written = 0, None, 0
    for k, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        rng = np.random.default_rng([seed, k])
        rows = _file_rows(
            rng,
            k,
            len(paths),
            first_row,
            starts[first_row : first_row + size],
            prefixes,
            accounts,
            clock,
            previous=rows.clean if rows else None,
            carried=rows.open_session if rows else None,
        )
        table = rows.table
        # The header unquoted, as a carrier (and sample_data) writes it.
        with path.open("wb") as handle:
            handle.write((",".join(CARRIER_FIELDS) + "\n").encode())
            pacsv.write_csv(
                table,
                handle,
                write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
            )
        first_row += size
        written += table.num_rows
    return written


def _file_rows(
    rng, k, files, first_row, starts, prefixes, accounts, clock, previous, carried
) -> _FileRows:
    """One file's rows (`previous`: the clean rows of the file before, `carried`: the session
    it left open)."""
    n = len(starts)
    g = np.arange(first_row, first_row + n)
    duration = np.where(
        rng.random(n) < 0.7, DURATIONS[rng.integers(0, len(DURATIONS), n)], rng.integers(1, 3601, n)
    )
    status = rng.choice(np.array(["1", "0", "3"]), n, p=[0.94, 0.04, 0.02]).astype(object)
    user = (rng.random(n) ** 2 * accounts).astype(np.int64)
    user_text = np.char.add("SUB-", np.char.zfill(user.astype(str), 6)).astype(object)
    unknown = rng.random(n) < 0.005
    user_text[unknown] = np.char.add(
        "SUB-", (900_000 + rng.integers(0, UNKNOWN_ACCOUNTS, int(unknown.sum()))).astype(str)
    )
    destination = np.array(_numbers(rng, n, prefixes).to_pylist(), dtype=object)
    session = np.char.add("S", np.char.zfill(g.astype(str), 9)).astype(object)
    part = np.full(n, "1", dtype=object)
    starts = starts.copy()
    clean = np.ones(n, dtype=bool)
    start_text = np.array(clock.text(starts).to_pylist(), dtype=object)
    duration_text = duration.astype(str).astype(object)
    share = SHARES[g % 3].astype(object)

    # Partial calls: pairs (i, i+1) at positions 0 mod 4; singles use positions 2 and 3 mod 4.
    pairs = rng.choice(
        np.arange(4, n - 4, 4), size=min(max(2, n // 200), (n - 8) // 4), replace=False
    )
    order = rng.random(len(pairs))
    for i, o in zip(pairs, order, strict=True):
        j = i + 1
        session[i] = session[j] = f"SP{g[i]:09d}"
        status[i] = status[j] = "2"
        user_text[j] = user_text[i]
        # the same number; the others were transferred: which part is first decides the price
        if o >= 0.15:
            destination[j] = destination[i]
        if o < 0.1:  # numbered against time: the earlier part (by start) is still the first
            part[i], part[j] = "2", "1"
        # both start together: the lower part number (the later row) is the first; 9 before 10
        elif o < 0.15:
            starts[j] = starts[i]
            start_text[j] = start_text[i]
            part[i], part[j] = ("2", "1") if o < 0.125 else ("10", "9")
        else:
            part[j] = "2"
    clean[pairs] = clean[pairs + 1] = False
    if carried is not None:  # the second part of the session the previous file ended with
        session[0], status[0], part[0], user_text[0], destination[0] = carried
        clean[0] = False
    carried = None
    if k < files - 1:
        carried = _OpenSession(f"SX{k:03d}", "2", "2", user_text[n - 1], destination[n - 1])
        session[n - 1], status[n - 1], part[n - 1] = f"SX{k:03d}", "2", "1"
        clean[n - 1] = False

    each = max(1, n // 100_000)
    singles = rng.permutation(np.concatenate([np.arange(2, n - 2, 4), np.arange(3, n - 2, 4)]))
    edits = [
        ("start", f"{MONTH.year}-13-40T99:00:00Z"),  # BAD_TIMESTAMP
        (
            "start",
            datetime.fromtimestamp(_utc_seconds(MONTH.bounds(TIMEZONE).start) - 1, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        ),
        ("duration", "-5"),  # DURATION_OUT_OF_RANGE
        ("duration", "12.5"),  # BAD_DURATION
        ("duration", "90000"),  # DURATION_OUT_OF_RANGE (max_call_seconds 86400)
        ("user", ""),  # MISSING_ACCOUNT
        ("status", "7"),  # BAD_COMPLETION_STATUS
        ("destination", "12ab45"),  # BAD_NUMBER
        ("share", "100.5"),  # BAD_REVENUE_SHARE
        ("share", "12.345"),  # BAD_REVENUE_SHARE
        # valid, written oddly:
        ("duration", "60.0"),
        ("status", "1.0"),
        (
            "start",
            datetime.fromtimestamp(_utc_seconds(MONTH.bounds(TIMEZONE).start), UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        ),
        ("share", "12.50"),
        # 16 digits: valid text, but no E.164 number: unbillable
        (
            "destination",
            "+4412345678901234",
        ),
        ("status_partial_alone", "2"),  # status 2 without a session id: billed on its own
    ]
    columns = {
        "start": start_text,
        "duration": duration_text,
        "user": user_text,
        "status": status,
        "destination": destination,
        "share": share,
    }
    for e, (field, value) in enumerate(edits):
        for i in singles[e * each : (e + 1) * each]:
            if field == "status_partial_alone":
                status[i], session[i] = value, ""
            else:
                columns[field][i] = value
            clean[i] = False

    end = starts + duration
    table = {
        "transaction_id": pa.array(
            np.char.add(f"T{MONTH.year}{MONTH.month:02d}-", np.char.zfill(g.astype(str), 9))
        ),
        "session_id": pa.array(session, pa.string()),
        "service_name": pa.array(np.full(n, "voice")),
        "user_id": pa.array(user_text, pa.string()),
        "start_of_usage": pa.array(start_text, pa.string()),
        "connect_time": clock.text(starts + 3),
        "end_of_usage": clock.text(end),
        "duration_of_usage": pa.array(duration_text, pa.string()),
        "amount_of_usage": pa.array(duration.astype(str)),
        "originating_party": pa.array(
            np.char.add("+46701", np.char.zfill(rng.integers(0, 10**6, n).astype(str), 6))
        ),
        "destination_party": pa.array(destination, pa.string()),
        "transaction_part_number": pa.array(part, pa.string()),
        "completion_status": pa.array(status, pa.string()),
        "additional_info": pa.array(np.full(n, "")),
        "service_provider": pa.array(PROVIDERS[g % 2]),
        "revenue_share_percentage": pa.array(share, pa.string()),
        "party_to_charge": pa.array(np.full(n, "originating")),
        "charging_info": pa.array(np.full(n, "postpaid")),
    }
    own = pa.table({name: table[name] for name in CARRIER_FIELDS})
    # Re-delivered duplicates: clean rows of the previous file (the first file: its own), one
    # second longer.
    source = previous if previous is not None else own.filter(pa.array(clean))
    copies = source.take(
        pa.array(rng.choice(source.num_rows, size=max(3, n // 10_000), replace=False))
    )
    longer = pc.cast(pc.add(pc.cast(copies["duration_of_usage"], pa.int64()), 1), pa.string())
    copies = copies.set_column(
        CARRIER_FIELDS.index("duration_of_usage"), "duration_of_usage", longer
    )
    return _FileRows(pa.concat_tables([own, copies]), own.filter(pa.array(clean)), carried)
