"""The billing file for the billing system: one row per billing line, as CSV and Excel.

Columns and their headers come from the configuration. Text that a spreadsheet would run as
a formula (starting with =, +, -, @, a tab or a carriage return) is neutralised with a
leading apostrophe; amounts are exact decimals.
"""

from __future__ import annotations

import csv
from typing import NamedTuple

import pandas as pd

from cdr_billing.money import from_minor_units
from cdr_billing.storage import Location

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
AVAILABLE = (
    "billing_month",
    "customer_id",
    "sequence_number",
    "currency",
    "total",
    "call_count",
    "billed_seconds",
)


def neutralise(value: object) -> object:
    """Make a text value inert in a spreadsheet; leave numbers as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def rows(lines: pd.DataFrame, billing_month: str, columns: dict[str, str]) -> list[list[object]]:
    """The file's rows (headers first) in the configured columns."""
    unknown = [c for c in columns if c not in AVAILABLE]
    if unknown:
        raise ValueError(f"billing file: unknown columns {unknown}; choose from {list(AVAILABLE)}")
    records = [
        {
            **line,
            "billing_month": billing_month,
            "total": from_minor_units(line["total_minor"], line["currency"]),
        }
        for line in lines.to_dict("records")
    ]
    return [list(columns.values())] + [
        [neutralise(record[name]) for name in columns] for record in records
    ]


class BillingFiles(NamedTuple):
    """The billing file of a month, written twice: as CSV and as Excel (local paths or
    ObjectStoragePaths, as the directory was)."""

    csv_file: Location
    xlsx_file: Location


def write(
    lines: pd.DataFrame, billing_month: str, columns: dict[str, str], directory: Location
) -> BillingFiles:
    """Write billing_<month>.csv and .xlsx into directory (a local path or an
    ObjectStoragePath); return both."""
    from openpyxl import Workbook

    table = rows(lines, billing_month, columns)
    csv_path, xlsx_path = (
        directory / f"billing_{billing_month}.csv",
        directory / f"billing_{billing_month}.xlsx",
    )
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(table)
    book = Workbook()
    sheet = book.active
    sheet.title = f"Billing {billing_month}"
    for row in table:
        sheet.append(row)  # totals stay Decimal: openpyxl writes them exactly
    for column, name in enumerate(columns, start=1):
        if name == "total":
            for (cell,) in sheet.iter_rows(min_row=2, min_col=column, max_col=column):
                cell.number_format = "0.00"
    with xlsx_path.open("wb") as handle:
        book.save(handle)
    return BillingFiles(csv_path, xlsx_path)
