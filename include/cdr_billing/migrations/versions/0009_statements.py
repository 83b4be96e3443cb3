"""Statements: per batch and billed user of the customers that opt in, an itemised statement
(calls with the called number masked by policy, subtotals, prepaid opening and closing
balance), its rendered documents and its mail delivery.

The statements are written in the batch's transaction, so a re-run supersedes them with the
batch; statement_id is a hash computed in Python (no user id, which may be a phone number, in
a URL).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def _statement_key() -> sa.Column:
    return sa.Column(
        "statement_id",
        sa.String(length=32),
        sa.ForeignKey("statement.statement_id"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "statement",
        sa.Column("statement_id", sa.String(length=32), nullable=False),
        sa.Column(
            "batch_id", sa.Integer(), sa.ForeignKey("billing_batch.batch_id"), nullable=False
        ),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("address", sa.Text()),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("mask_digits", sa.Integer(), nullable=False),
        sa.Column("deliver", sa.String(length=8), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("call_count", sa.BigInteger(), nullable=False),
        sa.Column("billed_seconds", sa.BigInteger(), nullable=False),
        sa.Column("prepaid", sa.Boolean(), nullable=False),
        sa.Column("opening_minor", sa.BigInteger()),
        sa.Column("debits_minor", sa.BigInteger()),
        sa.Column("topups_minor", sa.BigInteger()),
        sa.Column("adjustments_minor", sa.BigInteger()),
        sa.Column("closing_minor", sa.BigInteger()),
        sa.PrimaryKeyConstraint("statement_id"),
        sa.UniqueConstraint(
            "batch_id", "customer_id", "user_id", "currency", name="one_statement_per_user"
        ),
    )
    op.create_index("statement_of_user", "statement", ["user_id", "batch_id"])
    op.create_table(
        "statement_call",
        _statement_key(),
        sa.Column("call_no", sa.Integer(), nullable=False),
        sa.Column("start_utc", sa.DateTime(timezone=True), nullable=False),
        sa.Column("called_number_shown", sa.String(length=64), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("sequence_number", sa.String(length=64), nullable=False),
        sa.Column("duration_seconds", sa.BigInteger(), nullable=False),
        sa.Column("billed_seconds", sa.BigInteger(), nullable=False),
        sa.Column("cost_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("statement_id", "call_no"),
    )
    op.create_table(
        "statement_subtotal",
        _statement_key(),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("billed_seconds", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("statement_id", "kind", "group_key"),
    )
    op.create_table(
        "statement_document",
        _statement_key(),
        sa.Column("html_path", sa.Text(), nullable=False),
        sa.Column("html_sha256", sa.String(length=64), nullable=False),
        sa.Column("pdf_path", sa.Text(), nullable=False),
        sa.Column("pdf_sha256", sa.String(length=64), nullable=False),
        sa.Column("rendered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("statement_id"),
    )
    op.create_table(
        "statement_delivery",
        _statement_key(),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("message_id", sa.Text()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("smtp_reply", sa.Text()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("statement_id"),
    )
    op.create_index("statement_delivery_due", "statement_delivery", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("statement_delivery_due", table_name="statement_delivery")
    for table in ("statement_delivery", "statement_document", "statement_subtotal"):
        op.drop_table(table)
    op.drop_table("statement_call")
    op.drop_index("statement_of_user", table_name="statement")
    op.drop_table("statement")
