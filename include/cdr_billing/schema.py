"""The billing database's tables: batches, lines, non-billed rows, quarantine, the file ledger
and prepaid credit control.

A batch's quarantined rows are the `quarantined_row` rows of its run_id; its other
non-billed rows (duplicates, unbillable, suspense) are in `billing_exception`; its billed
calls, with their source file and row, in `billed_call` (lineage).
The tables are created and upgraded by the versioned migrations in `cdr_billing.migrations`;
a change here needs a new migration (a test compares both).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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

from cdr_billing import hashing, text_bytes

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
def _line_user_key_of_insert(context) -> int:
    """line_user_key's default in SQLAlchemy's INSERT of a call (COPY writers use
    with_derived_columns)."""
    call = context.get_current_parameters()
    return line_user_key(
        call["customer_id"], call["sequence_number"], call["currency"], call["user_id"]
    )


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
    # compared bytewise ("C" on PostgreSQL, SQLite's own default): sorting the index's
    # entries by locale rules cost more than the load's COPY (migration 0011)
    Column("source_file", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("source_row", BigInteger, nullable=False),
    # Rows of the partial parts merged into this call, "" if none.
    Column("combined_rows", Text, nullable=False),
    # line_user_keys(): the line's hash in the high 32 bits, the currency's and user's in the
    # low ones; written by the load (with_derived_columns), migration 0011
    Column("line_user_key", BigInteger, nullable=False, default=_line_user_key_of_insert),
    # a user's calls in a line, in file and row order (the drill-down's pages); a key range
    # finds a line's calls. Queries filter on the real columns too, so a hash collision
    # never shows another line's call. Without batch_id: a partition holds one batch.
    Index("billed_call_of_user", "line_user_key", "source_file", "source_row"),
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
    # what the row is grouped by: unbillable its number range, suspense its account ("" for
    # other kinds; migration 0007)
    Column("group_key", Text, nullable=False, server_default=""),
    Index(
        "billing_exception_of_group",
        "batch_id",
        "kind",
        "reason_code",
        "group_key",
        "source_file",
        "source_row",
    ),
)

# Per batch, the non-billed rows of each kind, reason and group key: how many and their
# seconds (None: rows loaded before 0007 did not record them). Written by the load, so the
# Billing page never groups a month's rows itself.
not_billed_group = Table(
    "not_billed_group",
    metadata,
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("reason_code", String(64), primary_key=True),
    Column("group_key", Text, primary_key=True),
    Column("calls", BigInteger, nullable=False),
    Column("seconds", BigInteger),
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


# Prepaid credit control (migration 0005). Which accounts are prepaid and their levels; the
# balance is the sum of the account's append-only balance_entry rows, cached here and updated
# in the same transaction as the entries. Writers on one account hold its row lock.
ROW_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only

prepaid_account = Table(
    "prepaid_account",
    metadata,
    Column("account_id", String(128), primary_key=True),  # the CDRs' user_id
    Column("currency", String(3), nullable=False),
    Column("low_balance_minor", BigInteger, nullable=False),  # below: request a top-up
    Column("topup_minor", BigInteger, nullable=False),
    Column("lock_level_minor", BigInteger, nullable=False),  # at or below: lock the line
    Column("unlock_level_minor", BigInteger, nullable=False),  # above: unlock it
    Column("payment_method_ref", String(128)),  # None: no automatic top-up
    Column("max_concurrent_calls", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("balance_minor", BigInteger, nullable=False),  # cache: the sum of the entries
    Column("last_entry_id", BigInteger),
    Column("locked", Boolean, nullable=False),  # cache: the latest lock_event
    Column("updated_at", DateTime(timezone=True), nullable=False),  # of balance or lock
)

# Every change of an account's settings: who, when, the settings after it (JSON).
prepaid_account_change = Table(
    "prepaid_account_change",
    metadata,
    Column("change_id", ROW_ID, primary_key=True, autoincrement=True),
    Column("account_id", String(128), ForeignKey("prepaid_account.account_id"), nullable=False),
    Column("changed_by", String(128), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("settings", Text, nullable=False),
    Index("prepaid_account_change_of_account", "account_id", "change_id"),
)

# The ledger: debit (negative), reversal (of a debit, its opposite), topup, credit, refund and
# adjustment. Never updated nor deleted; the idempotency key makes each posting happen once.
balance_entry = Table(
    "balance_entry",
    metadata,
    Column("entry_id", ROW_ID, primary_key=True, autoincrement=True),
    Column("account_id", String(128), ForeignKey("prepaid_account.account_id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("idempotency_key", String(250), nullable=False, unique=True),
    Column("call_key", Text),  # debits and reversals: the call
    Column("reverses_entry_id", BigInteger, ForeignKey("balance_entry.entry_id")),
    Column("call_start", DateTime(timezone=True)),
    Column("billed_seconds", BigInteger),
    Column("tariff_version", Integer),
    Column("source_file", Text),
    Column("source_row", BigInteger),
    Column("run_id", String(250)),
    Column("reason", Text),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("balance_entry_of_account", "account_id", "entry_id"),
    # the monthly settlement finds the month's debits by their calls' start
    Index("balance_entry_by_call_start", "call_start"),
)

# The current debit of each call: the lookup that makes a call debited once; revision counts
# its debits (a re-rating posts a reversal and debit revision + 1).
call_debit = Table(
    "call_debit",
    metadata,
    Column("call_key", Text, primary_key=True),
    Column("account_id", String(128), ForeignKey("prepaid_account.account_id"), nullable=False),
    Column("entry_id", BigInteger, ForeignKey("balance_entry.entry_id"), nullable=False),
    Column("cost_minor", BigInteger, nullable=False),
    Column("revision", Integer, nullable=False),
)

# Lock and unlock, append-only: an account's state is its latest event.
lock_event = Table(
    "lock_event",
    metadata,
    Column("event_id", ROW_ID, primary_key=True, autoincrement=True),
    Column("account_id", String(128), ForeignKey("prepaid_account.account_id"), nullable=False),
    Column("state", String(8), nullable=False),  # locked | unlocked
    Column("reason", Text, nullable=False),
    Column("balance_minor", BigInteger, nullable=False),
    Column("cause_entry_id", BigInteger, ForeignKey("balance_entry.entry_id")),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("lock_event_of_account", "account_id", "event_id"),
)

# The switch's webhooks, written in the transaction of their lock_event; delivered at least
# once, in order per account (an account's next event waits for the one before).
switch_outbox = Table(
    "switch_outbox",
    metadata,
    Column("outbox_id", ROW_ID, primary_key=True, autoincrement=True),
    Column("event_id", BigInteger, ForeignKey("lock_event.event_id"), nullable=False, unique=True),
    Column("account_id", String(128), nullable=False),
    Column("action", String(8), nullable=False),  # LOCK | UNLOCK
    Column("payload", Text, nullable=False),  # the JSON body, as signed
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Index("switch_outbox_pending", "account_id", "outbox_id"),
    # what is left to deliver, without reading every delivered event
    Index(
        "switch_outbox_undelivered",
        "account_id",
        "outbox_id",
        postgresql_where=text("delivered_at IS NULL"),
        sqlite_where=text("delivered_at IS NULL"),
    ),
)

# Charges requested from the payment gateway. Recorded (pending) before the request is sent,
# so a request in flight is counted and a retry after a timeout reuses its idempotency key.
topup_request = Table(
    "topup_request",
    metadata,
    Column("request_id", ROW_ID, primary_key=True, autoincrement=True),
    Column("account_id", String(128), ForeignKey("prepaid_account.account_id"), nullable=False),
    Column("idempotency_key", String(64), nullable=False, unique=True),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("payment_method_ref", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | declined | unknown
    Column("attempts", Integer, nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    Column("gateway_reference", String(128)),
    Column("detail", Text),
    Column("entry_id", BigInteger, ForeignKey("balance_entry.entry_id")),  # approved: its top-up
    Index("topup_request_of_account", "account_id", "request_id"),
)

# Each prepaid run's money at risk, per account: 2 x concurrent calls x longest call x average
# price per minute, and what calls not yet debited have spent.
prepaid_exposure = Table(
    "prepaid_exposure",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("account_id", String(128), primary_key=True),
    Column("currency", String(3), nullable=False),
    Column("max_concurrent_calls", Integer, nullable=False),
    Column("max_call_seconds", BigInteger, nullable=False),
    Column("price_per_minute_micro", BigInteger, nullable=False),  # average, micro-units
    Column("bound_minor", BigInteger, nullable=False),
    Column("undebited_minor", BigInteger, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    Index("prepaid_exposure_by_time", "computed_at"),  # the latest run's figures
)

# The CDR file contents the prepaid runs have debited: a run takes the month's files not here.
prepaid_file = Table(
    "prepaid_file",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("name", Text, primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("billing_month", String(7), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("calls", BigInteger, nullable=False),  # the file's prepaid calls
    Column("debited_at", DateTime(timezone=True), nullable=False),
)

# Each run of the billing DAG, one row per Airflow run id (cdr_billing.run_attempts, migration
# 0008): the Billing page's months tried, with the failed task, its error's first line (phone
# numbers masked) and the failure mail's next step. A cleared run updates its row.
billing_run = Table(
    "billing_run",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("billing_month", String(7), nullable=False),
    Column("dag_id", String(250), nullable=False),
    Column("state", String(16), nullable=False),  # running | failed | success
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("work_dir", Text),  # the billing run's work directory (its validation results)
    Column("failed_task", String(250)),
    Column("error", Text),
    Column("hint", Text),
    Index("billing_run_of_month", "billing_month", "updated_at"),
)

# Statements (migration 0009): per batch, billed user, customer and currency of the customers
# whose config opts in, written in the batch's transaction (a re-run supersedes them with the
# batch). statement_id is a hash of batch, customer, user and currency (cdr_billing.statements
# .statement_id), so a URL never shows a user id that may be a phone number. Called numbers are
# stored masked by the customer's policy only: no full number in these tables.
statement = Table(
    "statement",
    metadata,
    Column("statement_id", String(32), primary_key=True),
    Column("batch_id", Integer, ForeignKey("billing_batch.batch_id"), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("address", Text),  # the month's snapshot user_principal_name (None: not in it)
    Column("timezone", String(64), nullable=False),  # the billing timezone calls are shown in
    Column("mask_digits", Integer, nullable=False),  # last digits hidden (0: shown in full)
    Column("deliver", String(8), nullable=False),  # pdf | link | none
    Column("total_minor", BigInteger, nullable=False),
    Column("call_count", BigInteger, nullable=False),
    Column("billed_seconds", BigInteger, nullable=False),
    Column("prepaid", Boolean, nullable=False),
    # prepaid accounts: the ledger over the month by posting time (None: post-paid)
    Column("opening_minor", BigInteger),
    Column("debits_minor", BigInteger),  # debits and their reversals
    Column("topups_minor", BigInteger),
    Column("adjustments_minor", BigInteger),  # credits, refunds and adjustments
    Column("closing_minor", BigInteger),
    UniqueConstraint(
        "batch_id", "customer_id", "user_id", "currency", name="one_statement_per_user"
    ),
    Index("statement_of_user", "user_id", "batch_id"),
)

# A statement's calls, in start order: the called number as shown (masked by policy).
statement_call = Table(
    "statement_call",
    metadata,
    Column("statement_id", String(32), ForeignKey("statement.statement_id"), primary_key=True),
    Column("call_no", Integer, primary_key=True),
    Column("start_utc", DateTime(timezone=True), nullable=False),
    Column("called_number_shown", String(64), nullable=False),
    Column("destination", Text, nullable=False),
    Column("sequence_number", String(64), nullable=False),
    Column("duration_seconds", BigInteger, nullable=False),
    Column("billed_seconds", BigInteger, nullable=False),
    Column("cost_minor", BigInteger, nullable=False),
)

# A statement's subtotals: kind destination | sequence, keyed by the destination's name or
# the sequence number.
statement_subtotal = Table(
    "statement_subtotal",
    metadata,
    Column("statement_id", String(32), ForeignKey("statement.statement_id"), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("group_key", Text, primary_key=True),
    Column("calls", BigInteger, nullable=False),
    Column("billed_seconds", BigInteger, nullable=False),
    Column("total_minor", BigInteger, nullable=False),
)

# The rendered documents of a statement in the archive (written after the load).
statement_document = Table(
    "statement_document",
    metadata,
    Column("statement_id", String(32), ForeignKey("statement.statement_id"), primary_key=True),
    Column("html_path", Text, nullable=False),
    Column("html_sha256", String(64), nullable=False),
    Column("pdf_path", Text, nullable=False),
    Column("pdf_sha256", String(64), nullable=False),
    Column("rendered_at", DateTime(timezone=True), nullable=False),
)

# The mail of each statement whose customer delivers (written with the statement, pending).
# A row is claimed (sending, committed) before its mail is sent, so a mail goes once: a row
# left in sending by a crash becomes unknown and is never resent automatically.
statement_delivery = Table(
    "statement_delivery",
    metadata,
    Column("statement_id", String(32), ForeignKey("statement.statement_id"), primary_key=True),
    Column("address", Text, nullable=False),
    Column("method", String(8), nullable=False),  # pdf | link
    # pending | sending | sent | deferred | bounced | unknown | cancelled
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("claimed_at", DateTime(timezone=True)),
    Column("message_id", Text),
    Column("sent_at", DateTime(timezone=True)),
    Column("smtp_reply", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("statement_delivery_due", "status", "next_attempt_at"),
)

# The self-service portal (cdr_billing.portal, migration 0010). Sign-in links and sessions are
# stored as SHA-256 hashes of their random values only, so a copy of the database signs no one
# in. Addresses are the entitlement snapshot's user_principal_name, lower-cased.
portal_sign_in_token = Table(
    "portal_sign_in_token",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("address", Text, nullable=False),
    Column("client_hash", String(64), nullable=False),  # who asked (keyed hash of the client)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),  # set once, by the redeeming UPDATE
    Index("portal_sign_in_token_by_expiry", "expires_at"),
)

portal_session = Table(
    "portal_session",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("address", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),  # idle expiry from here
    Column("expires_at", DateTime(timezone=True), nullable=False),  # absolute expiry
    Column("revoked_at", DateTime(timezone=True)),  # signed out or rotated
    Index("portal_session_by_expiry", "expires_at"),
)

# Rate limits shared by every portal process: one row per counted request and bucket
# (e.g. sign-in requests of one address or one client), counted over a sliding window.
portal_rate_event = Table(
    "portal_rate_event",
    metadata,
    Column("event_id", ROW_ID, primary_key=True, autoincrement=True),
    Column("bucket", String(96), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("portal_rate_event_of_bucket", "bucket", "at"),
)

# Append-only audit of the portal: sign-ins requested, granted and refused, sign-outs,
# statement reads and top-ups. Addresses and clients as hashes (portal.auth), never in clear.
portal_audit = Table(
    "portal_audit",
    metadata,
    Column("event_id", ROW_ID, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", String(32), nullable=False),
    Column("address_hash", String(64)),
    Column("client_hash", String(64)),
    Column("account_id", String(128)),
    Column("detail", Text),
    Index("portal_audit_by_time", "at"),
)

# A switch's pre-dial check reads the view prepaid_line_state (migration 0005): each active
# account's locked, balance_minor, currency and updated_at, stale by one prepaid interval at most.


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


_LOW_32_BITS = np.uint64(0xFFFFFFFF)


def _text_hash(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A 64-bit hash of each row's texts in the columns (joined by a unit separator)."""
    texts = [text_bytes.one_array(frame[name]) for name in columns]
    separator = pa.scalar("\x1f", pa.large_string())
    return hashing.text_hashes(pc.binary_join_element_wise(*texts, separator))


