"""billed_call's drill-down index on an integer key, so that a load builds it in a third of the
time (docs/performance.md, "The load against its limit").

- billed_call.line_user_key (schema.line_user_keys: a hash of the line in the high 32 bits, of
  the currency and user in the low ones), computed here for the calls already loaded, per
  distinct line and user; the load writes it with every call.
- billed_call_of_user on (line_user_key, source_file, source_row) instead of the batch and the
  four texts: batch_id is constant in a partition, and sorting five texts by locale rules cost
  more than the load's COPY. The queries filter on the real columns as well.
- source_file compared bytewise on PostgreSQL (COLLATE "C"; SQLite's default already is): file
  names sort by their bytes, the index's ties are a memcmp. No table rewrite.

Revision ID: 0011
Revises: 0010
"""

import pandas as pd
import sqlalchemy as sa
from alembic import op

from cdr_billing.schema import line_user_keys

revision = "0011"
down_revision = "0010"

LINE_USER = ["customer_id", "sequence_number", "currency", "user_id"]
KEYS_TABLE = "billed_call_key_0011"


def _fill_keys() -> None:
    """Each loaded call's line_user_key, computed once per line and user in Python (the hash is
    the load's own) and joined in by one UPDATE."""
    bind = op.get_bind()
    columns = ", ".join(LINE_USER)
    users = pd.DataFrame(
        bind.execute(sa.text(f"SELECT DISTINCT {columns} FROM billed_call")).all(),
        columns=LINE_USER,
    )
    keys = op.create_table(
        KEYS_TABLE,
        *(sa.Column(name, sa.Text(), nullable=False) for name in LINE_USER),
        sa.Column("line_user_key", sa.BigInteger(), nullable=False),
    )
    if len(users):
        op.bulk_insert(
            keys, users.assign(line_user_key=line_user_keys(users).tolist()).to_dict("records")
        )
    matches = " AND ".join(f"billed_call.{name} = k.{name}" for name in LINE_USER)
    op.execute(
        f"UPDATE billed_call SET line_user_key = k.line_user_key FROM {KEYS_TABLE} k "
        f"WHERE {matches}"
    )
    op.drop_table(KEYS_TABLE)


def upgrade() -> None:
    op.drop_index("billed_call_of_user", table_name="billed_call")
    op.add_column("billed_call", sa.Column("line_user_key", sa.BigInteger(), nullable=True))
    _fill_keys()
    with op.batch_alter_table("billed_call") as batch:  # SQLite: the table copied once
        batch.alter_column("line_user_key", existing_type=sa.BigInteger(), nullable=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute('ALTER TABLE billed_call ALTER COLUMN source_file TYPE text COLLATE "C"')
    op.create_index(
        "billed_call_of_user", "billed_call", ["line_user_key", "source_file", "source_row"]
    )
