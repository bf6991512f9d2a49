"""Per-user quotas: the most bytes a user's own references may add up to.

NULL means no limit, so every existing user keeps storing as before the upgrade. SQLite
adds a nullable column in place (no table rebuild), so the upgrade is instant whatever
the number of users and files.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("quota", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("quota")
