"""Per-user quotas in the metadata store: the 0003 migration, `set_quota`, and the check in
`add_ref`'s write transaction (atomic with the insert, across connections and processes)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite

from filecask.errors import BadRequest, NotFound, QuotaExceeded, TooManyBundles, TooManyUploads
from filecask.storage.changes import ChangeStamps
from filecask.storage.meta import QUOTA_MAX, BlobInfo, MissingBlobs, Upload, Usage, parse_quota
from filecask.storage.meta.queries import quota_for_update
from filecask.storage.meta.sql import SqlMetaStore


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
    "given",
    [
        -1,
        True,
        False,
        1.5,
        "lots",
        "",
        "-5G",
        [10],
        {"b": 1},
        QUOTA_MAX + 1,
        "9999999T",
        "\u0661M",  # ARABIC-INDIC DIGIT ONE: was 1 MiB (issue 14)
        "\uff11\uff10G",  # FULLWIDTH 1 0
        "1\u0e50K",  # THAI DIGIT ZERO
        "10\u0131B",  # dotless i: upper() makes it I, so "10IB"
        "10M\u00a0",  # a no-break space
    ],
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


async def test_content_held_by_others_costs_its_size_and_no_bundle_may_name_it(
    store: SqlMetaStore,
) -> None:
    """Issue 14: content stored by another user costs its full size to whoever stores it
    too, and a bundle cannot keep it without holding it (before, bob bundled carol's 80
    bytes for free, keeping them stored past carol's delete)."""
    bob = await new_user(store, "bob", quota=100)
    carol = await new_user(store, "carol")
    shared = blob(b"s" * 80)
    await store.add_ref(carol, shared, "s")
    await store.add_ref(bob, blob(b"a" * 30), "a")
    with pytest.raises(QuotaExceeded) as refused:
        await store.add_ref(bob, shared, "s")
    assert refused.value.extensions == {"quota": 100, "used": 30, "size": 80}
    with pytest.raises(MissingBlobs) as unheld:
        await store.add_bundle(bob, "b" * 64, "x.zip", [("s.bin", shared.hash)])
    assert unheld.value.hashes == {shared.hash}
    assert await store.get_bundle("b" * 64) is None
    assert await store.usage(bob) == Usage(1, 30)


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
    query = quota_for_update(7)
    on_postgresql = postgresql.dialect()  # type: ignore[no-untyped-call]
    assert "FOR UPDATE" in str(query.compile(dialect=on_postgresql))
    assert "FOR UPDATE" not in str(query.compile(dialect=sqlite.dialect()))


# --- issue 14: usage is every distinct blob the user keeps alive, by file or by bundle ----


async def test_a_bundle_keeps_its_content_in_its_holders_usage_after_the_file_goes(
    store: SqlMetaStore,
) -> None:
    bob = await new_user(store, quota=100)
    kept = blob(b"k" * 60)
    await store.add_ref(bob, kept, "k")
    assert await store.add_bundle(bob, "b" * 64, "k.zip", [("k.bin", kept.hash)])
    assert await store.usage(bob) == Usage(1, 60, 1)
    await store.remove_ref(bob, kept.hash)
    # The bundle keeps the 60 bytes stored, so they still count (the loop of the issue:
    # upload, bundle, delete, again, stored 19.6 MiB for a 1 MiB quota).
    assert await store.usage(bob) == Usage(0, 60, 1)
    with pytest.raises(QuotaExceeded) as refused:
        await store.add_ref(bob, blob(b"n" * 41), "n")
    assert refused.value.extensions == {"quota": 100, "used": 60, "size": 41}
    # Uploading the content again costs nothing: it is kept already.
    _, created = await store.add_ref(bob, kept, "again")
    assert created
    assert await store.usage(bob) == Usage(1, 60, 1)
    await store.remove_ref(bob, kept.hash)
    await store.release_bundle(bob, "b" * 64)
    assert await store.usage(bob) == Usage(0, 0, 0)
    _, created = await store.add_ref(bob, blob(b"n" * 41), "n")
    assert created


async def test_content_kept_several_ways_counts_once(store: SqlMetaStore) -> None:
    bob = await new_user(store, quota=100)
    carol = await new_user(store, "carol")
    one, two = blob(b"1" * 30), blob(b"2" * 50)
    for content in (one, two):
        await store.add_ref(bob, content, "x")
        await store.add_ref(carol, content, "x")
    entries = [("1.bin", one.hash), ("2.bin", two.hash)]
    await store.add_bundle(bob, "a" * 64, "a.zip", entries)
    await store.add_bundle(bob, "b" * 64, "b.zip", [("again/1.bin", one.hash), *entries])
    await store.add_bundle(carol, "a" * 64, "a.zip", entries)  # shared holding
    assert await store.usage(bob) == Usage(2, 80, 2)
    listed = {s.name: s.usage for s in await store.list_users()}
    assert listed == {"bob": Usage(2, 80, 2), "carol": Usage(2, 80, 1)}
    await store.remove_ref(bob, one.hash)
    assert await store.usage(bob) == Usage(1, 80, 2)
    assert await store.holds_ref(bob, hex_hash=one.hash)  # kept by a bundle
    assert await store.largest_ref_size(bob) == 50


async def test_the_bundle_count_is_limited_but_holding_one_again_is_not(
    store: SqlMetaStore,
) -> None:
    bob = await new_user(store)
    content = blob(b"c")
    await store.add_ref(bob, content, "c")
    for i in range(3):
        name = f"{i}.zip"
        assert await store.add_bundle(bob, f"{i}" * 64, name, [("c", content.hash)], max_bundles=3)
    assert not await store.add_bundle(bob, "0" * 64, "0.zip", [("c", content.hash)], max_bundles=3)
    with pytest.raises(TooManyBundles) as refused:
        await store.add_bundle(bob, "3" * 64, "3.zip", [("c", content.hash)], max_bundles=3)
    assert (refused.value.status, refused.value.extensions) == (409, {"limit": 3})
    assert await store.get_bundle("3" * 64) is None


def upload_of(user_id: int, length: int, *, expires_in: float = 3600) -> Upload:
    now = datetime.now(UTC)
    return Upload(
        secrets.token_hex(16),
        user_id,
        length,
        0,
        None,
        "",
        now,
        now + timedelta(seconds=expires_in),
    )


async def test_open_uploads_reserve_their_length_together(store: SqlMetaStore) -> None:
    """Issue 14: 30 uploads of 1 MiB each were each checked alone against a 1 MiB quota."""
    bob = await new_user(store, quota=100)
    await store.add_ref(bob, blob(b"u" * 20), "u")
    first = upload_of(bob, 50)
    await store.create_upload(first)
    assert await store.open_uploads(bob) == (1, 50)
    with pytest.raises(QuotaExceeded) as refused:
        await store.create_upload(upload_of(bob, 31))
    assert refused.value.extensions == {"quota": 100, "used": 20, "size": 31, "reserved": 50}
    assert "50 bytes reserved by unfinished uploads" in refused.value.detail
    await store.create_upload(upload_of(bob, 30))  # 20 + 50 + 30: exactly the quota
    # A plain upload counts the reservations too...
    with pytest.raises(QuotaExceeded):
        await store.add_ref(bob, blob(b"p"), "p")
    # ...and the upload that completes does not count its own.
    _, created = await store.add_ref(bob, blob(b"f" * 50), "f", upload_id=first.id)
    assert created
    await store.finish_upload(first.id, blob(b"f" * 50).hash)
    assert await store.open_uploads(bob) == (1, 30)
    assert await store.delete_upload(first.id)


async def test_expired_or_complete_uploads_reserve_nothing(store: SqlMetaStore) -> None:
    bob = await new_user(store, quota=100)
    await store.create_upload(upload_of(bob, 100, expires_in=-1))  # expired, not yet swept
    done = upload_of(bob, 100)
    await store.create_upload(done)
    await store.finish_upload(done.id, "d" * 64)
    assert await store.open_uploads(bob) == (0, 0)
    await store.create_upload(upload_of(bob, 100))


async def test_open_uploads_are_capped_per_user(store: SqlMetaStore) -> None:
    bob = await new_user(store)
    carol = await new_user(store, "carol")
    for _ in range(2):
        await store.create_upload(upload_of(bob, 10, expires_in=90), max_open=2)
    with pytest.raises(TooManyUploads) as refused:
        await store.create_upload(upload_of(bob, 10), max_open=2)
    error = refused.value
    assert (error.status, error.extensions["limit"]) == (429, 2)
    assert 1 <= int(error.headers["Retry-After"]) <= 90  # until the soonest expires
    await store.create_upload(upload_of(carol, 10), max_open=2)  # per user


async def test_removing_a_user_names_their_uploads(store: SqlMetaStore) -> None:
    bob = await new_user(store)
    made = [upload_of(bob, 10), upload_of(bob, 20)]
    for upload in made:
        await store.create_upload(upload)
    assert (await store.delete_user("bob")).upload_ids == sorted(u.id for u in made)
    assert [await store.get_upload(u.id) for u in made] == [None, None]
    with pytest.raises(NotFound):
        await store.create_upload(upload_of(bob, 1))


async def test_removing_a_user_takes_everything_they_kept_in_one_step(store: SqlMetaStore) -> None:
    """References, holds and the bundles nobody else holds go with the user; the blob
    rows stay for the caller (named, to drop under their locks), a bundle someone else
    holds stays."""
    bob, carol = await new_user(store), await new_user(store, "carol")
    for content in (b"a", b"b", b"shared"):
        await store.add_ref(bob, blob(content), content.decode())
    await store.add_ref(carol, blob(b"shared"), "shared")
    await store.add_bundle(bob, "only-bob", "x.zip", [("a", blob(b"a").hash)])
    await store.add_bundle(bob, "both", "y.zip", [("s", blob(b"shared").hash)])
    await store.add_bundle(carol, "both", "y.zip", [("s", blob(b"shared").hash)])
    removed = await store.delete_user("bob")
    assert removed.refs == 3
    assert removed.hashes == sorted(blob(c).hash for c in (b"a", b"b", b"shared"))
    assert await store.get_bundle("only-bob") is None
    assert await store.get_bundle("both") is not None
    assert await store.holderless_bundles() == []
    assert sorted(await store.unreferenced_blobs()) == sorted(blob(c).hash for c in (b"a", b"b"))


async def test_an_expired_upload_never_advances(store: SqlMetaStore) -> None:
    """A PATCH still writing when its upload expired revived it (and its reservation)."""
    bob = await new_user(store)
    gone = upload_of(bob, 100, expires_in=-1)
    await store.create_upload(gone)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert not await store.advance_upload(gone.id, old_offset=0, new_offset=10, expires_at=later)
    assert (await store.get_upload(gone.id)).offset == 0  # type: ignore[union-attr]
    live = upload_of(bob, 100)
    await store.create_upload(live)
    assert await store.advance_upload(live.id, old_offset=0, new_offset=10, expires_at=later)


# --- the same rules under concurrency, on SQLite and on PostgreSQL ------------------------


@pytest.fixture(params=["sqlite", "pg"])
def racing_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """(A sync fixture: the PostgreSQL one runs its own event loop.)"""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'filecask.db'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture
async def racing_stores(
    racing_url: str, tmp_path: Path
) -> AsyncIterator[tuple[SqlMetaStore, SqlMetaStore]]:
    """Two stores on one database, each with its own connections: two processes (SQLite,
    one file and one stamps file) or two instances (PostgreSQL, READ COMMITTED: the row
    locks must hold)."""
    shared = racing_url.startswith("sqlite")
    stores = []
    for _ in range(2):
        changes = ChangeStamps(tmp_path / "changes" if shared else None)
        await changes.open()
        store = SqlMetaStore(racing_url, changes)
        await store.open()
        stores.append(store)
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await close_store(store)


async def outcomes(calls: list[Any], *refusals: type[Exception]) -> list[bool]:
    """Run the calls at once: which succeeded (the others must fail with `refusals`)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, refusals):
            raise result
    return [not isinstance(r, BaseException) for r in results]


async def test_racing_references_and_reservations_never_pass_the_quota(
    racing_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """Plain uploads and resumable creations by one user, at once, from two connections:
    each fits alone, together at most the quota does."""
    here, there = racing_stores
    bob = await new_user(here, quota=100)
    calls: list[Any] = []
    for i in range(12):
        store = here if i % 2 else there
        if i % 3:
            calls.append(store.add_ref(bob, blob(bytes([i]) * 20), f"f{i}"))
        else:
            calls.append(store.create_upload(upload_of(bob, 20)))
    won = await outcomes(calls, QuotaExceeded)
    assert sum(won) == 5
    usage = await here.usage(bob)
    _, reserved = await here.open_uploads(bob)
    assert usage.bytes + reserved == 100


async def test_racing_resumable_creations_respect_the_cap(
    racing_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    here, there = racing_stores
    bob = await new_user(here)
    calls = [(here, there)[i % 2].create_upload(upload_of(bob, 1), max_open=4) for i in range(10)]
    assert sum(await outcomes(calls, TooManyUploads)) == 4
    assert await there.open_uploads(bob) == (4, 4)


async def test_racing_bundles_respect_the_count(
    racing_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    here, there = racing_stores
    bob = await new_user(here)
    content = blob(b"c")
    await here.add_ref(bob, content, "c")
    calls = [
        (here, there)[i % 2].add_bundle(
            bob, f"{i:x}" * 64, "x.zip", [("c", content.hash)], max_bundles=3
        )
        for i in range(8)
    ]
    assert sum(await outcomes(calls, TooManyBundles)) == 3
    assert (await there.usage(bob)).bundles == 3


async def test_a_bundle_racing_the_delete_of_its_file(
    racing_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """Bundling a file while deleting it, from two connections, many times: either the
    bundle is refused (the reference was gone) or the bundle keeps the blob and the usage
    still counts it; never a bundle naming a blob that left, nor a kept blob uncounted."""
    here, there = racing_stores
    bob = await new_user(here, quota=1000)
    for i in range(10):
        content = blob(bytes([i]) * 10)
        await here.add_ref(bob, content, "f")
        bundle_id = f"{i:x}" * 64
        bundled, removed = await asyncio.gather(
            there.add_bundle(bob, bundle_id, "b.zip", [("f", content.hash)]),
            here.remove_ref(bob, content.hash),
            return_exceptions=True,
        )
        assert not isinstance(removed, BaseException), removed
        if isinstance(bundled, MissingBlobs):
            assert content.hash not in await here.all_blob_hashes()
        else:
            assert bundled is True, bundled
            assert await here.get_blob(content.hash) is not None
            assert (await here.usage(bob)).bytes == 10
            await here.release_bundle(bob, bundle_id)
            await here.drop_blob_if_unreferenced(content.hash)
        assert await here.unreferenced_blobs() == []
