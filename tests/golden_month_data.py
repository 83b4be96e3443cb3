"""The golden month, March 2026: a small, deterministic month holding every billing rule's case.

Written under a directory laid out as an SFTP root (what tests/e2e/test_golden_month.py's
pipeline.yaml expects):
  cdr/conferencing/conferencing_cdr_2026-03.xlsx  priced legs (local times),
                                                  CLP EUR SEK JOD KWD BHD
  cdr/carrier/carrier_cdr_202603_a.csv            tariff-priced carrier calls (UTC)
  cdr/carrier/carrier_cdr_202603_b.csv            a second carrier file: a session's 2nd part,
                                                  re-deliveries
  cdr/credits/credits_cdr_2026-03.xlsx            priced legs of a source whose profile allows
                                                  credits
  reference/tariff_2026-03-01.csv                 the month's tariff (the newest version)
  reference/entitlements_2026-03-04.csv, _2026-03-18.csv (mid-month),
            _2026-04-02.csv (pinned first)
and beside it (not on the servers until the test puts them there):
  older_tariff.csv                                a previous tariff version, loaded before the month
  entitlements_2026-04-15.csv                     the correction snapshot
March 2026 in Stockholm: CET (+1) until Sunday the 29th 01:00 UTC, then CEST (+2).
"""

from __future__ import annotations

import csv
import random
from datetime import datetime, timedelta
from pathlib import Path

MONTH = (2026, 3)
CARRIER_FIELDS = (
    "transaction_id",
    "session_id",
    "service_name",
    "user_id",
    "start_of_usage",
    "connect_time",
    "end_of_usage",
    "duration_of_usage",
    "amount_of_usage",
    "originating_party",
    "destination_party",
    "transaction_part_number",
    "completion_status",
    "additional_info",
    "service_provider",
    "revenue_share_percentage",
    "party_to_charge",
    "charging_info",
)
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
TARIFF_FIELDS = (
    "prefix",
    "destination",
    "price_per_minute",
    "connection_fee",
    "first_increment",
    "next_increment",
    "minimum_charge",
    "currency",
    "valid_from",
    "valid_to",
    "band",
    "weekdays",
    "start_hour",
    "end_hour",
)
ENTITLEMENT_FIELDS = (
    "account_id",
    "user_principal_name",
    "customer_id",
    "sequence_number",
    "default_sequence_number",
    "entitled",
    "last_login",
)
CARRIER_FILES = ("carrier_cdr_202603_a.csv", "carrier_cdr_202603_b.csv")
CONFERENCING_FILE = "conferencing_cdr_2026-03.xlsx"
# The conferencing layout, from a source whose profile allows credits.
CREDITS_FILE = "credits_cdr_2026-03.xlsx"
SNAPSHOTS = (
    "entitlements_2026-03-04.csv",
    "entitlements_2026-03-18.csv",
    "entitlements_2026-04-02.csv",
)
CORRECTION = "entitlements_2026-04-15.csv"
TARIFF_FILE, OLDER_TARIFF = "tariff_2026-03-01.csv", "older_tariff.csv"

