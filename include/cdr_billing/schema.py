"""The billing database's tables: batches, lines, non-billed rows, quarantine and the file ledger.

A batch's quarantined rows are the `quarantined_row` rows of its run_id; its other
non-billed rows (duplicates, unbillable, suspense) are in `billing_exception`; its billed
calls, with their source file and row, in `billed_call` (lineage).
The tables are created and upgraded by the versioned migrations in `cdr_billing.migrations`;
a change here needs a new migration (a test compares both).
"""

from __future__ import annotations

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)

CURRENT, SUPERSEDED = "current", "superseded"

metadata = MetaData()

billing_batch = Table(
    "billing_batch",
    metadata,
    Column("batch_id", Integer, primary_key=True, autoincrement=True),
    Column("billing_month", String(7), nullable=False),
    Column("run_id", String(250), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column(
        "loaded_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
    Column("counts", Text, nullable=False),
    # The batch this one replaced as the month's current (None: the month's first), so a
    # retried load tells it again.
    Column("supersedes_batch_id", Integer, ForeignKey("billing_batch.batch_id")),
    Index(
        "one_current_batch_per_month",
        "billing_month",
        unique=True,
        postgresql_where=text("status = 'current'"),
        sqlite_where=text("status = 'current'"),
    ),
)

billing_line = Table(
    "billing_line",
    metadata,
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), primary_key=True),
    Column("customer_id", String(64), primary_key=True),
    Column("sequence_number", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("total_minor", BigInteger, nullable=False),
    Column("call_count", BigInteger, nullable=False),
    Column("billed_seconds", BigInteger, nullable=False),
)

# The per-user level of the aggregation: billing_line is their sum per (customer, sequence
# number, currency).
billing_user_line = Table(
    "billing_user_line",
    metadata,
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), primary_key=True),
    Column("customer_id", String(64), primary_key=True),
    Column("sequence_number", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("user_id", String(128), primary_key=True),
    Column("total_minor", BigInteger, nullable=False),
    Column("call_count", BigInteger, nullable=False),
    Column("billed_seconds", BigInteger, nullable=False),
)

# What each service provider earns of the billed calls that carry a revenue share percentage.
revenue_share = Table(
    "revenue_share",
    metadata,
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), primary_key=True),
    Column("service_provider", String(128), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("share_basis_points", Integer, primary_key=True),
    Column("call_count", BigInteger, nullable=False),
    Column("billed_minor", BigInteger, nullable=False),
    Column("share_minor", BigInteger, nullable=False),
)

