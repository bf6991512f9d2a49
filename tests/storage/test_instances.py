"""Several instances on one PostgreSQL database: what one does, the others see within
`change_poll`; their hash locks exclude one another; sign-in throttling is shared; and the
metadata rules SQLite's single writer gave for free hold under READ COMMITTED.

"Two instances" are two `open_services` / two apps with different data directories (other
machines share nothing local) on the same database. Every test here needs PostgreSQL and is
skipped, with the reason, where it cannot be reached.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.util import await_only

from filecask.app import close_services, create_app, open_services
from filecask.errors import Conflict
from filecask.services import SERVICES, Services
from filecask.settings import Settings
from filecask.storage.changes import ChangeStamps, Topic
from filecask.storage.locks import AdvisoryHashLocks
from filecask.storage.meta import BlobInfo, MissingBlobs, RemoveOutcome, Upload
from filecask.storage.meta.sql import SqlMetaStore
from tests.backends import POSTGRES_ADMIN_URL
from tests.conftest import ADMIN, ADMIN_PASSWORD, CHEAP_ARGON2, AppClient, basic
from tests.storage.sql_rows import sql_store

POLL = 1.0
"""`change_poll` of the instances here: the bound every cross-instance test checks."""
SLACK = 0.5
"""Scheduling noise allowed on top of the bound (a loaded CI machine)."""
FAST = 0.25
"""What "usually far faster" means: a notification, not a poll."""

AiohttpClient = Callable[[web.Application], Awaitable[AppClient]]


def instance_settings(root: Path, name: str, database_url: str, **overrides: Any) -> Settings:
    return Settings(
        data_dir=root / name,
        database_url=database_url,
        admin_password=ADMIN_PASSWORD,
        access_log=False,
        change_poll=POLL,
        **CHEAP_ARGON2,
    ).replace(**overrides)


async def within(check: Callable[[], Awaitable[bool]], limit: float) -> float:
    """Seconds until `check()` first holds; fails the test past `limit`."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            pytest.fail(f"not seen within {limit} s")
        await asyncio.sleep(0.005)


async def admin_sql(statement: str, *args: Any) -> Any:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


def database_name(url: str) -> str:
    return url.rpartition("/")[2]


@pytest.fixture
async def two_apps(
    aiohttp_client: AiohttpClient, tmp_path: Path, postgres_database: str
) -> tuple[AppClient, AppClient]:
    a = await aiohttp_client(create_app(instance_settings(tmp_path, "a", postgres_database)))
    b = await aiohttp_client(create_app(instance_settings(tmp_path, "b", postgres_database)))
    return a, b


async def make_user(client: AppClient, name: str) -> dict[str, str]:
    password = f"{name}-password"
    response = await client.post("/users", json={"name": name, "password": password}, headers=ADMIN)
    assert response.status == 201, await response.text()
    return basic(name, password)


async def status(client: AppClient, headers: dict[str, str]) -> int:
    return (await client.get("/me", headers=headers)).status


# the change feed: caches follow writes made at another instance


@pytest.mark.alone  # times the change feed against its bound
async def test_a_password_changed_at_a_is_refused_at_b_within_change_poll(
    two_apps: tuple[AppClient, AppClient],
) -> None:
    a, b = two_apps
    bob = await make_user(a, "bob")
    assert await status(b, bob) == 200  # now in B's user cache and verified-credentials cache
    services_a = a.app[SERVICES]
    await services_a.meta.set_password("bob", await services_a.auth.hash_password_async("new-pw!!"))

    async def refused() -> bool:
        return await status(b, bob) == 401

    elapsed = await within(refused, POLL + SLACK)
    assert elapsed < FAST, f"{elapsed:.3f} s: the notification should have carried it"
    assert await status(b, basic("bob", "new-pw!!")) == 200


