"""Several instances on one PostgreSQL database: change counters and shared sign-in failures.

`change_counters` carries one counter per change topic (the cross-instance change feed of
`filecask.storage.changes`); `auth_failures` the failed sign-ins per limiter key (`filecask.auth`).
New tables only, so the upgrade is instant and touches no existing row. Both are created on
SQLite too (one schema everywhere) where nothing uses them.

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "change_counters",
        sa.Column("topic", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("counter", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("topic", name="pk_change_counters"),
    )
    op.create_table(
        "auth_failures",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_auth_failures"),
    )
    op.create_index("ix_auth_failures_last_at", "auth_failures", ["last_at"])


def downgrade() -> None:
    op.drop_index("ix_auth_failures_last_at", table_name="auth_failures")
    op.drop_table("auth_failures")
    op.drop_table("change_counters")
