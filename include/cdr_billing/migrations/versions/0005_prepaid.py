"""Prepaid credit control: accounts and their levels, the append-only balance ledger with each
call's current debit, lock and unlock events, the switch's outbox, top-up requests, each run's
exposure, and the view a switch's pre-dial check reads.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "prepaid_account",
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("low_balance_minor", sa.BigInteger(), nullable=False),
        sa.Column("topup_minor", sa.BigInteger(), nullable=False),
        sa.Column("lock_level_minor", sa.BigInteger(), nullable=False),
        sa.Column("unlock_level_minor", sa.BigInteger(), nullable=False),
        sa.Column("payment_method_ref", sa.String(length=128), nullable=True),
        sa.Column("max_concurrent_calls", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("balance_minor", sa.BigInteger(), nullable=False),
        sa.Column("last_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "prepaid_exposure",
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("max_concurrent_calls", sa.Integer(), nullable=False),
        sa.Column("max_call_seconds", sa.BigInteger(), nullable=False),
        sa.Column("price_per_minute_micro", sa.BigInteger(), nullable=False),
        sa.Column("bound_minor", sa.BigInteger(), nullable=False),
        sa.Column("undebited_minor", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "account_id"),
    )
    op.create_table(
        "balance_entry",
        sa.Column("entry_id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("idempotency_key", sa.String(length=250), nullable=False),
        sa.Column("call_key", sa.Text(), nullable=True),
        sa.Column("reverses_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("call_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("billed_seconds", sa.BigInteger(), nullable=True),
        sa.Column("tariff_version", sa.Integer(), nullable=True),
        sa.Column("source_file", sa.Text(), nullable=True),
        sa.Column("source_row", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.String(length=250), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["prepaid_account.account_id"],
        ),
        sa.ForeignKeyConstraint(
            ["reverses_entry_id"],
            ["balance_entry.entry_id"],
        ),
        sa.PrimaryKeyConstraint("entry_id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index(
        "balance_entry_of_account", "balance_entry", ["account_id", "entry_id"], unique=False
    )
    op.create_table(
        "prepaid_account_change",
        sa.Column("change_id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("changed_by", sa.String(length=128), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["prepaid_account.account_id"],
        ),
        sa.PrimaryKeyConstraint("change_id"),
    )
    op.create_table(
        "call_debit",
        sa.Column("call_key", sa.Text(), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("cost_minor", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["prepaid_account.account_id"],
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["balance_entry.entry_id"],
        ),
        sa.PrimaryKeyConstraint("call_key"),
    )
    op.create_table(
        "lock_event",
        sa.Column("event_id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("balance_minor", sa.BigInteger(), nullable=False),
        sa.Column("cause_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["prepaid_account.account_id"],
        ),
        sa.ForeignKeyConstraint(
            ["cause_entry_id"],
            ["balance_entry.entry_id"],
        ),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("lock_event_of_account", "lock_event", ["account_id", "event_id"], unique=False)
    op.create_table(
        "topup_request",
        sa.Column("request_id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("payment_method_ref", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gateway_reference", sa.String(length=128), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("entry_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["prepaid_account.account_id"],
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["balance_entry.entry_id"],
        ),
        sa.PrimaryKeyConstraint("request_id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index(
        "topup_request_of_account", "topup_request", ["account_id", "request_id"], unique=False
    )
    op.create_table(
        "switch_outbox",
        sa.Column("outbox_id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["lock_event.event_id"],
        ),
        sa.PrimaryKeyConstraint("outbox_id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        "switch_outbox_pending", "switch_outbox", ["account_id", "outbox_id"], unique=False
    )

    op.execute(
        "CREATE VIEW prepaid_line_state AS SELECT account_id, locked, balance_minor, currency, "
        "updated_at FROM prepaid_account WHERE active"
    )