async def test_a_lost_notification_is_bounded_by_the_poll(
    two_apps: tuple[AppClient, AppClient],
) -> None:
    """B stops hearing notifications (its listener gone, as with a notification lost with a
    connection); the poll of the counters still carries the change within the bound."""
    a, b = two_apps
    bob = await make_user(a, "bob")
    assert await status(b, bob) == 200
    feed = sql_store(b.app[SERVICES].meta).feed
    assert feed is not None
    feed.deaf = True
    services_a = a.app[SERVICES]
    await services_a.meta.set_password("bob", await services_a.auth.hash_password_async("new-pw!!"))

    async def refused() -> bool:
        return await status(b, bob) == 401

    await within(refused, POLL + SLACK)


async def test_a_killed_listener_connection_still_leaves_the_bound(
    two_apps: tuple[AppClient, AppClient],
) -> None:
    a, b = two_apps
    bob = await make_user(a, "bob")
    assert await status(b, bob) == 200
    feed = sql_store(b.app[SERVICES].meta).feed
    assert feed is not None
    pid = feed.connection.get_server_pid()
    await admin_sql("SELECT pg_terminate_backend($1)", pid)
    services_a = a.app[SERVICES]
    await services_a.meta.set_password("bob", await services_a.auth.hash_password_async("new-pw!!"))

    async def refused() -> bool:
        return await status(b, bob) == 401

    await within(refused, POLL + SLACK)

    async def reconnected() -> bool:
        return feed.connection is not None and feed.connection.get_server_pid() != pid

    await within(reconnected, POLL + SLACK)


@pytest.mark.alone  # times the change feed against its bound
async def test_a_user_removed_at_a_is_refused_at_b(two_apps: tuple[AppClient, AppClient]) -> None:
    a, b = two_apps
    bob = await make_user(a, "bob")
    assert await status(b, bob) == 200
    assert (await a.delete("/users/bob", headers=ADMIN)).status == 204

    async def refused() -> bool:
        return await status(b, bob) == 401

    assert await within(refused, POLL + SLACK) < FAST


@pytest.mark.alone  # times the change feed against its bound
async def test_blob_cache_and_remembered_misses_follow_the_other_instance(
    two_apps: tuple[AppClient, AppClient],
) -> None:
    a, b = two_apps
    meta_b = b.app[SERVICES].meta
    content = b"shared across instances" * 100
    hex_hash = hashlib.sha256(content).hexdigest()
    assert await meta_b.get_blob(hex_hash) is None  # a miss B remembers

    assert (await a.post("/files", data=content, headers=ADMIN)).status == 201

    async def seen() -> bool:
        return await meta_b.get_blob(hex_hash) is not None

    assert await within(seen, POLL + SLACK) < FAST
    assert (await a.delete(f"/files/{hex_hash}", headers=ADMIN)).status == 204

    async def gone() -> bool:
        return await meta_b.get_blob(hex_hash) is None

    assert await within(gone, POLL + SLACK) < FAST


# shared sign-in throttling


@pytest.mark.alone  # times the change feed against its bound
async def test_failures_at_a_throttle_b_even_for_the_right_password(
    aiohttp_client: AiohttpClient, tmp_path: Path, postgres_database: str
) -> None:
    limits = {"auth_max_failures": 3, "auth_max_delay": 30}
    a = await aiohttp_client(
        create_app(instance_settings(tmp_path, "a", postgres_database, **limits))
    )
    b = await aiohttp_client(
        create_app(instance_settings(tmp_path, "b", postgres_database, **limits))
    )
    bob = await make_user(a, "bob")
    carl = await make_user(a, "carl")
    assert await status(b, bob) == 200  # cached at B: the hot path, no database round trip
    wrong = basic("bob", "wrong-password")
    for _ in range(3):
        assert await status(a, wrong) == 401
    assert await status(a, wrong) == 429

    async def throttled() -> bool:
        return await status(b, bob) == 429

    # The right, cached password is refused at B too: a guesser spreading attempts over
    # the instances learns nothing from B while the name is throttled.
    assert await within(throttled, POLL + SLACK) < FAST
    assert await status(b, wrong) == 429
    assert await status(b, carl) == 429  # another name, same address: throttled by address


