"""The golden month's oracle: the documented billing rules, computed row by row.

Written from the rules, apart from the engine (no `cdr_billing` import): csv and openpyxl
read the files, Decimal carries every amount, zoneinfo every time, loops do the work. It
knows the two golden sources (the conferencing export, priced by the provider, and the
carrier CSV, priced by the tariff) by their column headers, as a person reading the files
would. The end-to-end golden-month test compares the loaded billing lines with `bill_month`.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

BILLING_ZONE = ZoneInfo("Europe/Stockholm")
UTC = ZoneInfo("UTC")
COUNTRY_CODE, NATIONAL_PREFIX, INTERNATIONAL_PREFIX = "46", "0", "00"
MAX_CALL_SECONDS = 86400
MAX_COST = Decimal(10**9)  # major units
MAX_COST_DECIMALS = 6

# ISO 4217 (list one, active codes) by minor unit; a code not here has none ("N.A.": XAU, XDR...).
_ISO_4217_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_ISO_4217_THREE = "BHD IQD JOD KWD LYD OMR TND"
_ISO_4217_FOUR = "CLF UYW"
_ISO_4217_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW "
    "KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN "
    "NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU "
    "UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL"
)
MINOR_UNITS = {
    **dict.fromkeys(_ISO_4217_ZERO.split(), 0),
    **dict.fromkeys(_ISO_4217_TWO.split(), 2),
    **dict.fromkeys(_ISO_4217_THREE.split(), 3),
    **dict.fromkeys(_ISO_4217_FOUR.split(), 4),
}

WHOLE_SECONDS = re.compile(r"-?[0-9]+(?:\.0+)?")
DECIMAL_WRITTEN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
STATUS_WRITTEN = re.compile(r"([0-3])(?:\.0+)?")
SHARE_WRITTEN = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?")
SEPARATORS = re.compile(r"[\s\-]")
TRUE_WORDS = {"true", "1", "yes", "y", "t"}


# --- money -------------------------------------------------------------------------------


def minor_unit(currency: str) -> int | None:
    """The ISO 4217 minor unit of a code (case-insensitive), None if the code has none."""
    return MINOR_UNITS.get(currency.strip().upper())


def round_half_away(amount: Decimal, currency: str) -> Decimal:
    """Round to the currency's minor unit, halves away from zero (as a priced leg is)."""
    step = Decimal(1).scaleb(-minor_unit(currency))
    rounded = abs(amount).quantize(step, rounding=ROUND_HALF_UP)
    return -rounded if amount < 0 else rounded


def billed_priced_cost(cost: Decimal, currency: str, markup_percent: Decimal) -> Decimal:
    """A pre-priced leg's bill: its cost plus the source's markup, rounded once."""
    return round_half_away(cost * (1 + markup_percent / 100), currency)


def to_minor(amount: Decimal, currency: str) -> int:
    """An amount in its currency's minor units (what billing_line.total_minor holds)."""
    return int(amount.scaleb(minor_unit(currency)))


# --- input rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """One CDR file as delivered: its source, name, when the ledger first saw it, and path;
    allow_credits: its source's profile bills negative costs as credits."""

    source: str
    path: Path
    first_seen: datetime
    allow_credits: bool = False

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Cdr:
    """A CDR row that passed validation, with its typed values."""

    source: str
    file: str
    row: int
    transaction_id: str
    session_id: str
    part: int | None
    status: int
    start: datetime  # aware
    seconds: int
    account: str
    destination: str = ""
    cost: Decimal | None = None  # pre-priced sources
    currency: str = ""
    parts: list[Cdr] = field(default_factory=list)


