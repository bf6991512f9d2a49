"""Bundles of stored files, their holders, and the CRC-32 cache for directory archives.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bundles"),
    )
    op.create_table(
        "bundle_entries",
        sa.Column("bundle_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.PrimaryKeyConstraint("bundle_id", "position", name="pk_bundle_entries"),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name="fk_bundle_entries_bundle_id_bundles",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["hash"], ["blobs.hash"], name="fk_bundle_entries_hash_blobs"),
    )
    op.create_index("ix_bundle_entries_hash", "bundle_entries", ["hash"])
    op.create_table(
        "bundle_holders",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("bundle_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bundle_holders"),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name="fk_bundle_holders_bundle_id_bundles",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_bundle_holders_user_id_users", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("bundle_id", "user_id", name="uq_bundle_holders_bundle_id_user_id"),
    )
    op.create_table(
        "crc_cache",
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("inode", sa.BigInteger, nullable=False),
        sa.Column("crc32", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("path", name="pk_crc_cache"),
    )


def downgrade() -> None:
    op.drop_table("crc_cache")
    op.drop_table("bundle_holders")
    op.drop_index("ix_bundle_entries_hash", table_name="bundle_entries")
    op.drop_table("bundle_entries")
    op.drop_table("bundles")
