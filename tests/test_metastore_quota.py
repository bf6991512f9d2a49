"""Per-user quotas in the metadata store: the 0003 migration, `set_quota`, and the check in
`add_ref`'s write transaction (atomic with the insert, across connections and processes)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite

from filecask.changes import ChangeStamps
from filecask.errors import BadRequest, NotFound, QuotaExceeded
from filecask.metastore import QUOTA_MAX, BlobInfo, Usage, parse_quota
from filecask.metastore.sql import SqlMetaStore, _quota_for_update


def blob(content: bytes) -> BlobInfo:
    return BlobInfo(hashlib.sha256(content).hexdigest(), len(content), 0, "application/x-test")


async def open_store(db: Path, stamps_path: Path | None) -> SqlMetaStore:
    stamps = ChangeStamps(stamps_path)
    await stamps.open()
    store = SqlMetaStore(f"sqlite:///{db}", stamps)
    await store.open()
    return store


async def close_store(store: SqlMetaStore) -> None:
    await store.close()
    await store.stamps.close()


@pytest.fixture
async def two_stores(tmp_path: Path) -> AsyncIterator[tuple[SqlMetaStore, SqlMetaStore]]:
    """Two stores on one SQLite file and one stamps file, each with its own engine
    (connections) and caches: what two workers, or a worker and the CLI, are."""
    db, stamps = tmp_path / "filecask.db", tmp_path / "changes"
    first = await open_store(db, stamps)
    second = await open_store(db, stamps)
    try:
        yield first, second
    finally:
        await close_store(first)
        await close_store(second)


@pytest.fixture
async def store(two_stores: tuple[SqlMetaStore, SqlMetaStore]) -> SqlMetaStore:
    return two_stores[0]


async def new_user(store: SqlMetaStore, name: str = "bob", quota: int | None = None) -> int:
    return (await store.create_user(name, "hash", is_admin=False, quota=quota)).id


# --- parse_quota --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        (0, 0),
        (1234, 1234),
        ("10G", 10 << 30),
        ("512M", 512 << 20),
        ("1.5K", 1536),
        ("2GiB", 2 << 30),
        (QUOTA_MAX, QUOTA_MAX),
    ],
)
def test_parse_quota_accepts(given: object, expected: int | None) -> None:
    assert parse_quota(given) == expected


@pytest.mark.parametrize(
    "given", [-1, True, False, 1.5, "lots", "", "-5G", [10], {"b": 1}, QUOTA_MAX + 1, "9999999T"]
)
def test_parse_quota_refuses(given: object) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_quota(given)
    assert refused.value.extensions == {"field": "quota"}


# --- the migration ------------------------------------------------------------------------


def _alembic(conn: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("filecask") / "migrations"))
    config.attributes["connection"] = conn
    return config


def test_a_database_at_0002_upgrades_and_keeps_its_users_and_files(tmp_path: Path) -> None:
    db = tmp_path / "filecask.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    content = b"kept across the upgrade"
    digest = hashlib.sha256(content).hexdigest()
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0002")
        assert "quota" not in {c["name"] for c in sa.inspect(conn).get_columns("users")}
        conn.execute(
            sa.text(
                "INSERT INTO users (id, name, password_hash, is_admin, created_at)"
                " VALUES (1, 'admin', 'h1', 1, :now), (2, 'bob', 'h2', 0, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO blobs (hash, size, crc32, content_type, created_at)"
                " VALUES (:h, :size, 7, 'text/plain', :now)"
            ),
            {"h": digest, "size": len(content), "now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO refs (user_id, hash, name, created_at) VALUES (2, :h, 'a.txt', :now)"
            ),
            {"h": digest, "now": now},
        )
    engine.dispose()

    async def check() -> None:
        store = await open_store(db, None)  # open() brings the schema to head
        try:
            bob = await store.get_user("bob")
            assert bob is not None
            assert (bob.id, bob.password_hash, bob.is_admin, bob.quota) == (2, "h2", False, None)
            admin = await store.get_user("admin")
            assert admin is not None
            assert admin.is_admin
            assert await store.usage(bob.id) == Usage(1, len(content))
            (record,) = await store.list_refs(bob.id, limit=10, before_id=None)
            assert (record.hash, record.name, record.size) == (digest, "a.txt", len(content))
            listed = {s.name: (s.usage, s.quota) for s in await store.list_users()}
            assert listed == {"admin": (Usage(0, 0), None), "bob": (Usage(1, len(content)), None)}
            # The new column works on the upgraded database.
            await store.set_quota("bob", 100)
            assert (await store.get_user("bob")) == bob.__class__(
                2, "bob", "h2", False, bob.created_at, 100
            )
        finally:
            await close_store(store)

    asyncio.run(check())

    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        newest = ScriptDirectory.from_config(_alembic(conn)).get_current_head()
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == newest
        # And it downgrades again without losing the rows.
        command.downgrade(_alembic(conn), "0002")
        assert "quota" not in {c["name"] for c in sa.inspect(conn).get_columns("users")}
        assert conn.scalar(sa.text("SELECT count(*) FROM users")) == 2
        assert conn.scalar(sa.text("SELECT count(*) FROM refs")) == 1
    engine.dispose()


# --- set_quota ----------------------------------------------------------------------------


async def test_set_quota_of_an_unknown_user_is_not_found(store: SqlMetaStore) -> None:
    with pytest.raises(NotFound):
        await store.set_quota("ghost", 10)


async def test_create_user_with_a_quota(store: SqlMetaStore) -> None:
    await new_user(store, "bob", quota=1000)
    await new_user(store, "carol")
    bob, carol = await store.get_user("bob"), await store.get_user("carol")
    assert bob is not None
    assert carol is not None
    assert (bob.quota, carol.quota) == (1000, None)
    assert {s.name: s.quota for s in await store.list_users()} == {"bob": 1000, "carol": None}


async def test_a_quota_set_by_another_process_is_seen_at_once(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """set_quota moves the USERS stamp: the other store's cached user is dropped."""
    here, there = two_stores
    await new_user(here, "bob")
    for _ in range(2):  # the second read is answered from the cache
        cached = await here.get_user("bob")
        assert cached is not None
        assert cached.quota is None
    await there.set_quota("bob", 5 << 20)
    fresh = await here.get_user("bob")
    assert fresh is not None
    assert fresh.quota == 5 << 20
    await there.set_quota("bob", None)
    cleared = await here.get_user("bob")
    assert cleared is not None
    assert cleared.quota is None