class Quarantine(Exception):
    """A row fails a rule; the reason code names which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value).strip()


def parse_seconds(text: str) -> int:
    """A duration in whole seconds ("60.0" is 60), range-checked."""
    if not WHOLE_SECONDS.fullmatch(text):
        raise Quarantine("BAD_DURATION")
    seconds = int(text.split(".")[0])
    if not 0 <= seconds <= MAX_CALL_SECONDS:
        raise Quarantine("DURATION_OUT_OF_RANGE")
    return seconds


def parse_status(text: str) -> int:
    """A completion status 0-3, also written as "1.0"."""
    match = STATUS_WRITTEN.fullmatch(text)
    if not match:
        raise Quarantine("BAD_COMPLETION_STATUS")
    return int(match.group(1))


def parse_part(text: str) -> int | None:
    """A transaction part number: digits, or empty."""
    if text == "":
        return None
    if not text.isascii() or not text.isdigit():
        raise Quarantine("BAD_PART_NUMBER")
    return int(text)


def check_revenue_share(text: str) -> None:
    """A revenue share percentage: empty, or 0-100 with at most two decimals."""
    if text and (not SHARE_WRITTEN.fullmatch(text) or Decimal(text) > 100):
        raise Quarantine("BAD_REVENUE_SHARE")


def parse_cost(text: str, allow_credits: bool = False, decimal_separator: str = ".") -> Decimal:
    """A provider cost: -?digits(.digits)? with at most six decimals, |cost| <= 10^9, negative
    only where the profile allows credits."""
    if decimal_separator != ".":
        text = text.replace(".", "#").replace(decimal_separator, ".")
    if not DECIMAL_WRITTEN.fullmatch(text) or len(text.partition(".")[2]) > MAX_COST_DECIMALS:
        raise Quarantine("BAD_COST")
    cost = Decimal(text)
    if abs(cost) > MAX_COST:
        raise Quarantine("COST_OUT_OF_RANGE")
    if cost < 0 and not allow_credits:
        raise Quarantine("NEGATIVE_COST")
    return cost


def parse_currency(text: str) -> str:
    """An ISO 4217 code with a minor unit, upper case."""
    if minor_unit(text) is None:
        raise Quarantine("BAD_CURRENCY")
    return text.strip().upper()


def in_month(start: datetime, year: int, month: int) -> None:
    """The call starts inside the billing month (local midnights)."""
    first = datetime(year, month, 1, tzinfo=BILLING_ZONE)
    following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=BILLING_ZONE)
    if not first <= start < following:
        raise Quarantine("OUTSIDE_MONTH")


def carrier_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a carrier CSV; the header is line 1."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            (line, {k: (v or "").strip() for k, v in row.items()})
            for line, row in enumerate(csv.DictReader(handle), start=2)
        ]


def carrier_cdr(file: str, line: int, row: dict[str, str], year: int, month: int) -> Cdr:
    """A carrier row, typed (UTC times); raises Quarantine."""
    try:
        start = datetime.fromisoformat(row["start_of_usage"]).astimezone(UTC)
    except ValueError as exc:
        raise Quarantine("BAD_TIMESTAMP") from exc
    in_month(start, year, month)
    seconds = parse_seconds(row["duration_of_usage"])
    status = parse_status(row["completion_status"])
    part = parse_part(row["transaction_part_number"])
    check_revenue_share(row["revenue_share_percentage"])
    return Cdr(
        "carrier",
        file,
        line,
        row["transaction_id"],
        row["session_id"],
        part,
        status,
        start,
        seconds,
        row["user_id"],
        destination=row["destination_party"],
    )


CONFERENCING_HEADER = "Conference ID"


def conferencing_rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    """(Excel row number, row) of a conferencing export, below its header row."""
    from openpyxl import load_workbook

    sheet = load_workbook(path, read_only=True).worksheets[0]
    header, rows = None, []
    for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
        if header is None:
            if values and CONFERENCING_HEADER in [_text(v) for v in values]:
                header = [_text(v) for v in values]
            continue
        if any(_text(v) for v in values):
            rows.append((number, dict(zip(header, values, strict=False))))
    return rows


def conferencing_cdr(
    source: str,
    file: str,
    number: int,
    row: dict[str, object],
    year: int,
    month: int,
    allow_credits: bool,
) -> Cdr:
    """A leg of a conferencing-layout export, typed (local times, always completed); raises
    Quarantine."""
    start_value = row["Start Time"]
    if not isinstance(start_value, datetime):
        raise Quarantine("BAD_TIMESTAMP")
    start = start_value.replace(tzinfo=BILLING_ZONE).astimezone(UTC)
    in_month(start, year, month)
    seconds = parse_seconds(_text(row["Duration (sec)"]))
    cost = parse_cost(_text(row["Cost"]), allow_credits)
    currency = parse_currency(_text(row["Currency"]))
    return Cdr(
        source,
        file,
        number,
        _text(row["Leg ID"]),
        _text(row["Conference ID"]),
        None,
        1,
        start,
        seconds,
        _text(row["PGIConnect ID"]),
        cost=cost,
        currency=currency,
    )


class FileCdrs(NamedTuple):
    """A file's valid CDRs and its quarantined rows {(file, row): reason}."""

    cdrs: list[Cdr]
    quarantined: dict[tuple[str, int], str]


