"""billing_run: each run of the billing DAG (its month, state, failed task, error and next
step), so the Billing page shows every month tried, also those that failed or wait for files.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "billing_run",
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("billing_month", sa.String(length=7), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("work_dir", sa.Text(), nullable=True),
        sa.Column("failed_task", sa.String(length=250), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("hint", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("billing_run_of_month", "billing_run", ["billing_month", "updated_at"])
