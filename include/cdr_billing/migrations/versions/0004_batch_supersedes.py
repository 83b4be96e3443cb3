"""billing_batch.supersedes_batch_id: the batch a load replaced as the month's current.

A load that is retried after its transaction committed finds its batch by run id; without
the stored link it could not tell which batch it superseded, and the month report said
"First batch of the month" and dropped the changes. Existing batches get the link their
loads made: each batch of a month replaced the month's batch loaded just before it.
SQLite adds a column with a REFERENCES clause in place, so the same statement serves both.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE billing_batch "
        "ADD COLUMN supersedes_batch_id INTEGER REFERENCES billing_batch (batch_id)"
    )
    op.execute(
        "UPDATE billing_batch SET supersedes_batch_id = "
        "(SELECT max(earlier.batch_id) FROM billing_batch earlier "
        "WHERE earlier.billing_month = billing_batch.billing_month "
        "AND earlier.batch_id < billing_batch.batch_id)"
    )
