"""The self-service portal: sign-in links and sessions (stored hashed), rate-limit events shared
by every portal process, and the portal's append-only audit log.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "portal_sign_in_token",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("client_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("expires_at", MOMENT, nullable=False),
        sa.Column("used_at", MOMENT, nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("portal_sign_in_token_by_expiry", "portal_sign_in_token", ["expires_at"])
    op.create_table(
        "portal_session",
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("last_seen_at", MOMENT, nullable=False),
        sa.Column("expires_at", MOMENT, nullable=False),
        sa.Column("revoked_at", MOMENT, nullable=True),
        sa.PrimaryKeyConstraint("session_hash"),
    )
    op.create_index("portal_session_by_expiry", "portal_session", ["expires_at"])
    op.create_table(
        "portal_rate_event",
        sa.Column("event_id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("bucket", sa.String(length=96), nullable=False),
        sa.Column("at", MOMENT, nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("portal_rate_event_of_bucket", "portal_rate_event", ["bucket", "at"])
    op.create_table(
        "portal_audit",
        sa.Column("event_id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("at", MOMENT, nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("address_hash", sa.String(length=64), nullable=True),
        sa.Column("client_hash", sa.String(length=64), nullable=True),
        sa.Column("account_id", sa.String(length=128), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("portal_audit_by_time", "portal_audit", ["at"])


def downgrade() -> None:
    for table in ("portal_audit", "portal_rate_event", "portal_session", "portal_sign_in_token"):
        op.drop_table(table)