# Lineage: every billed call of a batch, the line it is summed into, and the input row(s) it
# came from.
billed_call = Table(
    "billed_call",
    metadata,
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("sequence_number", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("transaction_id", Text, nullable=False),
    Column("start_utc", DateTime(timezone=True), nullable=False),
    Column("billed_seconds", BigInteger, nullable=False),
    Column("cost_minor", BigInteger, nullable=False),
    Column("pricing", String(16), nullable=False),
    Column("source", String(64), nullable=False),
    Column("source_file", Text, nullable=False),
    Column("source_row", BigInteger, nullable=False),
    # Rows of the partial parts merged into this call, "" if none.
    Column("combined_rows", Text, nullable=False),
    Index("billed_call_of_line", "batch_id", "customer_id", "sequence_number", "currency"),
    # A partition per batch on PostgreSQL (migration 0003); one table on SQLite.
    postgresql_partition_by="LIST (batch_id)",
)

billing_exception = Table(
    "billing_exception",
    metadata,
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("reason_code", String(64), nullable=False),
    Column("source_file", Text, nullable=False),
    Column("source_row", BigInteger, nullable=False),
    Column("transaction_id", Text, nullable=False),
    Column("detail", Text, nullable=False),
)


tariff_version = Table(
    "tariff_version",
    metadata,
    Column("version_id", Integer, primary_key=True, autoincrement=True),
    Column("source_name", Text, nullable=False),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("rate_count", Integer, nullable=False),
    Column(
        "loaded_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
)

tariff_rate = Table(
    "tariff_rate",
    metadata,
    Column("version_id", Integer, ForeignKey("tariff_version.version_id"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("prefix", String(16), nullable=False, index=True),
    Column("destination", Text, nullable=False),
    Column("price_micro", BigInteger, nullable=False),
    Column("fee_micro", BigInteger, nullable=False),
    Column("minimum_micro", BigInteger, nullable=False),
    Column("first_increment", Integer, nullable=False),
    Column("next_increment", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("valid_from", DateTime(timezone=True), nullable=False),
    Column("valid_to", DateTime(timezone=True)),
    Column("band", String(32), nullable=False),
    Column("weekday_mask", Integer, nullable=False),
    Column("start_hour", Integer, nullable=False),
    Column("end_hour", Integer, nullable=False),
)

entitlement_snapshot = Table(
    "entitlement_snapshot",
    metadata,
    Column("snapshot_id", Integer, primary_key=True, autoincrement=True),
    Column("taken_at", DateTime(timezone=True), nullable=False),
    Column("source_name", Text, nullable=False),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("row_count", Integer, nullable=False),
    Column(
        "loaded_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
)

entitlement = Table(
    "entitlement",
    metadata,
    Column(
        "snapshot_id", Integer, ForeignKey("entitlement_snapshot.snapshot_id"), primary_key=True
    ),
    Column("account_id", String(128), primary_key=True),
    Column("user_principal_name", Text, nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("sequence_number", String(64), nullable=False),
    Column("default_sequence_number", String(64), nullable=False),
    Column("entitled", Boolean, nullable=False),
    Column("last_login", String(32), nullable=False),
)

# The snapshot each billing month is billed with (re-runs reuse it unless asked to refresh).
month_entitlement = Table(
    "month_entitlement",
    metadata,
    Column("billing_month", String(7), primary_key=True),
    Column("snapshot_id", Integer, ForeignKey("entitlement_snapshot.snapshot_id"), nullable=False),
)

quarantined_row = Table(
    "quarantined_row",
    metadata,
    Column("run_id", String(250), nullable=False, index=True),
    Column("billing_month", String(7), nullable=False),
    Column("source", String(64), nullable=False),
    Column("source_file", Text, nullable=False),
    Column("source_row", BigInteger, nullable=False),
    Column("reason_code", String(64), nullable=False),
    Column("reasons", Text, nullable=False),
    Column("original_values", Text, nullable=False),
)

cdr_file = Table(
    "cdr_file",
    metadata,
    Column("file_id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("name", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("remote_mtime", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("server", String(250), nullable=False),
    Column("billing_month", String(7), nullable=False),
    Column(
        "first_seen",
        DateTime(timezone=True),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
    Column("status", String(32), nullable=False),
    Column("archive_path", Text, nullable=False),
    # Reconciliation of the file's rows, written by the validate stage:
    # read = billable + quarantined + duplicate.
    Column("rows_read", BigInteger),
    Column("rows_billable", BigInteger),
    Column("rows_quarantined", BigInteger),
    Column("rows_duplicate", BigInteger),
    UniqueConstraint("source", "name", "sha256", name="one_row_per_file_content"),
)


def _python_values(column: pd.Series) -> list:
    """A column's values as Python objects: missing as None, timestamps as datetimes."""
    values = (
        column.astype(object) if isinstance(column.dtype, pd.DatetimeTZDtype) else column
    ).tolist()
    missing = column.isna().to_numpy()
    return (
        [None if gone else value for value, gone in zip(values, missing, strict=True)]
        if missing.any()
        else values
    )


def to_records(frame: pd.DataFrame, **constants: object) -> list[dict]:
    """Rows as dicts for an INSERT: missing values as NULL, timestamps as datetimes (built
    column by column: 4x faster than through an object frame)."""
    frame = frame.assign(**constants)
    names = list(frame.columns)
    return [
        dict(zip(names, row, strict=True))
        for row in zip(*(_python_values(frame[name]) for name in names), strict=True)
    ]
