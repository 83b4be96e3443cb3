"""Generate a realistic billing month: CDR files, tariff and entitlement snapshot.

Layout written under an SFTP root (what the default pipeline.yaml expects):
  cdr/conferencing/conferencing_cdr_YYYY-MM.xlsx  conferencing legs, priced by the provider
  cdr/carrier/carrier_cdr_YYYYMM.csv              carrier CDRs, unpriced, canonical fields
  cdr/carrier/carrier_cdr_<previous month>.csv    last month's file (must be ignored)
  cdr/pbx/pbx_cdr_YYYY-MM.csv                     an internal PBX export (Latin-1, ";", h:mm:ss)
  reference/tariff_YYYY-MM-01.csv                 prefix tariff (EUR)
  reference/entitlements_<date>.csv               account -> customer, cost center
The month contains, on purpose: failed calls, calls to an unknown number range, accounts
unknown to or not entitled in the snapshot, users without a cost center, a few invalid
rows and re-delivered duplicate CDRs.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from cdr_billing.canonical import CARRIER_FIELDS
from cdr_billing.months import BillingMonth
from cdr_billing.tariff import REQUIRED_COLUMNS as TARIFF_COLUMNS

CUSTOMERS = {"C1001": "100", "C1002": "200", "C1003": "300", "C1004": "400"}
TARIFF = [
    # prefix, destination, price/min, fee, first, next, minimum
    ("46", "Sweden fixed", "0.0200", "0.0000", "60", "60", "0.00"),
    ("467", "Sweden mobile", "0.0900", "0.0500", "60", "60", "0.10"),
    ("468", "Sweden Stockholm", "0.0150", "0.0000", "30", "6", "0.00"),
    ("44", "United Kingdom", "0.0400", "0.0000", "1", "1", "0.00"),
    ("447", "United Kingdom mobile", "0.1200", "0.0300", "30", "6", "0.05"),
    ("49", "Germany", "0.0350", "0.0000", "60", "1", "0.00"),
    ("1", "USA and Canada", "0.0250", "0.0000", "1", "1", "0.00"),
    ("358", "Finland", "0.0500", "0.0100", "60", "60", "0.00"),
]
DESTINATIONS = [
    "+4687",
    "+46701",
    "+46735",
    "+4631",
    "+447700",
    "+4420",
    "+4930",
    "+1212",
    "+35840",
]
UNKNOWN_RANGE = "+88216"
CONFERENCE_NUMBERS = ["+46850512345", "+442071234567", "+4969123456"]


@dataclass(frozen=True)
class SampleMonth:
    """What was generated, for callers that want to point at it."""

    root: Path
    month: BillingMonth


CARRIER_PROVIDERS = ("NordCarrier", "BalticTransit")
REVENUE_SHARES = ("", "12.5", "30")  # percent; "" for calls that carry no revenue share


def _phone(rng: random.Random, head: str, length: int = 11) -> str:
    return head + "".join(rng.choice("0123456789") for _ in range(length - len(head.lstrip("+"))))


def _national_variants(rng: random.Random, number: str) -> str:
    """Write a Swedish number the ways carriers do: +46.., 0046.. or 0.."""
    if not number.startswith("+46"):
        return number
    return rng.choice([number, "00" + number[1:], "0" + number[3:]])


def _account_id(index: int) -> str:
    if index < 60:
        return f"{index:07d}"  # conferencing ids keep their leading zeros
    return f"SUB-{index:05d}" if index < 140 else f"EXT-{index + 860}"


class _Accounts(NamedTuple):
    """The entitlement snapshot's rows, and the account ids each source's calls use (each
    with one id the snapshot does not know)."""

    snapshot: list[dict]
    conferencing: list[str]
    carrier: list[str]
    pbx: list[str]


def _accounts(rng: random.Random) -> _Accounts:
    """Entitlement rows plus the conferencing, carrier and PBX account ids in use."""
    rows, conferencing, carrier, pbx = [], [], [], []
    for index in range(180):
        customer = rng.choice(list(CUSTOMERS))
        account = _account_id(index)
        (conferencing if index < 60 else carrier if index < 140 else pbx).append(account)
        rows.append(
            {
                "account_id": account,
                "user_principal_name": f"user{index}@{customer.lower()}.example.com",
                "customer_id": customer,
                "sequence_number": ""
                if index % 5 == 0
                else f"{CUSTOMERS[customer]}{index % 3 + 1}",
                "default_sequence_number": CUSTOMERS[customer],
                "entitled": "false" if index in (7, 93) else "true",
                "last_login": f"2026-{rng.randint(1, 9):02d}-{rng.randint(1, 28):02d}",
            }
        )
    return _Accounts(rows, conferencing + ["9999901"], carrier + ["SUB-99999"], pbx + ["EXT-9999"])


def _start_times(rng: random.Random, month: BillingMonth, count: int) -> list[datetime]:
    start, end = month.bounds("Europe/Stockholm")
    span = int((end - start).total_seconds()) - 7200
    return sorted(start + timedelta(seconds=3600 + rng.randrange(span)) for _ in range(count))


def write_carrier_csv(
    path: Path,
    rng: random.Random,
    month: BillingMonth,
    users: list[str],
    calls: int,
    with_flaws: bool = True,
) -> None:
    """Carrier CDRs in the canonical fields, UTC timestamps; with_flaws adds 20 calls in two
    partial parts, three invalid rows and three re-delivered duplicates (needs 440 calls)."""
    rows = []
    for n, started in enumerate(_start_times(rng, month, calls)):
        utc = started.astimezone(ZoneInfo("UTC"))
        duration = rng.choice([0, 1, 12, 59, 60, 61, 95, 180, 600, 1800, rng.randint(1, 3600)])
        status = rng.choices(["1", "0", "3"], weights=[94, 4, 2])[0]
        head = UNKNOWN_RANGE if rng.random() < 0.01 else rng.choice(DESTINATIONS)
        rows.append(
            {
                "transaction_id": f"T{month.year}{month.month:02d}-{n:07d}",
                "session_id": f"S{n // 2:07d}",
                "service_name": "voice",
                "user_id": rng.choice(users),
                "start_of_usage": utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "connect_time": (utc + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end_of_usage": (utc + timedelta(seconds=duration)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "duration_of_usage": str(duration),
                "amount_of_usage": str(duration),
                "originating_party": _phone(rng, "+46701"),
                "destination_party": _national_variants(rng, _phone(rng, head)),
                "transaction_part_number": "1",
                "completion_status": status,
                "additional_info": "",
                "service_provider": CARRIER_PROVIDERS[n % 2],
                "revenue_share_percentage": REVENUE_SHARES[n % 3],
                "party_to_charge": "originating",
                "charging_info": "postpaid",
            }
        )
    if with_flaws:
        for k, first in enumerate(range(400, 440, 2)):  # 20 calls delivered in two partial parts
            rows[first + 1].update(
                user_id=rows[first]["user_id"], destination_party=rows[first]["destination_party"]
            )
            for part, row in enumerate((rows[first], rows[first + 1]), start=1):
                row.update(
                    session_id=f"SP{k:04d}",
                    completion_status="2",
                    transaction_part_number=str(part),
                )
        rows[10]["duration_of_usage"] = "-5"
        rows[20]["start_of_usage"] = "2026-13-40T99:00:00Z"
        rows[30]["start_of_usage"] = f"{month.year - 1}-06-15T10:00:00Z"
        rows += [dict(rows[i]) for i in (100, 200, 300)]  # the carrier re-delivered three CDRs
    _write_csv(path, list(CARRIER_FIELDS), rows)


CONFERENCING_HEADER = [
    "Conference ID",
    "Leg ID",
    "PGIConnect ID",
    "Dial-in Number",
    "Start Time",
    "End Time",
    "Duration (sec)",
    "Cost",
    "Currency",
]
PBX_HEADER = [
    "Samtals-ID",
    "Anknytning",
    "Uppringt nummer",
    "Starttid",
    "Längd",
    "Status",
    "Kommentar",
]


def write_pbx_csv(
    path: Path, rng: random.Random, month: BillingMonth, extensions: list[str], calls: int
) -> None:
    """An internal PBX export: Latin-1, semicolons, local times, "h:mm:ss", text statuses."""
    with path.open("w", newline="", encoding="latin-1") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(PBX_HEADER)
        for n, started in enumerate(_start_times(rng, month, calls)):
            seconds = rng.choice([0, 5, 59, 61, 125, 3599, rng.randint(1, 7200)])
            duration = (
                f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
                if n != 7
                else "1:75:00"
            )
            status = rng.choices(["ANSWERED", "NO ANSWER", "BUSY"], weights=[90, 7, 3])[0]
            number = _national_variants(rng, _phone(rng, rng.choice(DESTINATIONS)))
            comment = rng.choice(["Växel", "Försäljning", "Kundtjänst", ""])
            writer.writerow(
                [
                    f"PBX-{n:06d}",
                    rng.choice(extensions),
                    number,
                    started.strftime("%d.%m.%Y %H:%M:%S"),
                    duration,
                    status,
                    comment,
                ]
            )


def write_conferencing_xlsx(
    path: Path, rng: random.Random, month: BillingMonth, accounts: list[str], legs: int
) -> None:
    """A conferencing provider's export: title rows, local times, cost per leg."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "Usage"
    sheet.append([f"Conferencing usage report {month}"])
    sheet.append(["Generated for billing; all times Europe/Stockholm"])
    sheet.append([])
    sheet.append(CONFERENCING_HEADER)
    for n, started in enumerate(_start_times(rng, month, legs)):
        duration = rng.randint(30, 5400)
        local = started.replace(tzinfo=None)
        cost = (Decimal(duration) / 60 * Decimal("0.0450")).quantize(Decimal("0.0001"))
        sheet.append(
            [
                f"CONF-{n // 4:06d}",
                f"L{n:08d}",
                rng.choice(accounts),
                rng.choice(CONFERENCE_NUMBERS),
                local,
                local + timedelta(seconds=duration),
                duration,
                float(cost),
                "EUR",
            ]
        )
    _save_reproducibly(book, path, datetime(month.year, month.month, 1))


