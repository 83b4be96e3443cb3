"""The Billing page's drill-down: a user's calls in a line in file and row order, the rows not
billed per group, and their sums per group, each read from an index instead of a scan.

- billed_call_of_user (batch, customer, sequence number, currency, user, file, row) replaces
  billed_call_of_line, its prefix: one page of a user's calls is an index range, and a line's
  calls are still found by the prefix. PostgreSQL builds it on every partition (here) and on
  each partition a load attaches.
- billing_exception.group_key: what a non-billed row is grouped by (unbillable: its number
  range, suspense: its account; "" for other kinds), so a group's rows are an index range
  (billing_exception_of_group) instead of parsing every row's detail JSON.
- not_billed_group: per batch, kind, reason and group key, the calls and their seconds (the
  load writes it in its transaction). Filled here for the batches already loaded; seconds
  stay NULL where the rows did not record them (loads before this version).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"

# the kinds grouped, and the detail field each is grouped by (cdr_billing.not_billed)
GROUP_FIELDS = {"unbillable": "number_range", "suspense": "user_id"}


# the detail as JSON the databases parse: Python's json.dumps writes a missing value as NaN
DETAIL = "replace(detail, ': NaN', ': null')"


def _detail_field(dialect: str, field: str) -> str:
    """SQL: a field of the row's detail JSON as text (NULL when absent)."""
    if dialect == "postgresql":
        return f"({DETAIL}::json ->> '{field}')"
    return f"CAST(json_extract({DETAIL}, '$.{field}') AS TEXT)"


def _group_key_sql(dialect: str) -> str:
    cases = " ".join(
        f"WHEN '{kind}' THEN {_detail_field(dialect, field)}"
        for kind, field in GROUP_FIELDS.items()
    )
    return f"COALESCE(CASE kind {cases} END, '')"


def _kinds() -> str:
    return ", ".join(f"'{kind}'" for kind in GROUP_FIELDS)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_index("billed_call_of_line", table_name="billed_call")
    op.create_index(
        "billed_call_of_user",
        "billed_call",
        [
            "batch_id",
            "customer_id",
            "sequence_number",
            "currency",
            "user_id",
            "source_file",
            "source_row",
        ],
    )
    op.add_column(
        "billing_exception",
        sa.Column("group_key", sa.Text(), nullable=False, server_default=""),
    )
    op.execute(
        f"UPDATE billing_exception SET group_key = {_group_key_sql(dialect)} "
        f"WHERE kind IN ({_kinds()})"
    )
    op.create_index(
        "billing_exception_of_group",
        "billing_exception",
        ["batch_id", "kind", "reason_code", "group_key", "source_file", "source_row"],
    )
    op.create_table(
        "not_billed_group",
        sa.Column(
            "batch_id", sa.Integer(), sa.ForeignKey("billing_batch.batch_id"), nullable=False
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=64), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.BigInteger()),
        sa.PrimaryKeyConstraint("batch_id", "kind", "reason_code", "group_key"),
    )
    seconds = _detail_field(dialect, "duration_seconds")
    op.execute(
        "INSERT INTO not_billed_group "
        "(batch_id, kind, reason_code, group_key, calls, seconds) "
        f"SELECT batch_id, kind, reason_code, group_key, count(*), "
        f"sum(CAST({seconds} AS BIGINT)) "
        f"FROM billing_exception WHERE kind IN ({_kinds()}) "
        "GROUP BY batch_id, kind, reason_code, group_key"
    )
