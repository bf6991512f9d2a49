"""User names unique by their normalised form: `users.name_key` (NFKC + case-fold).

`Admin`, `ADMIN` and a fullwidth `admin` (U+FF41...) are all `admin` once normalised; from
now on only one of them can exist, and signing in as any of them finds that one (issue 14).
The column is filled from each existing name, then made unique.

An existing database may already hold names that collide (made before this rule). Nothing
is removed or renamed, and the server still starts: the oldest user of each colliding group
(the lowest id) keeps the plain key, each younger one gets `<key>#<id>` (`#` is never part
of a valid name, so no new name can take it) and stays reachable by its exact spelling. A
WARNING names every such group, so an administrator can remove the look-alikes on purpose.
No new name can join the group: its normalised form is taken.

SQLite adds the column and the unique index in place (no table rebuild: a rebuild of
`users` under `foreign_keys=ON` would cascade into every table that references it); only
PostgreSQL also gets NOT NULL, which SQLite cannot add in place. `create_user` always sets it.

The normalisation is written out here rather than imported, so this migration keeps doing
what it did if `filecask.auth.user_name_key` ever changes.

Revision ID: 0007
Revises: 0006
Create Date: 2027-02-01
"""

from __future__ import annotations

import logging
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("filecask.migrations")

users = sa.table(
    "users",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("name_key", sa.String),
)


def name_key(name: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def upgrade() -> None:
    op.add_column("users", sa.Column("name_key", sa.String(255), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.select(users.c.id, users.c.name).order_by(users.c.id)).all()
    keys: dict[int, str] = {}
    groups: dict[str, list[str]] = {}
    for user_id, name in rows:
        key = name_key(name)
        if key in groups:
            keys[user_id] = f"{key}#{user_id}"
        else:
            keys[user_id] = key
            groups[key] = []
        groups[key].append(name)
    for user_id, key in keys.items():
        conn.execute(users.update().where(users.c.id == user_id).values(name_key=key))
    for key, names in groups.items():
        if len(names) > 1:
            log.warning(
                "users %s have names that differ only in case or width (all %r once"
                " normalised); all are kept and each signs in by its exact name, %r also by"
                " any look-alike spelling; no further look-alike can be created",
                ", ".join(repr(n) for n in names),
                key,
                names[0],
            )
    if conn.dialect.name == "postgresql":
        op.alter_column("users", "name_key", nullable=False)
    op.create_index("uq_users_name_key", "users", ["name_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_name_key", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("name_key")
