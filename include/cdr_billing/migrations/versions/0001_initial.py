"""The billing schema as first released: batches, lines, exceptions, tariffs, entitlements,
quarantine and the file ledger. Tables that exist already (a database the pipeline created
before it had migrations) are kept as they are.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

CURRENT_ONLY = sa.text("status = 'current'")


def _created_at(name: str) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.current_timestamp()
    )


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())

    def create_table(name: str, *columns: sa.Column | sa.Constraint) -> None:
        if name not in existing:
            op.create_table(name, *columns)

    create_table(
        "billing_batch",
        sa.Column("batch_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("billing_month", sa.String(7), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        _created_at("loaded_at"),
        sa.Column("counts", sa.Text, nullable=False),
    )
    if "billing_batch" not in existing:
        op.create_index(
            "one_current_batch_per_month",
            "billing_batch",
            ["billing_month"],
            unique=True,
            postgresql_where=CURRENT_ONLY,
            sqlite_where=CURRENT_ONLY,
        )
    create_table(
        "billing_line",
        sa.Column(
            "batch_id", sa.Integer, sa.ForeignKey("billing_batch.batch_id"), primary_key=True
        ),
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("sequence_number", sa.String(64), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("total_minor", sa.BigInteger, nullable=False),
        sa.Column("call_count", sa.BigInteger, nullable=False),
        sa.Column("billed_seconds", sa.BigInteger, nullable=False),
    )
    create_table(
        "billing_exception",
        sa.Column(
            "batch_id",
            sa.Integer,
            sa.ForeignKey("billing_batch.batch_id"),
            nullable=False,
            index=True,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_row", sa.BigInteger, nullable=False),
        sa.Column("transaction_id", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    create_table(
        "tariff_version",
        sa.Column("version_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source_name", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("rate_count", sa.Integer, nullable=False),
        _created_at("loaded_at"),
    )
    create_table(
        "tariff_rate",
        sa.Column(
            "version_id", sa.Integer, sa.ForeignKey("tariff_version.version_id"), primary_key=True
        ),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("prefix", sa.String(16), nullable=False, index=True),
        sa.Column("destination", sa.Text, nullable=False),
        *(
            sa.Column(name, sa.BigInteger, nullable=False)
            for name in ("price_micro", "fee_micro", "minimum_micro")
        ),
        *(
            sa.Column(name, sa.Integer, nullable=False)
            for name in ("first_increment", "next_increment")
        ),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True)),
        sa.Column("band", sa.String(32), nullable=False),
        *(
            sa.Column(name, sa.Integer, nullable=False)
            for name in ("weekday_mask", "start_hour", "end_hour")
        ),
    )
    create_table(
        "entitlement_snapshot",
        sa.Column("snapshot_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_name", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("row_count", sa.Integer, nullable=False),
        _created_at("loaded_at"),
    )
    create_table(
        "entitlement",
        sa.Column(
            "snapshot_id",
            sa.Integer,
            sa.ForeignKey("entitlement_snapshot.snapshot_id"),
            primary_key=True,
        ),
        sa.Column("account_id", sa.String(128), primary_key=True),
        sa.Column("user_principal_name", sa.Text, nullable=False),
        *(
            sa.Column(name, sa.String(64), nullable=False)
            for name in ("customer_id", "sequence_number", "default_sequence_number")
        ),
        sa.Column("entitled", sa.Boolean, nullable=False),
        sa.Column("last_login", sa.String(32), nullable=False),
    )
    create_table(
        "month_entitlement",
        sa.Column("billing_month", sa.String(7), primary_key=True),
        sa.Column(
            "snapshot_id",
            sa.Integer,
            sa.ForeignKey("entitlement_snapshot.snapshot_id"),
            nullable=False,
        ),
    )
    create_table(
        "quarantined_row",
        sa.Column("run_id", sa.String(250), nullable=False, index=True),
        sa.Column("billing_month", sa.String(7), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_row", sa.BigInteger, nullable=False),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("original_values", sa.Text, nullable=False),
    )
    create_table(
        "cdr_file",
        sa.Column("file_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("remote_mtime", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("server", sa.String(250), nullable=False),
        sa.Column("billing_month", sa.String(7), nullable=False),
        _created_at("first_seen"),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("archive_path", sa.Text, nullable=False),
        *(
            sa.Column(f"rows_{kind}", sa.BigInteger)
            for kind in ("read", "billable", "quarantined", "duplicate")
        ),
        sa.UniqueConstraint("source", "name", "sha256", name="one_row_per_file_content"),
    )