def _save_reproducibly(book, path: Path, moment: datetime) -> None:
    """Save a workbook whose bytes depend on its content only (openpyxl stamps the time of the
    save into its properties and zip entries): a month generated again is the same file, as a
    provider's redelivery of unchanged data would be, and is not held as changed."""
    import io
    import zipfile

    book.properties.created = moment
    saved = io.BytesIO()
    book.save(saved)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
        for entry in source.infolist():
            data = source.read(entry.filename)
            if entry.filename == "docProps/core.xml":  # openpyxl sets modified to now
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + stamp, data)
            fixed = zipfile.ZipInfo(entry.filename, date_time=moment.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(fixed, data)


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def generate_month(
    root: Path,
    month: BillingMonth,
    seed: int = 7,
    carrier_calls: int = 3000,
    conference_legs: int = 1500,
    pbx_calls: int = 800,
) -> SampleMonth:
    """Write a month of sample inputs under root (an SFTP server's directory)."""
    rng = random.Random(seed)
    for folder in ("cdr/conferencing", "cdr/carrier", "cdr/pbx", "reference"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    accounts = _accounts(rng)
    previous = BillingMonth(month.year - (month.month == 1), (month.month - 2) % 12 + 1)
    write_carrier_csv(
        root / f"cdr/carrier/carrier_cdr_{month.year}{month.month:02d}.csv",
        rng,
        month,
        accounts.carrier,
        carrier_calls,
    )
    write_carrier_csv(
        root / f"cdr/carrier/carrier_cdr_{previous.year}{previous.month:02d}.csv",
        rng,
        previous,
        accounts.carrier,
        50,
        with_flaws=False,
    )
    write_conferencing_xlsx(
        root / f"cdr/conferencing/conferencing_cdr_{month}.xlsx",
        rng,
        month,
        accounts.conferencing,
        conference_legs,
    )
    write_pbx_csv(root / f"cdr/pbx/pbx_cdr_{month}.csv", rng, month, accounts.pbx, pbx_calls)
    _write_csv(
        root / f"reference/tariff_{month}-01.csv",
        list(TARIFF_COLUMNS),
        [dict(zip(TARIFF_COLUMNS, (*row, "EUR"), strict=True)) for row in TARIFF],
    )
    _write_csv(
        root / f"reference/entitlements_{month.next()}-02.csv",
        list(accounts.snapshot[0]),
        accounts.snapshot,
    )
    return SampleMonth(root, month)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to write into (an SFTP root)")
    parser.add_argument("--month", default="2026-10", help="billing month YYYY-MM")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    generate_month(args.root, BillingMonth.parse(args.month), args.seed)
    print(f"wrote a sample month {args.month} under {args.root}")


if __name__ == "__main__":
    main()
