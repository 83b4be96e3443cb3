"""Lineage: from a billing line back to its calls, their input files and row numbers.

The load stores every billed call of a batch in `billed_call`; `LINE_CALLS_SQL` joins them to
the file ledger (`cdr_file`: content hash, archive path, the server that delivered it).
`python -m cdr_billing.lineage --month 2026-10 --customer C100 --sequence 1001` prints one
line's calls; `--csv FILE` writes them all.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Engine

from cdr_billing import database, schema
from cdr_billing.money import from_minor_units

BILLED_CALL_COLUMNS = [
    "customer_id",
    "sequence_number",
    "currency",
    "user_id",
    "transaction_id",
    "start_utc",
    "billed_seconds",
    "cost_minor",
    "pricing",
    "source",
    "source_file",
    "source_row",
    "combined_rows",
]
# What the bill task keeps of an attributed call for billed_calls: the billed_call columns but
# combined_rows (made here), and what finds a call's partial parts.
ATTRIBUTED_COLUMNS = [c for c in BILLED_CALL_COLUMNS if c != "combined_rows"] + [
    "session_id",
    "completion_status",
]

# The calls of one billing line of the month's current batch, with the file each row came from.
LINE_CALLS_SQL = """
SELECT c.transaction_id, c.user_id, c.start_utc, c.billed_seconds, c.cost_minor, c.currency,
       c.pricing, c.source, c.source_file, c.source_row, c.combined_rows,
       f.sha256, f.server, f.archive_path, b.batch_id
FROM billing_batch b
JOIN billed_call c ON c.batch_id = b.batch_id
LEFT JOIN cdr_file f ON f.source = c.source AND f.name = c.source_file
                    AND f.billing_month = b.billing_month AND f.status = 'accepted'
WHERE b.billing_month = :month AND b.status = 'current'
  AND c.line_user_key BETWEEN :low AND :high
  AND c.customer_id = :customer_id AND c.sequence_number = :sequence_number
ORDER BY c.source_file, c.source_row
"""


def billed_calls(attributed: pd.DataFrame, combined_parts: pd.DataFrame) -> pd.DataFrame:
    """The billed calls in the `billed_call` shape; a call merged from partial parts lists the
    other parts' rows in combined_rows ("12,13"; "file:row" for a part in another file)."""
    calls = attributed.assign(combined_rows="")
    if len(combined_parts):
        rows = (
            combined_parts.sort_values(["source_file", "source_row"])
            .groupby(["source", "session_id"])[["source_file", "source_row"]]
            .agg(list)
        )
        joined = calls.join(
            rows.rename(columns={"source_file": "part_files", "source_row": "part_rows"}),
            on=["source", "session_id"],
        )
        merged = (calls["completion_status"] == 2) & joined["part_rows"].notna()
        calls.loc[merged, "combined_rows"] = [
            ",".join(
                str(row) if file == own else f"{file}:{row}"
                for file, row in zip(files, part_rows, strict=True)
            )
            for own, files, part_rows in zip(
                calls.loc[merged, "source_file"],
                joined.loc[merged, "part_files"],
                joined.loc[merged, "part_rows"],
                strict=True,
            )
        ]
    return calls[BILLED_CALL_COLUMNS].astype(
        {"source_row": "int64", "billed_seconds": "int64", "cost_minor": "int64"}
    )


def line_calls(
    engine: Engine, billing_month: str, customer_id: str, sequence_number: str
) -> pd.DataFrame:
    """The calls of one billing line of the month's current batch, with their files and rows."""
    keys = schema.line_key_range(customer_id, sequence_number)  # the index's range of the line
    with engine.connect() as conn:
        result = conn.execute(
            text(LINE_CALLS_SQL),
            {
                "month": billing_month,
                "customer_id": customer_id,
                "sequence_number": sequence_number,
                "low": keys.low,
                "high": keys.high,
            },
        )
        return pd.DataFrame(result.mappings().all(), columns=list(result.keys()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdr_billing.lineage", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--month", required=True, help="billing month YYYY-MM")
    parser.add_argument("--customer", required=True, help="customer id")
    parser.add_argument("--sequence", required=True, help="sequence number")
    database.add_arguments(parser)
    parser.add_argument("--csv", help="write every call to this CSV file")
    args = parser.parse_args(argv)
    calls = line_calls(
        database.engine_from_arguments(args), args.month, args.customer, args.sequence
    )
    if calls.empty:
        print(
            f"no billed calls for {args.customer}/{args.sequence} in {args.month}'s current batch",
            file=sys.stderr,
        )
        return 1
    for currency, group in calls.groupby("currency"):
        total = from_minor_units(int(group["cost_minor"].sum()), currency)
        batch = group["batch_id"].iat[0]
        print(
            f"{args.month} {args.customer}/{args.sequence}: "
            f"{len(group)} calls, {total} {currency} (batch {batch})"
        )
    for source_file, group in calls.groupby("source_file"):
        sha = group["sha256"].iat[0] or "not in the ledger"
        server = group["server"].iat[0]
        print(
            f"  {source_file} (sha256 {sha[:16]}, from {server}): "
            f"rows {_ranges(group['source_row'])}"
        )
    if args.csv:
        calls.to_csv(args.csv, index=False)
        print(f"wrote {len(calls)} calls to {args.csv}")
    return 0


def _ranges(rows: pd.Series) -> str:
    """1,2,3,7 -> "1-3, 7"."""
    values = sorted(rows.astype(int))
    spans, start = [], values[0]
    for previous, value in zip(values, [*values[1:], None], strict=True):
        if value != previous + 1:
            spans.append(f"{start}-{previous}" if start != previous else str(start))
            start = value
    return ", ".join(spans)


if __name__ == "__main__":
    raise SystemExit(main())