async def test_the_hot_path_makes_no_database_round_trip(
    two_apps: tuple[AppClient, AppClient],
) -> None:
    """A signed-in request with a cached password touches neither the pool nor a query.

    A's notices (bob created) may reach B after B cached bob, and rightly empty B's caches:
    a query is excused only when B's change stamps moved while it ran, and then measured
    again."""
    _, b = two_apps
    bob = await make_user(two_apps[0], "bob")
    executed: list[str] = []
    meta = b.app[SERVICES].meta
    engine = sql_store(meta).engine.sync_engine

    def count(*args: Any) -> None:
        executed.append(str(args[2]))

    def stamps() -> tuple[int, ...]:
        return tuple(meta.stamps.read(topic) for topic in Topic)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            assert await status(b, bob) == 200
            executed.clear()
            before = stamps()
            for _ in range(5):
                assert await status(b, bob) == 200
            # /me reads the usage (cached too) and nothing else.
            if not executed:
                return
            assert stamps() != before, executed
    finally:
        event.remove(engine, "before_cursor_execute", count)
    pytest.fail("B's caches were emptied by notices five times running")


# hash locks and the store across instances


async def test_advisory_locks_exclude_across_instances(
    tmp_path: Path, postgres_database: str
) -> None:
    one = await open_services(instance_settings(tmp_path, "a", postgres_database))
    two = await open_services(instance_settings(tmp_path, "b", postgres_database))
    try:
        assert isinstance(one.files.locks, AdvisoryHashLocks)
        key = "cd" + "0" * 62
        async with one.files.locks.hold(key):
            waiter = asyncio.create_task(_enter(two, key))
            await asyncio.wait_for(_enter(two, "ce" + "0" * 62), 2)  # another stripe
            await asyncio.sleep(0.2)
            assert not waiter.done()
        await asyncio.wait_for(waiter, 2)
    finally:
        await close_services(one)
        await close_services(two)


async def _enter(services: Services, key: str) -> None:
    async with services.files.locks.hold(key):
        pass


async def test_concurrent_uploads_and_deletes_through_two_instances_stay_consistent(
    two_apps: tuple[AppClient, AppClient], tmp_path: Path
) -> None:
    """Both instances upload and delete the same contents at once. Their stores are the
    same directory here (standing in for the shared bucket): afterwards the database and
    the store agree and every user holds what their last operation says."""
    a, b = two_apps
    store_a = a.app[SERVICES].settings.store_dir
    # B's blob store is pointed at A's (both disk stores commit by rename in one tree).
    b.app[SERVICES].blobs.store_dir = store_a  # type: ignore[attr-defined]
    users = {"ann": await make_user(a, "ann"), "ben": await make_user(a, "ben")}
    contents = [f"content {i}".encode() * 500 for i in range(3)]
    hashes = [hashlib.sha256(c).hexdigest() for c in contents]

    async def worker(client: AppClient, name: str, seed: int) -> None:
        for step in range(30):
            index = (seed + step * 7) % 3
            if (seed + step) % 3:
                response = await client.post("/files", data=contents[index], headers=users[name])
                assert response.status in (200, 201), await response.text()
            else:
                response = await client.delete(f"/files/{hashes[index]}", headers=users[name])
                assert response.status in (204, 403, 404), await response.text()

    await asyncio.gather(
        worker(a, "ann", 0), worker(b, "ann", 1), worker(a, "ben", 2), worker(b, "ben", 3)
    )
    meta = a.app[SERVICES].meta
    assert await meta.unreferenced_blobs() == []
    on_disk = {p.name for p in store_a.rglob("*") if p.is_file() and len(p.name) == 64}
    assert on_disk == await meta.all_blob_hashes()
    for name in users:
        user = await meta.get_user(name)
        assert user is not None
        held = set(await meta.user_hashes(user.id))
        # Each (user, hash) pair was last set by whichever instance finished last; the
        # database must agree with the store, and every held hash must be stored.
        assert held <= on_disk


