"""Per-user lines, the revenue share per service provider, and billed calls for lineage.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def _batch_id(primary_key: bool) -> sa.Column:
    return sa.Column(
        "batch_id",
        sa.Integer,
        sa.ForeignKey("billing_batch.batch_id"),
        primary_key=primary_key,
        nullable=False,
    )


def _line_key(primary_key: bool) -> list[sa.Column]:
    return [
        sa.Column("customer_id", sa.String(64), primary_key=primary_key, nullable=False),
        sa.Column("sequence_number", sa.String(64), primary_key=primary_key, nullable=False),
        sa.Column("currency", sa.String(3), primary_key=primary_key, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "billing_user_line",
        _batch_id(primary_key=True),
        *_line_key(primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
        *(
            sa.Column(name, sa.BigInteger, nullable=False)
            for name in ("total_minor", "call_count", "billed_seconds")
        ),
    )
    op.create_table(
        "revenue_share",
        _batch_id(primary_key=True),
        sa.Column("service_provider", sa.String(128), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("share_basis_points", sa.Integer, primary_key=True),
        *(
            sa.Column(name, sa.BigInteger, nullable=False)
            for name in ("call_count", "billed_minor", "share_minor")
        ),
    )
    op.create_table(
        "billed_call",
        _batch_id(primary_key=False),
        *_line_key(primary_key=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("transaction_id", sa.Text, nullable=False),
        sa.Column("start_utc", sa.DateTime(timezone=True), nullable=False),
        sa.Column("billed_seconds", sa.BigInteger, nullable=False),
        sa.Column("cost_minor", sa.BigInteger, nullable=False),
        sa.Column("pricing", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_row", sa.BigInteger, nullable=False),
        sa.Column("combined_rows", sa.Text, nullable=False),
    )
    op.create_index(
        "billed_call_of_line",
        "billed_call",
        ["batch_id", "customer_id", "sequence_number", "currency"],
    )