def read_file(delivered: Delivered, year: int, month: int) -> FileCdrs:
    """A file's valid CDRs and its quarantined rows {(file, row): reason}; sources other than
    the carrier are exports in the conferencing layout."""
    if delivered.source == "carrier":
        rows, typed = carrier_rows(delivered.path), carrier_cdr
    else:
        rows = conferencing_rows(delivered.path)

        def typed(file: str, number: int, row: dict, year: int, month: int) -> Cdr:
            return conferencing_cdr(
                delivered.source, file, number, row, year, month, delivered.allow_credits
            )

    cdrs, quarantined = [], {}
    for number, row in rows:
        try:
            cdrs.append(typed(delivered.name, number, row, year, month))
        except Quarantine as bad:
            quarantined[(delivered.name, number)] = bad.reason
    return FileCdrs(cdrs, quarantined)


# --- duplicates and partial calls ----------------------------------------------------------


class Deduplicated(NamedTuple):
    """The CDRs kept, and the later deliveries of a (source, transaction id) dropped."""

    kept: list[Cdr]
    duplicates: list[Cdr]


def drop_duplicates(files: list[Delivered], cdrs_by_file: dict[str, list[Cdr]]) -> Deduplicated:
    """Keep each (source, transaction id) first in (first seen, source, file name, row)
    order."""
    ordered = sorted(files, key=lambda f: (f.first_seen, f.source, f.name))
    seen, kept, duplicates = set(), [], []
    for delivered in ordered:
        for cdr in sorted(cdrs_by_file[delivered.name], key=lambda c: c.row):
            key = (cdr.source, cdr.transaction_id)
            (duplicates if key in seen else kept).append(cdr)
            seen.add(key)
    return Deduplicated(kept, duplicates)


def head_order(part: Cdr) -> tuple:
    """Which part heads a partial call: earliest start, then part number as an integer, then id."""
    return (part.start, part.part if part.part is not None else -1, part.transaction_id)


def combine_partials(cdrs: list[Cdr]) -> list[Cdr]:
    """Parts (status 2, a session id) of one (source, session) become one call: the head's
    fields, the parts' summed seconds (and costs)."""
    sessions: dict[tuple[str, str], list[Cdr]] = defaultdict(list)
    calls = []
    for cdr in cdrs:
        if cdr.status == 2 and cdr.session_id:
            sessions[(cdr.source, cdr.session_id)].append(cdr)
        else:
            calls.append(cdr)
    for parts in sessions.values():
        head = min(parts, key=head_order)
        costs = [p.cost for p in parts]
        calls.append(
            Cdr(
                head.source,
                head.file,
                head.row,
                head.transaction_id,
                head.session_id,
                head.part,
                head.status,
                head.start,
                sum(p.seconds for p in parts),
                head.account,
                head.destination,
                sum(costs) if head.cost is not None else None,
                head.currency,
                parts=parts,
            )
        )
    return calls


# --- the tariff ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """One tariff row of a version."""

    version: int
    prefix: str
    price_per_minute: Decimal
    connection_fee: Decimal
    first_increment: int
    next_increment: int
    minimum_charge: Decimal
    currency: str
    valid_from: datetime | None
    valid_to: datetime | None
    weekdays: str
    start_hour: int
    end_hour: int

    def applies_at(self, start: datetime) -> bool:
        """Valid at that moment, on that weekday and hour (billing timezone)."""
        local = start.astimezone(BILLING_ZONE)
        return (
            (self.valid_from is None or self.valid_from <= start)
            and (self.valid_to is None or start < self.valid_to)
            and str(local.isoweekday()) in self.weekdays
            and self.start_hour <= local.hour < self.end_hour
        )