def line_user_keys(calls: pd.DataFrame) -> np.ndarray:
    """billed_call.line_user_key of each call: 32 bits of its line's hash (customer, sequence
    number) above 32 bits of its currency's and user's, so that an integer sorts a batch's
    calls by line and user (an index built 3x faster than on the texts themselves) and a
    line's calls are one key range (line_key_range)."""
    line = _text_hash(calls, ["customer_id", "sequence_number"])
    user = _text_hash(calls, ["currency", "user_id"])
    return ((line & ~_LOW_32_BITS) | (user >> np.uint64(32))).view(np.int64)


def line_user_key(customer_id: str, sequence_number: str, currency: str, user_id: str) -> int:
    """The line_user_key of a user's calls in a line."""
    call = pd.DataFrame(
        {
            "customer_id": [customer_id],
            "sequence_number": [sequence_number],
            "currency": [currency],
            "user_id": [user_id],
        }
    )
    return int(line_user_keys(call)[0])


class KeyRange(NamedTuple):
    """The line_user_keys from low to high (both included)."""

    low: int
    high: int


def line_key_range(customer_id: str, sequence_number: str) -> KeyRange:
    """The line_user_keys of a line's calls, whatever their currency and user."""
    low = line_user_key(customer_id, sequence_number, "", "") & ~int(_LOW_32_BITS)
    return KeyRange(low, low + int(_LOW_32_BITS))


def with_derived_columns(table: Table, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with the table's columns derived from their others when absent (billed_call's
    line_user_key): every writer of the table goes through database.insert_frame."""
    if table.name == billed_call.name and "line_user_key" not in rows.columns:
        return rows.assign(line_user_key=line_user_keys(rows))
    return rows


def to_records(frame: pd.DataFrame, **constants: object) -> list[dict]:
    """Rows as dicts for an INSERT: missing values as NULL, timestamps as datetimes (built
    column by column: 4x faster than through an object frame)."""
    frame = frame.assign(**constants)
    names = list(frame.columns)
    return [
        dict(zip(names, row, strict=True))
        for row in zip(*(_python_values(frame[name]) for name in names), strict=True)
    ]
