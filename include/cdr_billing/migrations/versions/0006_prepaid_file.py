"""prepaid_file: the CDR file contents the prepaid runs have debited, so each run takes the
month's files delivered since (the file ledger knows every file fetched; this, which of them the
balances have seen). balance_entry_by_call_start: the monthly settlement finds the month's
debits by their calls' start, among tens of millions of entries.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "prepaid_file",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("billing_month", sa.String(length=7), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("debited_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "name", "sha256"),
    )
    op.create_index("balance_entry_by_call_start", "balance_entry", ["call_start"])