def _local_moment(text: str) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=BILLING_ZONE) if moment.tzinfo is None else moment


def read_tariff(path: Path, version: int) -> list[Rate]:
    """The rates of one tariff version's CSV file."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    return [
        Rate(
            version,
            row["prefix"].strip(),
            Decimal(row["price_per_minute"]),
            Decimal(row["connection_fee"] or "0"),
            int(row["first_increment"]),
            int(row["next_increment"]),
            Decimal(row["minimum_charge"] or "0"),
            row["currency"].strip().upper(),
            _local_moment(row.get("valid_from") or ""),
            _local_moment(row.get("valid_to") or ""),
            row.get("weekdays") or "1234567",
            int(row.get("start_hour") or 0),
            int(row.get("end_hour") or 24),
        )
        for row in rows
    ]


def e164_digits(number: str) -> str:
    """A dialled number as E.164 digits: separators removed, "+"/"00" dropped, national "0" ->
    "46"."""
    digits = SEPARATORS.sub("", number)
    if digits.startswith("+"):
        return digits[1:]
    if digits.startswith(INTERNATIONAL_PREFIX):
        return digits[len(INTERNATIONAL_PREFIX) :]
    if digits.startswith(NATIONAL_PREFIX):
        return COUNTRY_CODE + digits[len(NATIONAL_PREFIX) :]
    return digits


def rate_for(digits: str, start: datetime, rates: list[Rate]) -> Rate | None:
    """The longest prefix with a rate valid at the start; of its rates, the newest version's."""
    valid = [r for r in rates if digits.startswith(r.prefix) and r.applies_at(start)]
    if not valid:
        return None
    longest = max(len(r.prefix) for r in valid)
    return max((r for r in valid if len(r.prefix) == longest), key=lambda r: r.version)


def billed_seconds(seconds: int, rate: Rate) -> int:
    """0 for a 0 s call, else the first increment plus the rest in whole next increments."""
    if seconds == 0:
        return 0
    increments = (
        Decimal(max(seconds - rate.first_increment, 0)) / rate.next_increment
    ).to_integral_value(ROUND_CEILING)
    return rate.first_increment + int(increments) * rate.next_increment


def tariff_cost(billed: int, rate: Rate) -> Decimal:
    """Fee plus price per minute, at least the minimum charge, rounded half-up once."""
    cost = max(rate.connection_fee + rate.price_per_minute * billed / 60, rate.minimum_charge)
    return cost.quantize(Decimal(1).scaleb(-minor_unit(rate.currency)), rounding=ROUND_HALF_UP)


# --- who pays ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """An entitlement snapshot: the local midnight of its file's date, and its accounts."""

    taken_at: datetime
    name: str
    accounts: dict[str, dict[str, str]]


def snapshot_date(path: Path) -> date:
    return date.fromisoformat(re.search(r"(\d{4}-\d{2}-\d{2})", path.name).group(1))


