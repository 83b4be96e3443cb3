"""prepaid_file: the CDR file contents the prepaid runs have debited, so each run takes the
month's files delivered since (the file ledger knows every file fetched; this, which of them the
balances have seen). Indexes measured on 50,000 accounts and millions of entries: the month's
debits by their calls' start (the monthly settlement), the latest run's exposure, an account's
setting changes, the switch's undelivered events.

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
    op.create_index("prepaid_exposure_by_time", "prepaid_exposure", ["computed_at"])
    op.create_index(
        "prepaid_account_change_of_account", "prepaid_account_change", ["account_id", "change_id"]
    )
    op.create_index(
        "switch_outbox_undelivered",
        "switch_outbox",
        ["account_id", "outbox_id"],
        postgresql_where=sa.text("delivered_at IS NULL"),
        sqlite_where=sa.text("delivered_at IS NULL"),
    )