# prefix, destination, price/min, fee, first, next, minimum, currency, valid_from, valid_to, band,
# weekdays, hours
TARIFF = [
    (
        "46",
        "Sweden fixed",
        "0.20",
        "0",
        "60",
        "60",
        "0",
        "SEK",
        "",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    (
        "467",
        "Sweden mobile",
        "0.90",
        "0.50",
        "60",
        "60",
        "1.00",
        "SEK",
        "",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    (
        "468",
        "Stockholm peak",
        "0.30",
        "0",
        "30",
        "6",
        "0",
        "SEK",
        "",
        "",
        "peak",
        "12345",
        "8",
        "18",
    ),
    (
        "468",
        "Stockholm night",
        "0.10",
        "0",
        "30",
        "6",
        "0",
        "SEK",
        "",
        "",
        "night",
        "12345",
        "0",
        "8",
    ),
    (
        "468",
        "Stockholm evening",
        "0.10",
        "0",
        "30",
        "6",
        "0",
        "SEK",
        "",
        "",
        "evening",
        "12345",
        "18",
        "24",
    ),
    (
        "468",
        "Stockholm weekend",
        "0.05",
        "0",
        "30",
        "6",
        "0",
        "SEK",
        "",
        "",
        "weekend",
        "67",
        "0",
        "24",
    ),
    (
        "44",
        "United Kingdom",
        "0.04",
        "0",
        "1",
        "1",
        "0",
        "EUR",
        "",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    (
        "447",
        "UK mobile",
        "0.12",
        "0.03",
        "30",
        "6",
        "0.05",
        "EUR",
        "",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    (
        "4420",
        "London",
        "0.02",
        "0",
        "1",
        "1",
        "0",
        "EUR",
        "",
        "2026-03-15",
        "all",
        "1234567",
        "0",
        "24",
    ),
    (
        "4420",
        "London",
        "0.025",
        "0",
        "1",
        "1",
        "0",
        "EUR",
        "2026-03-15",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    (
        "49",
        "Germany",
        "0.035",
        "0",
        "60",
        "1",
        "0",
        "EUR",
        "2026-03-10",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    (
        "4930",
        "Berlin",
        "0.03",
        "0",
        "1",
        "1",
        "0",
        "EUR",
        "2026-03-20",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    ("962", "Jordan", "0.155", "0", "1", "1", "0", "JOD", "", "", "all", "1234567", "0", "24"),
    ("965", "Kuwait", "0.0125", "0", "1", "1", "0", "kwd", "", "", "all", "1234567", "0", "24"),
    ("56", "Chile", "155", "0", "1", "1", "0", "CLP", "", "", "all", "1234567", "0", "24"),
    (
        "1",
        "USA and Canada",
        "0.025",
        "0",
        "1",
        "1",
        "0",
        "EUR",
        "",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
]
# Loaded before the month: overridden where the month's tariff has a valid rate of the prefix.
OLDER = [
    (
        "46",
        "Sweden fixed (old)",
        "0.99",
        "0",
        "60",
        "60",
        "0",
        "SEK",
        "",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    (
        "49",
        "Germany (old)",
        "0.05",
        "0",
        "60",
        "60",
        "0",
        "EUR",
        "",
        "",
        "all",
        "1234567",
        "0",
        "24",
    ),
    ("358", "Finland", "0.05", "0.01", "60", "60", "0", "EUR", "", "", "all", "1234567", "0", "24"),
    (
        "88216",
        "Satellite",
        "1.50",
        "0",
        "60",
        "60",
        "0",
        "EUR",
        "",
        "2026-03-10",
        "all",
        "1234567",
        "0",
        "24",
    ),
]

CUSTOMERS = {"C100": "100", "C200": "200", "C300": "300"}
# account -> (customer, sequence number, entitled) in each snapshot E1 (03-04), E2 (03-18),
# E3 (04-02), E4 (04-15); None: not listed; a customer "" or a sequence number "" with
# default "": not billable.
STABLE = {
    "0000101": ("C100", "1001"),
    "0000102": ("C100", ""),
    "0000103": ("C200", "2001"),
    "0000104": ("C300", "3001"),
    "SUB-001": ("C100", "1002"),
    "SUB-002": ("C200", "2002"),
    "SUB-003": ("C300", ""),
    "SUB-004": ("C200", "2001"),
}
CHANGING = {
    "SUB-MOVE": [
        ("C100", "1001", True),
        ("C100", "1003", True),
        ("C100", "1003", True),
        ("C100", "1003", True),
    ],
    "0000105": [
        ("C200", "2001", True),
        ("C300", "3001", True),
        ("C300", "3001", True),
        ("C300", "3001", True),
    ],
    "SUB-NEW": [None, ("C300", "3002", True), ("C300", "3002", True), ("C300", "3002", True)],
    "SUB-LATE": [
        ("C200", "2003", False),
        ("C200", "2003", False),
        ("C200", "2003", True),
        ("C200", "2003", True),
    ],
    "SUB-LEFT": [("C100", "1001", True), ("C100", "1001", False), None, None],
    # in suspense until the correction E4 fixes them:
    "SUB-UNKNOWN": [None, None, None, ("C200", "2004", True)],
    "0000106": [
        ("C100", "1004", False),
        ("C100", "1004", False),
        ("C100", "1004", False),
        ("C100", "1004", True),
    ],
    "SUB-NOSEQ": [
        ("C300!", "", True),
        ("C300!", "", True),
        ("C300!", "", True),
        ("C300", "3005", True),
    ],
    "SUB-NOCUST": [
        ("", "1001", True),
        ("", "1001", True),
        ("", "1001", True),
        ("C100", "1001", True),
    ],
}
FIXED_BY_CORRECTION = ("SUB-UNKNOWN", "0000106", "SUB-NOSEQ", "SUB-NOCUST")
NEVER_KNOWN = ("SUB-GHOST", "0009999")


def _entitlement(account: str, customer: str, sequence: str, entitled: bool) -> dict[str, str]:
    no_default = customer.endswith("!")  # no sequence number and no customer default either
    customer = customer.rstrip("!")
    return {
        "account_id": account,
        "user_principal_name": f"{account.lower()}@example.com",
        "customer_id": customer,
        "sequence_number": sequence,
        "default_sequence_number": "" if no_default else CUSTOMERS.get(customer, ""),
        "entitled": "true" if entitled else "false",
        "last_login": "2026-02-20",
    }


def snapshot_rows(index: int) -> list[dict[str, str]]:
    """The accounts of snapshot E1..E4 (index 0..3)."""
    rows = [_entitlement(a, c, s, True) for a, (c, s) in STABLE.items()]
    rows += [
        _entitlement(a, *states[index])
        for a, states in CHANGING.items()
        if states[index] is not None
    ]
    return rows


# --- carrier -------------------------------------------------------------------------------


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def carrier_row(
    tx: str,
    start: str,
    seconds: str,
    destination: str,
    user: str = "SUB-001",
    status: str = "1",
    session: str = "",
    part: str = "1",
    share: str = "",
) -> dict[str, str]:
    """One carrier CDR; start in UTC ("...Z"); end = start + seconds when seconds is a sane
    number."""
    begun = _utc(start)
    whole = seconds.split(".")[0].lstrip("-")
    span = int(whole) if whole.isdigit() and len(whole) < 7 else 0
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "transaction_id": tx,
        "session_id": session,
        "service_name": "voice",
        "user_id": user,
        "start_of_usage": begun.strftime(stamp),
        "connect_time": begun.strftime(stamp),
        "end_of_usage": (begun + timedelta(seconds=span)).strftime(stamp),
        "duration_of_usage": seconds,
        "amount_of_usage": str(span),
        "originating_party": "+46701000001",
        "destination_party": destination,
        "transaction_part_number": part,
        "completion_status": status,
        "additional_info": "",
        "service_provider": "NordCarrier",
        "revenue_share_percentage": share,
        "party_to_charge": "originating",
        "charging_info": "postpaid",
    }


# Numbers as carriers write them: national "0", international "00" and "+"; separators only in
# separator_rows.
STHLM, SWEDEN, MOBILE, LONDON, UK = (
    "0855512345",
    "+46317654321",
    "0701234567",
    "+442079460000",
    "00441614960000",
)
UK_MOBILE, BERLIN, JORDAN, KUWAIT = "+447700900123", "+49301234567", "+96265001234", "+96522001234"
CHILE, USA, FINLAND, SATELLITE = "+56221234567", "+12125550100", "+358401234567", "+882161234567"


def partial_rows_a() -> list[dict[str, str]]:
    """Partial calls in file a: parts 10 and 9 in one second (10 first), a 3-part session in
    no order, a tie broken by id, a session continued in file b, one whose part file b
    re-delivers."""
    return [
        carrier_row(
            "P10",
            "2026-03-12T10:00:00Z",
            "100",
            LONDON,
            user="SUB-002",
            status="2",
            session="S-910",
            part="10",
        ),
        carrier_row(
            "P09",
            "2026-03-12T10:00:00Z",
            "50",
            STHLM,
            user="SUB-001",
            status="2",
            session="S-910",
            part="9",
        ),
        carrier_row(
            "T3-2",
            "2026-03-16T09:05:00Z",
            "60",
            MOBILE,
            user="SUB-004",
            status="2",
            session="S-3",
            part="2",
        ),
        carrier_row(
            "T3-3",
            "2026-03-16T09:10:00Z",
            "60",
            UK,
            user="SUB-004",
            status="2",
            session="S-3",
            part="3",
        ),
        carrier_row(
            "T3-1",
            "2026-03-16T09:00:00Z",
            "61",
            MOBILE,
            user="SUB-004",
            status="2",
            session="S-3",
            part="1",
        ),
        carrier_row(
            "TIE-b",
            "2026-03-22T12:00:00Z",
            "40",
            BERLIN,
            user="SUB-002",
            status="2",
            session="S-TIE",
            part="1",
        ),
        carrier_row(
            "TIE-a",
            "2026-03-22T12:00:00Z",
            "45",
            SWEDEN,
            user="SUB-003",
            status="2",
            session="S-TIE",
            part="1",
        ),
        carrier_row(
            "X1",
            "2026-03-16T08:00:00Z",
            "200",
            SWEDEN,
            user="SUB-003",
            status="2",
            session="S-X",
            part="1",
        ),
        carrier_row(
            "D1",
            "2026-03-18T07:00:00Z",
            "40",
            UK_MOBILE,
            user="SUB-002",
            status="2",
            session="S-D",
            part="1",
        ),
        carrier_row(
            "D2",
            "2026-03-18T07:00:40Z",
            "25",
            UK_MOBILE,
            user="SUB-002",
            status="2",
            session="S-D",
            part="2",
        ),
    ]


def grammar_rows() -> list[dict[str, str]]:
    """Values at the edges of the CDR grammar (rule 6): the ids name what each tests."""
    day = "2026-03-11T09:{:02d}:00Z"
    cases = [
        ("DU-60.0", "60.0", "1", "1", ""),
        ("DU-1e3", "1e3", "1", "1", ""),
        ("DU-inf", "inf", "1", "1", ""),
        ("DU-1e400", "1e400", "1", "1", ""),
        ("DU-12.5", "12.5", "1", "1", ""),
        ("DU-nan", "nan", "1", "1", ""),
        ("DU-neg", "-5", "1", "1", ""),
        ("DU-86401", "86401", "1", "1", ""),
        ("DU-86400", "86400", "1", "1", ""),
        ("DU-huge", "12345678901234567890", "1", "1", ""),
        ("DU-0", "0", "1", "1", ""),
        ("ST-1.0", "30", "1.0", "1", ""),
        ("ST-3", "30", "3", "1", ""),
        ("ST-3.00", "30", "3.00", "1", ""),
        ("ST-0", "30", "0", "1", ""),
        ("ST-0.0", "30", "0.0", "1", ""),
        ("ST-1e0", "30", "1e0", "1", ""),
        ("ST-4", "30", "4", "1", ""),
        ("RS-12.5", "30", "1", "1", "12.5"),
        ("RS-100", "30", "1", "1", "100"),
        ("RS-0.00", "30", "1", "1", "0.00"),
        ("RS-100.5", "30", "1", "1", "100.5"),
        ("RS-12.345", "30", "1", "1", "12.345"),
        ("RS-1e1", "30", "1", "1", "1e1"),
        ("RS-neg", "30", "1", "1", "-1"),
        ("PN-abc", "30", "1", "abc", ""),
        ("PN-1.0", "30", "1", "1.0", ""),
        ("PN-empty", "30", "1", "", ""),
    ]
    return [
        carrier_row(tx, day.format(n), seconds, MOBILE, status=status, part=part, share=share)
        for n, (tx, seconds, status, part, share) in enumerate(cases)
    ]


def tariff_rows() -> list[dict[str, str]]:
    """Prefixes, validity, bands (local weekday and hour, across DST), versions, currencies."""
    return [
        # older 49 (new 49 from the 10th)
        carrier_row("TF-berlin-05", "2026-03-05T10:00:00Z", "61", BERLIN),
        carrier_row("TF-berlin-12", "2026-03-12T10:00:00Z", "61", BERLIN),  # new 49
        carrier_row("TF-berlin-25", "2026-03-25T10:00:00Z", "61", BERLIN),  # 4930 from the 20th
        # the new version's 46, not the older
        carrier_row("TF-sweden", "2026-03-06T10:00:00Z", "61", SWEDEN),
        # only in the older version
        carrier_row("TF-finland", "2026-03-06T11:00:00Z", "61", FINLAND),
        # older satellite rate, until the 10th
        carrier_row("TF-sat-05", "2026-03-05T12:00:00Z", "61", SATELLITE),
        # no rate any more: unbillable
        carrier_row("TF-sat-15", "2026-03-15T12:00:00Z", "61", SATELLITE),
        carrier_row("TF-none", "2026-03-15T13:00:00Z", "61", "+999123456"),  # no prefix: unbillable
        carrier_row("TF-fri-0830", "2026-03-27T07:30:00Z", "95", STHLM),  # 08:30 CET: peak
        carrier_row("TF-mon-0830", "2026-03-30T06:30:00Z", "95", STHLM),  # 08:30 CEST: peak
        carrier_row("TF-mon-0730", "2026-03-30T05:30:00Z", "95", STHLM),  # 07:30 CEST: night
        carrier_row("TF-sat", "2026-03-28T12:00:00Z", "30", STHLM),  # weekend: 0.025 -> 0.03
        carrier_row("TF-wed-1830", "2026-03-11T17:30:00Z", "95", STHLM),  # 18:30 CET: evening
        # Monday 00:30 local (Sunday in UTC): night
        carrier_row("TF-mon-0030", "2026-03-01T23:30:00Z", "95", STHLM),
        # 23:30 local on the 14th: 0.02
        carrier_row("TF-lon-14", "2026-03-14T22:30:00Z", "121", LONDON),
        # 00:30 local on the 15th: 0.025
        carrier_row("TF-lon-15", "2026-03-14T23:30:00Z", "121", LONDON),
        carrier_row("TF-jordan", "2026-03-09T10:00:00Z", "125", JORDAN),
        carrier_row("TF-kuwait", "2026-03-09T11:00:00Z", "61", KUWAIT),
        carrier_row("TF-chile", "2026-03-09T12:00:00Z", "61", CHILE),
        carrier_row("TF-usa", "2026-03-09T13:00:00Z", "7", USA),
        carrier_row("TF-uk-00", "2026-03-09T14:00:00Z", "33", UK),
        carrier_row("TF-ukmob", "2026-03-09T15:00:00Z", "5", UK_MOBILE),
        # a conferencing leg has this id too
        carrier_row("SHARED-1", "2026-03-09T16:00:00Z", "61", SWEDEN),
    ]


def separator_rows() -> list[dict[str, str]]:
    """Destinations written with spaces and dashes (rule 3: separators are removed)."""
    return [
        carrier_row("NUM-space", "2026-03-10T09:00:00Z", "61", "+44 20 7946 0002"),  # London 0.02
        carrier_row("NUM-dash", "2026-03-10T09:10:00Z", "61", "08-555 123 46"),  # Stockholm peak
        # Sweden fixed
        carrier_row("NUM-00-space", "2026-03-10T09:20:00Z", "61", "0046 31 765 4321"),
        carrier_row("NUM-mobile", "2026-03-10T09:30:00Z", "61", "070-123 45 68"),  # Sweden mobile
    ]


def entitlement_rows() -> list[dict[str, str]]:
    """Calls around the snapshots' local midnights and of accounts that change or are in
    suspense."""
    return [
        # 1 March 00:30 local: pinned E3
        carrier_row("MB-in", "2026-02-28T23:30:00Z", "60", SWEDEN, user="SUB-MOVE"),
        carrier_row("MB-last", "2026-03-31T21:59:59Z", "60", SWEDEN, user="SUB-MOVE"),  # E2
        # 1 April local: outside
        carrier_row("MB-out", "2026-03-31T22:00:00Z", "60", SWEDEN, user="SUB-MOVE"),
        # before E1: pinned E3 (1003)
        carrier_row("EN-pre-E1", "2026-03-03T22:59:59Z", "60", SWEDEN, user="SUB-MOVE"),
        carrier_row("EN-at-E1", "2026-03-03T23:00:00Z", "60", SWEDEN, user="SUB-MOVE"),  # E1 (1001)
        # E1 (1001)
        carrier_row("EN-pre-E2", "2026-03-17T22:59:59Z", "60", SWEDEN, user="SUB-MOVE"),
        carrier_row("EN-at-E2", "2026-03-17T23:00:00Z", "60", SWEDEN, user="SUB-MOVE"),  # E2 (1003)
        # no snapshot yet: E3
        carrier_row("EN-new-02", "2026-03-02T10:00:00Z", "60", SWEDEN, user="SUB-NEW"),
        # E1 lacks it: forward to E2
        carrier_row("EN-new-10", "2026-03-10T10:00:00Z", "60", SWEDEN, user="SUB-NEW"),
        # entitled from E3
        carrier_row("EN-late-05", "2026-03-05T10:00:00Z", "60", SWEDEN, user="SUB-LATE"),
        carrier_row("EN-late-20", "2026-03-20T10:00:00Z", "60", SWEDEN, user="SUB-LATE"),
        # billed by E1
        carrier_row("EN-left-10", "2026-03-10T11:00:00Z", "60", SWEDEN, user="SUB-LEFT"),
        # suspense: never backward
        carrier_row("EN-left-20", "2026-03-20T11:00:00Z", "60", SWEDEN, user="SUB-LEFT"),
        carrier_row("SU-unknown-06", "2026-03-06T10:00:00Z", "60", SWEDEN, user="SUB-UNKNOWN"),
        carrier_row("SU-unknown-19", "2026-03-19T10:00:00Z", "60", SWEDEN, user="SUB-UNKNOWN"),
        carrier_row("SU-noseq-07", "2026-03-07T10:00:00Z", "60", SWEDEN, user="SUB-NOSEQ"),
        carrier_row("SU-nocust-08", "2026-03-08T10:00:00Z", "60", SWEDEN, user="SUB-NOCUST"),
        carrier_row("SU-ghost-09", "2026-03-09T10:00:00Z", "60", SWEDEN, user="SUB-GHOST"),
    ]


def duplicate_rows_a() -> list[dict[str, str]]:
    """Rows file b delivers again, and an exact duplicate inside file a."""
    twice = carrier_row("DUP-2", "2026-03-13T13:00:00Z", "47", STHLM, user="SUB-004")
    return [
        carrier_row("DUP-1", "2026-03-13T12:00:00Z", "120", STHLM, user="SUB-002"),
        twice,
        dict(twice),
    ]


def file_b_rows() -> list[dict[str, str]]:
    """The second carrier file: a session's second part, re-deliveries one second longer, a
    row delivered twice in it (the first kept)."""
    return [
        carrier_row(
            "X2",
            "2026-03-16T08:03:20Z",
            "95",
            STHLM,
            user="SUB-001",
            status="2",
            session="S-X",
            part="2",
        ),
        carrier_row(
            "D2",
            "2026-03-18T07:00:40Z",
            "26",
            UK_MOBILE,
            user="SUB-002",
            status="2",
            session="S-D",
            part="2",
        ),
        carrier_row("DUP-1", "2026-03-13T12:00:00Z", "121", STHLM, user="SUB-002"),
        carrier_row("DUP-3", "2026-03-14T12:00:00Z", "70", STHLM, user="SUB-001"),
        carrier_row("DUP-3", "2026-03-14T12:00:00Z", "71", STHLM, user="SUB-001"),
    ]


FILLER_DESTINATIONS = (STHLM, SWEDEN, MOBILE, LONDON, UK, UK_MOBILE, BERLIN, JORDAN, CHILE, USA)
FILLER_ACCOUNTS = ("SUB-001", "SUB-002", "SUB-003", "SUB-004", "SUB-MOVE", "SUB-NEW")


def filler_rows(rng: random.Random, prefix: str, count: int) -> list[dict[str, str]]:
    """Ordinary calls over the month, to give the lines volume."""
    start = _utc("2026-03-01T00:00:00Z")
    rows = []
    for n in range(count):
        at = start + timedelta(seconds=rng.randrange(30 * 86400))
        seconds = rng.choice(
            ["0", "1", "12", "30", "59", "60", "61", "95", "180", "600", str(rng.randint(1, 3600))]
        )
        status = rng.choices(["1", "0", "3"], weights=[90, 6, 4])[0]
        rows.append(
            carrier_row(
                f"{prefix}-{n:04d}",
                at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                seconds,
                rng.choice(FILLER_DESTINATIONS),
                user=rng.choice(FILLER_ACCOUNTS),
                status=status,
                share=rng.choice(["", "12.5", "30"]),
            )
        )
    return rows


def write_csv(path: Path, fields: tuple[str, ...] | list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


# --- conferencing --------------------------------------------------------------------------


def leg(
    leg_id: str, start: str, seconds: object, cost: str, currency: str, account: str = "0000101"
) -> list:
    """One conferencing leg: local start "YYYY-MM-DD HH:MM:SS", cost as written by the provider."""
    begun = datetime.fromisoformat(start)
    span = seconds if isinstance(seconds, int) else 0
    return [
        f"CONF-{leg_id}",
        leg_id,
        account,
        "+46850512345",
        begun,
        begun + timedelta(seconds=span),
        seconds,
        cost,
        currency,
    ]


def conferencing_legs(rng: random.Random) -> list[list]:
    """Priced legs: markup and rounding per currency, the 10^9 limit, bad costs and currencies,
    month edges in local time, accounts that change customer or wait for the correction."""
    legs = [
        leg("CL-CLP-1500", "2026-03-02 10:00:00", 600, "1500", "CLP"),  # 1687.5 -> 1688
        leg("CL-CLP-1500.5", "2026-03-02 11:00:00", 600, "1500.5", "CLP"),
        leg("CL-CLP-333", "2026-03-02 12:00:00", 600, "333", "clp"),
        leg("CL-JOD-0.0125", "2026-03-03 10:00:00", 60, "0.0125", "JOD"),  # 0.0140625 -> 0.014
        leg("CL-JOD-1.2345", "2026-03-03 11:00:00", 60, "1.2345", "JOD"),
        leg("CL-KWD-0.004", "2026-03-03 12:00:00", 60, "0.004", "KWD"),  # 0.0045 -> 0.005
        leg("CL-BHD-2.222", "2026-03-03 13:00:00", 60, "2.222", "BHD"),  # 2.49975 -> 2.500
        leg("CL-EUR-10", "2026-03-04 10:00:00", 60, "10", "EUR", "0000103"),
        leg("CL-EUR-0.04", "2026-03-04 11:00:00", 60, "0.04", "EUR", "0000103"),  # 0.045 -> 0.05
        leg("CL-EUR-6dec", "2026-03-04 12:00:00", 60, "12.123456", "Eur", "0000103"),
        leg("CL-SEK-lower", "2026-03-04 13:00:00", 60, "4.00", "sek", "0000102"),
        # 1,012,500,000.00
        leg("CL-EUR-900M", "2026-03-05 10:00:00", 3600, "900000000", "EUR", "0000104"),
        # the limit itself
        leg("CL-EUR-1G", "2026-03-05 11:00:00", 3600, "1000000000", "EUR", "0000104"),
        # COST_OUT_OF_RANGE
        leg("CL-over-1G", "2026-03-05 12:00:00", 3600, "1000000000.000001", "EUR", "0000104"),
        # COST_OUT_OF_RANGE
        leg("CL-over-5G", "2026-03-05 13:00:00", 3600, "5000000000", "EUR", "0000104"),
        leg("CL-negative", "2026-03-06 10:00:00", 60, "-5.00", "EUR"),  # NEGATIVE_COST
        leg("CL-cur-EURO", "2026-03-06 11:00:00", 60, "5.00", "EURO"),
        leg("CL-cur-ABC", "2026-03-06 12:00:00", 60, "5.00", "ABC"),
        leg("CL-cur-XAU", "2026-03-06 13:00:00", 60, "5.00", "XAU"),
        leg("CL-cur-empty", "2026-03-06 14:00:00", 60, "5.00", ""),
        leg("CL-cost-1e3", "2026-03-07 10:00:00", 60, "1e3", "EUR"),
        leg("CL-cost-inf", "2026-03-07 11:00:00", 60, "inf", "EUR"),
        leg("CL-cost-nan", "2026-03-07 12:00:00", 60, "nan", "EUR"),
        leg("CL-cost-comma", "2026-03-07 13:00:00", 60, "5,00", "EUR"),
        leg("CL-cost-7dec", "2026-03-07 14:00:00", 60, "0.1234567", "EUR"),
        leg("CL-dur-1e3", "2026-03-07 15:00:00", "1e3", "5.00", "EUR"),
        leg("CL-dur-60.0", "2026-03-07 16:00:00", "60.0", "5.00", "EUR"),
        leg("CL-first-second", "2026-03-01 00:00:00", 60, "1.00", "SEK", "0000102"),
        # OUTSIDE_MONTH
        leg("CL-before-month", "2026-02-28 23:59:59", 60, "1.00", "SEK", "0000102"),
        leg("CL-after-month", "2026-04-01 00:00:00", 60, "1.00", "SEK", "0000102"),  # OUTSIDE_MONTH
        leg("CL-after-dst", "2026-03-29 03:30:00", 60, "1.00", "SEK", "0000102"),
        # no snapshot yet: E3 (C300)
        leg("CL-move-02", "2026-03-02 09:00:00", 60, "3.00", "EUR", "0000105"),
        leg("CL-move-05", "2026-03-05 09:00:00", 60, "3.00", "EUR", "0000105"),  # E1 (C200)
        leg("CL-move-20", "2026-03-20 09:00:00", 60, "3.00", "EUR", "0000105"),  # E2 (C300)
        # suspense until E4
        leg("CL-fixed-12", "2026-03-12 09:00:00", 60, "3.00", "EUR", "0000106"),
        leg("CL-ghost", "2026-03-12 10:00:00", 60, "3.00", "EUR", "0009999"),  # never known
        # the carrier has a call with this id too
        leg("SHARED-1", "2026-03-12 11:00:00", 60, "3.00", "EUR"),
    ]
    currencies = (("EUR", 4), ("SEK", 2), ("CLP", 0), ("JOD", 4))
    for n in range(70):
        currency, decimals = rng.choice(currencies)
        cost = f"{rng.randint(0, 5000) / 10**decimals:.{decimals}f}"
        start = f"2026-03-{1 + n % 30:02d} {8 + n % 10:02d}:{n % 60:02d}:00"
        account = rng.choice(["0000101", "0000102", "0000103", "0000104", "0000105"])
        legs.append(leg(f"L-{n:04d}", start, rng.randint(30, 5400), cost, currency, account))
    return legs


def credit_legs() -> list[list]:
    """Legs of the source that allows credits: negative costs round half away from zero."""
    return [
        leg("CR-CLP", "2026-03-10 10:00:00", 60, "-1500", "CLP"),  # -1687.5 -> -1688
        leg("CR-JOD", "2026-03-10 11:00:00", 60, "-0.0125", "JOD"),  # -0.0140625 -> -0.014
        leg("CR-EUR", "2026-03-10 12:00:00", 60, "-5.00", "EUR"),  # -5.625 -> -5.63
        leg("CR-KWD", "2026-03-10 13:00:00", 60, "-0.004", "KWD"),  # -0.0045 -> -0.005
        leg("CR-charge", "2026-03-10 14:00:00", 60, "5.00", "EUR"),  # a charge: 5.625 -> 5.63
        leg("CR-over-1G", "2026-03-10 15:00:00", 60, "-2000000000", "EUR"),  # COST_OUT_OF_RANGE
        leg("CR-bad-cost", "2026-03-10 16:00:00", 60, "-1e3", "EUR"),  # BAD_COST
        # the conferencing source's id: no duplicate
        leg("CL-CLP-1500", "2026-03-10 17:00:00", 60, "-1500", "CLP"),
    ]


def write_conferencing(path: Path, legs: list[list]) -> None:
    """The provider's export: title rows above the header, local times, costs as text."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "Usage"
    sheet.append(["Conferencing usage report 2026-03"])
    sheet.append(["All times Europe/Stockholm"])
    sheet.append([])
    sheet.append(CONFERENCING_HEADER)
    for row in legs:
        sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


# --- the month -----------------------------------------------------------------------------


def write_golden_month(root: Path, extras: Path) -> None:
    """Write the month's server files under root, the older tariff and the correction under
    extras."""
    rng = random.Random(20260301)
    file_a = (
        partial_rows_a()
        + grammar_rows()
        + tariff_rows()
        + separator_rows()
        + entitlement_rows()
        + duplicate_rows_a()
    )
    file_a += filler_rows(rng, "FA", 120)
    write_csv(root / "cdr/carrier" / CARRIER_FILES[0], CARRIER_FIELDS, file_a)
    write_csv(
        root / "cdr/carrier" / CARRIER_FILES[1],
        CARRIER_FIELDS,
        file_b_rows() + filler_rows(rng, "FB", 40),
    )
    write_conferencing(root / "cdr/conferencing" / CONFERENCING_FILE, conferencing_legs(rng))
    write_conferencing(root / "cdr/credits" / CREDITS_FILE, credit_legs())
    write_csv(
        root / "reference" / TARIFF_FILE,
        TARIFF_FIELDS,
        [dict(zip(TARIFF_FIELDS, r, strict=True)) for r in TARIFF],
    )
    write_csv(
        extras / OLDER_TARIFF,
        TARIFF_FIELDS,
        [dict(zip(TARIFF_FIELDS, r, strict=True)) for r in OLDER],
    )
    for index, name in enumerate(SNAPSHOTS):
        write_csv(root / "reference" / name, ENTITLEMENT_FIELDS, snapshot_rows(index))
    write_csv(extras / CORRECTION, ENTITLEMENT_FIELDS, snapshot_rows(3))