# --- add_ref under a quota ----------------------------------------------------------------


async def test_a_new_reference_past_the_quota_is_refused_and_changes_nothing(
    store: SqlMetaStore,
) -> None:
    bob = await new_user(store, quota=100)
    await store.add_ref(bob, blob(b"a" * 60), "a")
    too_big = blob(b"b" * 41)
    with pytest.raises(QuotaExceeded) as refused:
        await store.add_ref(bob, too_big, "b")
    error = refused.value
    assert (error.status, error.slug) == (413, "quota-exceeded")
    assert error.extensions == {"quota": 100, "used": 60, "size": 41}
    assert error.detail == (
        "The upload of 41 bytes would exceed your quota of 100 bytes (60 bytes used)."
    )
    # The transaction rolled back: neither the blob row nor the reference exist.
    assert await store.get_blob(too_big.hash) is None
    assert too_big.hash not in await store.all_blob_hashes()
    assert await store.usage(bob) == Usage(1, 60)


async def test_exactly_at_the_quota_is_accepted(store: SqlMetaStore) -> None:
    bob = await new_user(store, quota=100)
    await store.add_ref(bob, blob(b"a" * 60), "a")
    _, created = await store.add_ref(bob, blob(b"b" * 40), "b")
    assert created
    assert await store.usage(bob) == Usage(2, 100)
    with pytest.raises(QuotaExceeded):
        await store.add_ref(bob, blob(b"c"), "one byte more")
    _, created = await store.add_ref(bob, blob(b""), "empty")  # costs 0: still fits
    assert created


