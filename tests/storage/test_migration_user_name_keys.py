"""Migration 0007: user names unique by their normalised form, on a database that already
holds look-alike names (made before the rule). Chosen: keep them all (nothing removed, the
server starts), the oldest keeps the plain key, the younger ones `<key>#<id>`; each signs in
by its exact spelling; a WARNING names them; no new look-alike can be created."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from blockbuster import BlockBuster

from filecask.errors import Conflict
from filecask.storage.changes import ChangeStamps
from filecask.storage.meta.sql import SqlMetaStore

FULLWIDTH_ADMIN = "\uff21\uff24\uff2d\uff29\uff2e"  # "ADMIN" in fullwidth letters
OLD_USERS = [(1, "admin"), (2, "Admin"), (3, FULLWIDTH_ADMIN), (4, "bob"), (5, "ädmin")]
NOW = datetime(2027, 1, 1, tzinfo=UTC)


def _alembic(conn: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("filecask") / "migrations"))
    config.attributes["connection"] = conn
    return config


def _fill_at_0005(conn: sa.Connection) -> None:
    for user_id, name in OLD_USERS:
        conn.execute(
            sa.text(
                "INSERT INTO users (id, name, password_hash, is_admin, created_at)"
                " VALUES (:id, :name, :hash, :admin, :now)"
            ),
            {"id": user_id, "name": name, "hash": f"h{user_id}", "admin": user_id == 1, "now": NOW},
        )
    conn.execute(
        sa.text(
            "INSERT INTO blobs (hash, size, crc32, content_type, created_at)"
            " VALUES (:h, 1, 7, 'text/plain', :now)"
        ),
        {"h": "ab" * 32, "now": NOW},
    )
    conn.execute(
        sa.text("INSERT INTO refs (user_id, hash, name, created_at) VALUES (2, :h, 'a', :now)"),
        {"h": "ab" * 32, "now": NOW},
    )


async def _check_upgraded(store: SqlMetaStore) -> None:
    async with store.engine.connect() as conn:
        result = await conn.execute(sa.text("SELECT id, name_key FROM users"))
        rows: dict[int, str] = {int(r[0]): str(r[1]) for r in result.all()}
        refs = await conn.scalar(sa.text("SELECT count(*) FROM refs"))
    assert rows == {1: "admin", 2: "admin#2", 3: "admin#3", 4: "bob", 5: "ädmin"}
    assert refs == 1  # nothing cascaded from the users table
    for spelling, user_id in [
        ("admin", 1),
        ("Admin", 2),
        (FULLWIDTH_ADMIN, 3),
        ("ADMIN", 1),  # no user of this exact name: the plain key's owner
        ("BOB", 4),
        ("ädmin", 5),
    ]:
        user = await store.get_user(spelling)
        assert user is not None, spelling
        assert user.id == user_id, spelling
    with pytest.raises(Conflict):
        await store.create_user("aDmin", "h", is_admin=False)
    with pytest.raises(Conflict):
        await store.create_user("Bob", "h", is_admin=False)
    created = await store.create_user("carol", "h", is_admin=False)
    assert (await store.get_user("CAROL")) == created


def _assert_warned(caplog: pytest.LogCaptureFixture) -> None:
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert all(repr(n) in warnings[0] for n in ("admin", "Admin", FULLWIDTH_ADMIN)), warnings


async def test_sqlite_database_with_look_alike_names_upgrades_and_keeps_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "filecask.db"
    await asyncio.to_thread(_sqlite_at_0005, db)
    caplog.set_level(logging.WARNING, logger="filecask.migrations")
    stamps = ChangeStamps(None)
    store = SqlMetaStore(f"sqlite:///{db}", stamps)
    await store.open()  # as `filecask serve` does: brings the schema to head
    try:
        await _check_upgraded(store)
    finally:
        await store.close()
    _assert_warned(caplog)
    await asyncio.to_thread(_sqlite_downgrades_keeping_rows, db)


def _sqlite_at_0005(db: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0005")
        _fill_at_0005(conn)
    engine.dispose()


def _sqlite_downgrades_keeping_rows(db: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        command.downgrade(_alembic(conn), "0005")
        assert "name_key" not in {c["name"] for c in sa.inspect(conn).get_columns("users")}
        assert conn.scalar(sa.text("SELECT count(*) FROM users")) == len(OLD_USERS) + 1
    engine.dispose()


async def test_postgres_database_with_look_alike_names_upgrades_and_keeps_them(
    postgres_database: str, caplog: pytest.LogCaptureFixture, blockbuster: BlockBuster
) -> None:
    blockbuster.deactivate()  # Alembic reads its scripts to downgrade (test set-up only)
    try:
        await _postgres_at_0005(postgres_database)
    finally:
        blockbuster.activate()
    caplog.set_level(logging.WARNING, logger="filecask.migrations")
    store = SqlMetaStore(postgres_database, ChangeStamps(None))
    await store.open()
    try:
        await _check_upgraded(store)
        async with store.engine.connect() as conn:
            nullable = await conn.scalar(
                sa.text(
                    "SELECT is_nullable FROM information_schema.columns"
                    " WHERE table_name = 'users' AND column_name = 'name_key'"
                )
            )
        assert nullable == "NO"
    finally:
        await store.close()
    _assert_warned(caplog)


async def _postgres_at_0005(url: str) -> None:
    store = SqlMetaStore(url, ChangeStamps(None))
    await store.open()
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic(c), "0005"))
            await conn.execute(sa.text("DELETE FROM users"))
            await conn.run_sync(_fill_at_0005)
            # The ids were given by hand: the next generated one follows them.
            await conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('users', 'id'), 5)"))
    finally:
        await store.close()