# the database going away


async def test_a_database_gone_drops_the_caches_and_recovery_follows(
    two_apps: tuple[AppClient, AppClient], postgres_database: str
) -> None:
    """No stale credentials are served while the database cannot be reached: within the
    bound every cache is dropped, so B answers with an error rather than from memory. When
    it comes back, so does service."""
    a, b = two_apps
    bob = await make_user(a, "bob")
    assert await status(b, bob) == 200
    name = database_name(postgres_database)
    await admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )

        async def refused() -> bool:
            return await status(b, bob) >= 500

        await within(refused, POLL + SLACK)
    finally:
        await admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    async def served() -> bool:
        return await status(b, bob) == 200

    await within(served, 5 * POLL)


# metadata races under READ COMMITTED (two engines, steps interleaved on purpose)


@pytest.fixture
async def two_stores(postgres_database: str) -> AsyncIterator[tuple[SqlMetaStore, SqlMetaStore]]:
    one = SqlMetaStore(postgres_database, ChangeStamps(None), change_poll=POLL)
    two = SqlMetaStore(postgres_database, ChangeStamps(None), change_poll=POLL)
    await one.open()
    await two.open()
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


def pause_after(store: SqlMetaStore, fragment: str) -> tuple[asyncio.Event, asyncio.Event]:
    """The next statement of `store` containing `fragment` pauses, inside its transaction
    and holding its locks, right after it ran, until `resume` is set."""
    reached, resume = asyncio.Event(), asyncio.Event()
    engine = store.engine.sync_engine

    def after(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if fragment in statement and not reached.is_set():
            reached.set()  # once: later statements run on
            await_only(resume.wait())

    event.listen(engine, "after_cursor_execute", after)
    return reached, resume


async def interleave(
    first: Awaitable[Any], pause: tuple[asyncio.Event, asyncio.Event], second: Awaitable[Any]
) -> tuple[Any, Any]:
    """Run `first` up to its pause, then `second` until it ends or waits (0.5 s), then let
    `first` go on; both outcomes (value or exception)."""
    reached, resume = pause
    one = asyncio.ensure_future(first)
    await asyncio.wait_for(reached.wait(), 5)
    two = asyncio.ensure_future(second)
    await asyncio.wait({two}, timeout=0.5)
    resume.set()
    results = await asyncio.gather(one, two, return_exceptions=True)
    return results[0], results[1]


BLOB = BlobInfo("ab" * 32, 10, 0, "text/plain")


async def users_of(store: SqlMetaStore, *names: str) -> list[int]:
    return [(await store.create_user(n, "x", is_admin=False)).id for n in names]


async def assert_invariant(store: SqlMetaStore) -> None:
    """A blob row exists exactly while something references it."""
    assert await store.unreferenced_blobs() == []


async def test_add_ref_racing_the_removal_of_the_last_reference(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    one, two = two_stores
    ann, ben = await users_of(one, "ann", "ben")
    await one.add_ref(ann, BLOB, "a")
    removed, added = await interleave(
        one.remove_ref(ann, BLOB.hash),
        pause_after(one, "FROM bundle_entries"),
        two.add_ref(ben, BLOB, "b"),
    )
    assert not isinstance(removed, BaseException), removed  # was an IntegrityError
    assert not isinstance(added, BaseException), added
    assert await two.holds_ref(ben, hex_hash=BLOB.hash)
    assert BLOB.hash in await two.all_blob_hashes()
    await assert_invariant(two)


async def test_add_bundle_racing_the_removal_of_the_last_reference(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """ann deletes her file while (at another instance) she bundles it: the bundle, which
    may only name what she holds, waits for the delete and finds the reference gone."""
    one, two = two_stores
    (ann,) = await users_of(one, "ann")
    await one.add_ref(ann, BLOB, "a")
    assert await two.unheld_hashes(ann, [BLOB.hash]) == set()  # create_bundle's early check
    removed, bundled = await interleave(
        one.remove_ref(ann, BLOB.hash),
        pause_after(one, "FROM bundle_entries"),
        two.add_bundle(ann, "b1", "bundle", [("a.txt", BLOB.hash)]),
    )
    assert removed is RemoveOutcome.REMOVED_LAST, removed  # was an IntegrityError
    assert isinstance(bundled, MissingBlobs), bundled
    assert await two.get_bundle("b1") is None
    await assert_invariant(two)


async def test_add_bundle_after_a_stale_missing_blobs_check(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """The check made before the transaction is stale by the time of the insert."""
    one, two = two_stores
    (ann,) = await users_of(one, "ann")
    await one.add_ref(ann, BLOB, "a")
    assert await two.missing_blobs([BLOB.hash]) == set()
    await one.remove_ref(ann, BLOB.hash)
    with pytest.raises(MissingBlobs):
        await two.add_bundle(ann, "b1", "bundle", [("a.txt", BLOB.hash)])


async def test_drop_blob_if_unreferenced_racing_a_new_reference(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    one, two = two_stores
    ann, ben = await users_of(one, "ann", "ben")
    await one.add_ref(ann, BLOB, "a")
    await one.add_bundle(ann, "b1", "bundle", [("a.txt", BLOB.hash)])
    await one.remove_ref(ann, BLOB.hash)
    outcome, hashes = await one.release_bundle(ann, "b1")
    assert (outcome, hashes) == (RemoveOutcome.REMOVED_LAST, [BLOB.hash])
    dropped, added = await interleave(
        one.drop_blob_if_unreferenced(BLOB.hash),
        pause_after(one, "FROM bundle_entries"),
        two.add_ref(ben, BLOB, "b"),
    )
    assert not isinstance(dropped, BaseException), dropped  # was an IntegrityError
    assert not isinstance(added, BaseException), added
    assert await two.holds_ref(ben, hex_hash=BLOB.hash)
    await assert_invariant(two)


async def test_two_last_holders_releasing_a_bundle_at_once(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    one, two = two_stores
    ann, ben = await users_of(one, "ann", "ben")
    await one.add_ref(ann, BLOB, "a")
    await one.add_ref(ben, BLOB, "b")  # a bundle may only name one's own files
    await one.add_bundle(ann, "b1", "bundle", [("a.txt", BLOB.hash)])
    await one.add_bundle(ben, "b1", "bundle", [("a.txt", BLOB.hash)])
    first, second = await interleave(
        one.release_bundle(ann, "b1"),
        pause_after(one, "SELECT bundle_holders.id"),
        two.release_bundle(ben, "b1"),
    )
    # Before: both saw the other's hold, and the bundle stayed, held by nobody, forever.
    assert sorted(r[0].value for r in (first, second)) == ["removed", "removed-last"]
    assert await two.get_bundle("b1") is None


async def test_add_bundle_racing_the_release_of_its_last_holder(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    one, two = two_stores
    ann, ben = await users_of(one, "ann", "ben")
    await one.add_ref(ann, BLOB, "a")
    await one.add_ref(ben, BLOB, "b")
    await one.add_bundle(ann, "b1", "bundle", [("a.txt", BLOB.hash)])
    released, held = await interleave(
        one.release_bundle(ann, "b1"),
        pause_after(one, "SELECT bundle_holders.id"),
        two.add_bundle(ben, "b1", "bundle", [("a.txt", BLOB.hash)]),
    )
    assert released == (RemoveOutcome.REMOVED_LAST, [BLOB.hash])
    assert held is True
    # Before: ben was told he held it, and the release then deleted it under him.
    bundle = await two.get_bundle("b1")
    assert bundle is not None
    assert [e.path for e in bundle.entries] == ["a.txt"]
    assert [b.id for b in await two.list_bundles(ben)] == ["b1"]


async def test_two_instances_creating_the_same_bundle(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    one, two = two_stores
    ann, ben = await users_of(one, "ann", "ben")
    await one.add_ref(ann, BLOB, "a")
    await one.add_ref(ben, BLOB, "b")
    first, second = await interleave(
        one.add_bundle(ann, "b1", "bundle", [("a.txt", BLOB.hash)]),
        pause_after(one, "INSERT INTO bundles"),
        two.add_bundle(ben, "b1", "bundle", [("a.txt", BLOB.hash)]),
    )
    assert (first, second) == (True, True)  # the second was an IntegrityError
    bundle = await two.get_bundle("b1")
    assert bundle is not None
    assert len(bundle.entries) == 1


async def test_two_instances_creating_the_same_user(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """Two instances' first starts both bootstrap `admin`: one wins, the other gets
    Conflict (which bootstrap_admin expects), never an IntegrityError."""
    one, two = two_stores
    first, second = await interleave(
        one.create_user("zed", "x", is_admin=True),
        pause_after(one, "INSERT INTO users"),
        two.create_user("zed", "y", is_admin=True),
    )
    assert not isinstance(first, BaseException), first
    assert isinstance(second, Conflict), second
    assert not isinstance(second, IntegrityError)


async def test_advance_upload_is_a_compare_and_set_across_instances(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """No fix needed: one UPDATE ... WHERE offset = old, re-checked by PostgreSQL on the
    row a concurrent UPDATE left. Two PATCHes from the same offset: exactly one wins."""
    one, two = two_stores
    (ann,) = await users_of(one, "ann")
    now = datetime.now(UTC)
    later = now + timedelta(hours=1)
    await one.create_upload(Upload("u1", ann, 100, 0, None, "", now, later))
    first, second = await interleave(
        one.advance_upload("u1", old_offset=0, new_offset=10, expires_at=later),
        pause_after(one, "UPDATE uploads"),
        two.advance_upload("u1", old_offset=0, new_offset=20, expires_at=later),
    )
    assert (first, second) == (True, False)
    upload = await two.get_upload("u1")
    assert upload is not None
    assert upload.offset == 10


class CuttableProxy:
    """A TCP relay in front of PostgreSQL whose connections can all be cut at once: the
    network between an instance and its database failing, with the server still up."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self.writers += [writer, up_writer]
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def test_a_database_out_of_reach_gives_503_problems_not_500s(
    aiohttp_client: Callable[[web.Application], Awaitable[AppClient]],
    postgres_database: str,
    tmp_path: Path,
) -> None:
    proxy = CuttableProxy()
    await proxy.start()
    url = postgres_database.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert url != postgres_database
    client = await aiohttp_client(create_app(instance_settings(tmp_path, "a", url)))
    assert (await client.get("/me", headers=ADMIN)).status == 200
    proxy.cut()
    await asyncio.sleep(0.2)
    requests = [
        client.get("/files/" + "cd" * 32),
        client.put("/files?name=y.txt", data=b"hello", headers=ADMIN),
        client.get("/me", headers=ADMIN),  # cached credentials are not trusted either
    ]
    for pending in requests:
        response = await pending
        assert response.status == 503, await response.text()
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["type"].endswith("/service-unavailable")


async def test_raw_connections_take_the_urls_the_engine_takes(postgres_database: str) -> None:
    """The change feed and the advisory locks connect outside the pool; a URL with the
    engine's own options (usual behind a pooler) must work for them too."""
    from filecask.storage.meta.sql import connect_raw

    conn = await connect_raw(postgres_database + "?prepared_statement_cache_size=0")
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