async def test_a_reference_already_held_costs_nothing_even_at_the_quota(
    store: SqlMetaStore,
) -> None:
    bob = await new_user(store, quota=100)
    held = blob(b"a" * 100)
    await store.add_ref(bob, held, "a")
    record, created = await store.add_ref(bob, held, "again")
    assert not created
    assert record.name == "a"
    # Even when the quota was lowered below what is stored.
    await store.set_quota("bob", 10)
    _, created = await store.add_ref(bob, held, "again")
    assert not created
    with pytest.raises(QuotaExceeded):
        await store.add_ref(bob, blob(b""), "empty")  # 100 + 0 > 10: over already
    assert await store.usage(bob) == Usage(1, 100)


async def test_content_held_by_others_or_by_bundles_still_costs_its_size(
    store: SqlMetaStore,
) -> None:
    """The quota counts the user's own references, exactly as `usage` does: content stored
    by another user costs them its full size, and bundles they hold cost nothing."""
    bob = await new_user(store, "bob", quota=100)
    carol = await new_user(store, "carol")
    shared = blob(b"s" * 80)
    await store.add_ref(carol, shared, "s")
    await store.add_ref(bob, blob(b"a" * 30), "a")
    with pytest.raises(QuotaExceeded) as refused:
        await store.add_ref(bob, shared, "s")
    assert refused.value.extensions == {"quota": 100, "used": 30, "size": 80}
    # A bundle naming carol's 80 bytes does not count against bob.
    assert await store.add_bundle(bob, "b" * 64, "x.zip", [("s.bin", shared.hash)])
    _, created = await store.add_ref(bob, blob(b"c" * 70), "c")
    assert created
    assert await store.usage(bob) == Usage(2, 100)


async def test_a_user_without_a_quota_is_not_limited(store: SqlMetaStore) -> None:
    bob = await new_user(store)
    await store.add_ref(bob, BlobInfo("f" * 64, QUOTA_MAX // 2, 0, "x/y"), "huge")
    _, created = await store.add_ref(bob, blob(b"more"), "more")
    assert created


async def test_space_freed_by_a_removal_can_be_used_again(store: SqlMetaStore) -> None:
    bob = await new_user(store, quota=100)
    first = blob(b"a" * 70)
    await store.add_ref(bob, first, "a")
    with pytest.raises(QuotaExceeded):
        await store.add_ref(bob, blob(b"b" * 70), "b")
    await store.remove_ref(bob, first.hash)
    _, created = await store.add_ref(bob, blob(b"b" * 70), "b")
    assert created


async def test_concurrent_references_that_together_exceed_the_quota(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """Ten references of 10 bytes each, at once, from two stores with their own connections
    (as two processes are), under a quota of 55: each fits alone, exactly five fit together.
    A check made outside the inserting transaction, or from a cache, would let more in."""
    here, there = two_stores
    bob = await new_user(here, quota=55)
    contents = [bytes([i]) * 10 for i in range(10)]

    async def add(i: int) -> bool:
        try:
            await (here if i % 2 else there).add_ref(bob, blob(contents[i]), f"f{i}")
        except QuotaExceeded:
            return False
        return True

    outcomes = await asyncio.gather(*(add(i) for i in range(10)))
    assert sum(outcomes) == 5
    assert await here.usage(bob) == Usage(5, 50)
    assert await there.usage(bob) == Usage(5, 50)
    stored = set(await here.user_hashes(bob))
    assert stored == {blob(contents[i]).hash for i in range(10) if outcomes[i]}
    assert await here.all_blob_hashes() == stored


def test_the_quota_check_locks_the_users_row_where_the_dialect_can() -> None:
    """On PostgreSQL, concurrent uploads by one user queue on their row (FOR UPDATE); SQLite
    has no such clause (BEGIN IMMEDIATE already admits one writer at a time)."""
    query = _quota_for_update(7)
    on_postgresql = postgresql.dialect()  # type: ignore[no-untyped-call]
    assert "FOR UPDATE" in str(query.compile(dialect=on_postgresql))
    assert "FOR UPDATE" not in str(query.compile(dialect=sqlite.dialect()))