def read_snapshot(path: Path) -> Snapshot:
    """An entitlements_YYYY-MM-DD.csv file."""
    day = snapshot_date(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        accounts = {
            row["account_id"].strip(): {k: (v or "").strip() for k, v in row.items()}
            for row in csv.DictReader(handle)
        }
    return Snapshot(
        datetime(day.year, day.month, day.day, tzinfo=BILLING_ZONE), path.name, accounts
    )


class Payer(NamedTuple):
    """Who a call is billed to."""

    customer_id: str
    sequence_number: str


def billable_as(account: dict[str, str] | None) -> Payer | None:
    """Who pays if the account may be billed in that snapshot."""
    if (
        account is None
        or account["entitled"].lower() not in TRUE_WORDS
        or not account["customer_id"]
    ):
        return None
    sequence = account["sequence_number"] or account["default_sequence_number"]
    return Payer(account["customer_id"], sequence) if sequence else None


def who_pays(account: str, start: datetime, snapshots: list[Snapshot]) -> Payer | None:
    """The first snapshot from the one valid at the start (else the pinned, the last) forward
    to the pinned one in which the account is billable; None: suspense."""
    valid = [i for i, s in enumerate(snapshots) if s.taken_at <= start]
    first = valid[-1] if valid else len(snapshots) - 1
    for snapshot in snapshots[first:]:
        payer = billable_as(snapshot.accounts.get(account))
        if payer:
            return payer
    return None


# --- the month -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A billing line's sums."""

    total: Decimal
    calls: int
    seconds: int


@dataclass(frozen=True)
class BilledCall:
    """One billed call: who pays, the amount, the billed seconds."""

    customer_id: str
    sequence_number: str
    currency: str
    cost: Decimal
    seconds: int


class Priced(NamedTuple):
    """What a call costs: its currency, the amount and the billed seconds."""

    currency: str
    cost: Decimal
    seconds: int


@dataclass
class MonthBill:
    """What the oracle expects of a month."""

    lines: dict[tuple[str, str, str], Line]
    # (source, transaction id of the call or its head part)
    calls: dict[tuple[str, str], BilledCall]
    quarantined: dict[tuple[str, int], str]  # (file, row) -> reason code
    duplicates: set[tuple[str, int]]  # (file, row)
    failed: set[tuple[str, str]]  # status 0
    unbillable: set[tuple[str, str]]
    suspense: set[tuple[str, str]]
    # priced calls of prepaid accounts: debited to their balances, not billed
    prepaid: dict[tuple[str, str], Priced] = field(default_factory=dict)


def price(call: Cdr, markups: dict[str, Decimal], rates: list[Rate]) -> Priced | None:
    """What a call costs; None if no tariff prefix has a rate for it."""
    if call.cost is not None:
        return Priced(
            call.currency,
            billed_priced_cost(call.cost, call.currency, markups.get(call.source, Decimal(0))),
            call.seconds,
        )
    rate = rate_for(e164_digits(call.destination), call.start, rates)
    if rate is None:
        return None
    billed = billed_seconds(call.seconds, rate)
    return Priced(rate.currency, tariff_cost(billed, rate), billed)


def bill_month(
    year: int,
    month: int,
    files: list[Delivered],
    tariff_versions: list[Path],
    snapshot_files: list[Path],
    markups: dict[str, Decimal],
    prepaid: frozenset[str] = frozenset(),
) -> MonthBill:
    """The month's billing: files as delivered (with the ledger's first-seen times), tariff
    versions oldest first, the entitlement snapshots up to and including the pinned one; the
    priced calls of the `prepaid` accounts (plain account ids) are set aside, not billed."""
    cdrs_by_file, quarantined = {}, {}
    for delivered in files:
        read = read_file(delivered, year, month)
        cdrs_by_file[delivered.name] = read.cdrs
        quarantined.update(read.quarantined)
    kept, duplicates = drop_duplicates(files, cdrs_by_file)
    rates = [
        rate for version, path in enumerate(tariff_versions) for rate in read_tariff(path, version)
    ]
    snapshots = sorted((read_snapshot(p) for p in snapshot_files), key=lambda s: s.taken_at)
    bill = MonthBill(
        {}, {}, quarantined, {(d.file, d.row) for d in duplicates}, set(), set(), set()
    )
    sums: dict[tuple[str, str, str], list] = defaultdict(lambda: [Decimal(0), 0, 0])
    for call in combine_partials(kept):
        key = (call.source, call.transaction_id)
        if call.status == 0:
            bill.failed.add(key)
            continue
        priced = price(call, markups, rates)
        if priced is None:
            bill.unbillable.add(key)
            continue
        if call.account in prepaid:
            bill.prepaid[key] = priced
            continue
        payer = who_pays(call.account, call.start, snapshots)
        if payer is None:
            bill.suspense.add(key)
            continue
        bill.calls[key] = BilledCall(
            payer.customer_id, payer.sequence_number, priced.currency, priced.cost, priced.seconds
        )
        line = sums[(payer.customer_id, payer.sequence_number, priced.currency)]
        line[0] += priced.cost
        line[1] += 1
        line[2] += priced.seconds
    bill.lines = {key: Line(*values) for key, values in sums.items()}
    return bill
