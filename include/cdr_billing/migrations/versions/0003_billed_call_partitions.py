"""PostgreSQL: billed calls partitioned by batch, so a load fills a new partition without
index or foreign-key work per row and attaches it, indexed and checked in bulk.

A month's load writes millions of billed calls. Into one plain table each row updates the
line index and runs the foreign-key trigger; into a table of its own, indexed and checked
when attached, the same rows take half the time to COPY. Existing calls move to one
partition per batch; the default partition takes rows inserted otherwise (kept empty by the
pipeline, it costs an attach nothing). SQLite keeps the plain table.

Revision ID: 0003
Revises: 0002
"""

from alembic import op
from sqlalchemy import text

revision = "0003"
down_revision = "0002"

LINE_INDEX = "billed_call_of_line"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER INDEX {LINE_INDEX} RENAME TO {LINE_INDEX}_unpartitioned")
    op.execute("ALTER TABLE billed_call RENAME TO billed_call_unpartitioned")
    op.execute(
        "CREATE TABLE billed_call (LIKE billed_call_unpartitioned INCLUDING DEFAULTS) "
        "PARTITION BY LIST (batch_id)"
    )
    op.execute(
        "ALTER TABLE billed_call ADD FOREIGN KEY (batch_id) REFERENCES billing_batch (batch_id)"
    )
    op.execute(
        f"CREATE INDEX {LINE_INDEX} "
        "ON billed_call (batch_id, customer_id, sequence_number, currency)"
    )
    op.execute("CREATE TABLE billed_call_default PARTITION OF billed_call DEFAULT")
    batches = (
        op.get_bind()
        .execute(text("SELECT DISTINCT batch_id FROM billed_call_unpartitioned"))
        .scalars()
        .all()
    )
    for batch_id in batches:
        op.execute(
            f"CREATE TABLE billed_call_batch_id_{int(batch_id)} "
            f"PARTITION OF billed_call FOR VALUES IN ({int(batch_id)})"
        )
    op.execute("INSERT INTO billed_call SELECT * FROM billed_call_unpartitioned")
    op.execute("DROP TABLE billed_call_unpartitioned")
