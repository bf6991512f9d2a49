"""The metadata tables, in SQLAlchemy Core; Alembic migrations create them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    # The name's normalised form (`filecask.auth.user_name_key`: NFKC + case-fold), which
    # names are unique by, so neither `Admin` nor a fullwidth `admin` can sit next to
    # `admin`. Always set by `create_user`; NOT NULL on PostgreSQL (SQLite cannot add that
    # in place, migration 0007). Names that collided before 0007 keep `<key>#<id>` for all
    # but the oldest.
    sa.Column("name_key", sa.String(255), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # Most bytes the user may keep alive (every distinct blob of their references and of
    # the bundles they hold) plus what their open resumable uploads reserve; NULL: no limit.
    # Enforced in `SqlMetaStore.add_ref` and `create_upload`, in the inserting transaction.
    sa.Column("quota", sa.BigInteger, nullable=True),
    sa.Index("uq_users_name_key", "name_key", unique=True),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("crc32", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

refs = sa.Table(
    "refs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("hash", sa.String(64), sa.ForeignKey("blobs.hash"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("user_id", "hash", name="uq_refs_user_id_hash"),
)

bundles = sa.Table(
    "bundles",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

bundle_entries = sa.Table(
    "bundle_entries",
    metadata,
    sa.Column(
        "bundle_id",
        sa.String(64),
        sa.ForeignKey("bundles.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("hash", sa.String(64), sa.ForeignKey("blobs.hash"), nullable=False, index=True),
    sa.Column("path", sa.String(1024), nullable=False),
)

bundle_holders = sa.Table(
    "bundle_holders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "bundle_id", sa.String(64), sa.ForeignKey("bundles.id", ondelete="CASCADE"), nullable=False
    ),
    # Indexed (0006): a user's usage and bundle count look their holds up by user.
    sa.Column(
        "user_id",
        sa.Integer,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("bundle_id", "user_id", name="uq_bundle_holders_bundle_id_user_id"),
)

crc_cache = sa.Table(
    "crc_cache",
    metadata,
    sa.Column("path", sa.String(4096), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("inode", sa.BigInteger, nullable=False),
    sa.Column("crc32", sa.BigInteger, nullable=False),
)

uploads = sa.Table(
    "uploads",
    metadata,
    # A resumable (tus) upload in progress, shared by every worker: its bytes so far live
    # in `<data-dir>/tmp/tus-<id>`; `offset` only ever names bytes already fsynced there.
    sa.Column("id", sa.String(32), primary_key=True),
    # Indexed (0006): a user's open uploads are counted and summed (their reservations).
    sa.Column(
        "user_id",
        sa.Integer,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("length", sa.BigInteger, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("metadata", sa.String(4096), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    # Set once the bytes are a stored file (its hash); the row stays until it expires so a
    # client that lost the final answer can still learn the outcome.
    sa.Column("hash", sa.String(64), nullable=True),
)

change_counters = sa.Table(
    "change_counters",
    metadata,
    # With PostgreSQL, one counter per `changes.Topic`, moved inside every write transaction
    # that changes the topic: the change feed's poll compares them with what it last saw, so
    # a lost notification is caught within `change_poll`. Unused (but present) on SQLite.
    sa.Column("topic", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("counter", sa.BigInteger, nullable=False),
)

auth_failures = sa.Table(
    "auth_failures",
    metadata,
    # With PostgreSQL, failed sign-ins per limiter key ("user:<name>", "addr:<ip>"), so that
    # failures made at one instance slow down attempts at every other. Unused on SQLite.
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("last_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
