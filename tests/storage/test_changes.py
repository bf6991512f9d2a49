"""The change stamps, the caches that follow them, and the PostgreSQL change feed that
carries them between instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from filecask.errors import Conflict
from filecask.storage.changes import ChangeStamps, StampedCache, Topic
from filecask.storage.meta.schema import change_counters
from filecask.storage.meta.sql import SqlMetaStore
from tests.backends import POSTGRES_ADMIN_URL

POLL = 0.5


async def test_stamps_are_shared_through_the_file(tmp_path: Path) -> None:
    one, two = ChangeStamps(tmp_path / "changes"), ChangeStamps(tmp_path / "changes")
    await one.open()
    await two.open()
    try:
        before = {topic: two.read(topic) for topic in Topic}
        one.bump(Topic.BLOBS)
        assert two.read(Topic.BLOBS) != before[Topic.BLOBS]
        assert two.read(Topic.USERS) == before[Topic.USERS]
        assert two.read(Topic.REFS) == before[Topic.REFS]
    finally:
        await one.close()
        await two.close()


async def test_stamps_survive_reopening(tmp_path: Path) -> None:
    stamps = ChangeStamps(tmp_path / "changes")
    await stamps.open()
    stamps.bump(Topic.USERS)
    value = stamps.read(Topic.USERS)
    await stamps.close()
    await stamps.open()
    assert stamps.read(Topic.USERS) == value
    await stamps.close()


def test_a_bump_empties_the_cache() -> None:
    stamps = ChangeStamps(None)
    cache: StampedCache[str, int] = StampedCache(stamps, Topic.BLOBS, max_items=10)
    _, stamp = cache.get("a")
    cache.put("a", 1, stamp)
    assert cache.get("a")[0] == 1
    stamps.bump(Topic.USERS)  # another topic: no effect
    assert cache.get("a")[0] == 1
    stamps.bump(Topic.BLOBS)
    assert cache.get("a")[0] is None
    assert len(cache) == 0


def test_a_value_read_before_a_write_is_not_kept() -> None:
    stamps = ChangeStamps(None)
    cache: StampedCache[str, int] = StampedCache(stamps, Topic.USERS, max_items=10)
    _, stamp = cache.get("a")
    stamps.bump(Topic.USERS)  # a write lands while "a" is being read
    cache.put("a", 1, stamp)
    assert cache.get("a")[0] is None
    # Also when another lookup saw the new stamp first.
    _, old = cache.get("b")
    stamps.bump(Topic.USERS)
    _, new = cache.get("c")
    cache.put("b", 2, old)
    assert cache.get("b")[0] is None
    cache.put("c", 3, new)
    assert cache.get("c")[0] == 3


def test_bounded_by_items_and_by_cost_least_recently_used_first() -> None:
    stamps = ChangeStamps(None)
    cache: StampedCache[str, bytes] = StampedCache(stamps, Topic.BLOBS, max_items=3, max_cost=10)
    stamp = cache.get("x")[1]
    for key in "abc":
        cache.put(key, key.encode(), stamp, cost=1)
    cache.get("a")  # a is now the most recently used
    cache.put("d", b"d", stamp, cost=1)
    assert [k for k in "abcd" if cache.get(k)[0] is not None] == ["a", "c", "d"]
    cache.put("big", b"x" * 9, stamp, cost=9)
    assert cache.get("big")[0] is not None
    assert sum(cache.get(k)[0] is not None for k in "acd") == 1
    cache.put("huge", b"x" * 11, stamp, cost=11)  # larger than the whole budget
    assert cache.get("huge")[0] is None
    assert cache.get("big")[0] is not None


@given(
    st.lists(st.tuples(st.sampled_from(["get", "put", "write"]), st.integers(0, 3)), max_size=60)
)
def test_never_serves_a_value_older_than_the_last_write(ops: list[tuple[str, int]]) -> None:
    """A model: `truth` is the database, versions go up with every write. Reads may come
    from the cache but must equal the truth as of now."""
    stamps = ChangeStamps(None)
    cache: StampedCache[int, int] = StampedCache(stamps, Topic.REFS, max_items=2)
    truth = dict.fromkeys(range(4), 0)
    pending: list[tuple[int, int, int]] = []  # reads in flight: key, value read, stamp
    for op, key in ops:
        if op == "write":
            truth[key] += 1
            stamps.bump(Topic.REFS)
        elif op == "get":
            value, stamp = cache.get(key)
            if value is not None:
                assert value == truth[key]
            else:
                pending.append((key, truth[key], stamp))
        elif pending:
            cache.put(*pending.pop(0))


# the PostgreSQL change feed (several instances on one database)


@pytest.fixture
async def two_stores(postgres_database: str) -> AsyncIterator[tuple[SqlMetaStore, SqlMetaStore]]:
    """Two metadata stores with stamps of their own: two machines."""
    one = SqlMetaStore(postgres_database, ChangeStamps(None), change_poll=POLL)
    two = SqlMetaStore(postgres_database, ChangeStamps(None), change_poll=POLL)
    await one.open()
    await two.open()
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


async def _moved(stamps: ChangeStamps, topic: Topic, before: int, limit: float) -> float:
    started = time.monotonic()
    while stamps.read(topic) == before:
        if time.monotonic() - started > limit:
            pytest.fail(f"{topic.name} did not move within {limit} s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def test_a_write_moves_the_other_instances_stamps(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    one, two = two_stores
    before = {topic: two.stamps.read(topic) for topic in Topic}
    await one.create_user("bob", "x", is_admin=False)
    assert await _moved(two.stamps, Topic.USERS, before[Topic.USERS], POLL + 0.5) < 0.25
    assert two.stamps.read(Topic.REFS) == before[Topic.REFS]
    assert two.stamps.read(Topic.BLOBS) == before[Topic.BLOBS]


async def test_a_failed_write_notifies_nothing(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    """The counters move in the writer's transaction: a rolled-back write leaves them."""
    one, _ = two_stores
    await one.create_user("bob", "x", is_admin=False)
    async with one.engine.connect() as conn:
        counters: dict[int, int] = dict((await conn.execute(sa.select(change_counters))).all())
    with pytest.raises(Conflict):
        await one.create_user("bob", "y", is_admin=False)
    async with one.engine.connect() as conn:
        assert dict((await conn.execute(sa.select(change_counters))).all()) == counters


async def test_the_poll_catches_what_notifications_missed(
    two_stores: tuple[SqlMetaStore, SqlMetaStore],
) -> None:
    one, two = two_stores
    assert two.feed is not None
    two.feed.deaf = True
    before = two.stamps.read(Topic.USERS)
    await one.create_user("bob", "x", is_admin=False)
    await _moved(two.stamps, Topic.USERS, before, POLL + 0.5)


async def test_an_unreachable_database_moves_every_stamp_until_it_is_back(
    two_stores: tuple[SqlMetaStore, SqlMetaStore], postgres_database: str
) -> None:
    _, two = two_stores
    assert two.feed is not None
    name = postgres_database.rpartition("/")[2]
    before = {topic: two.stamps.read(topic) for topic in Topic}
    await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await _admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        for topic in Topic:
            await _moved(two.stamps, topic, before[topic], POLL + 0.5)
    finally:
        await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    polls = two.feed.polls
    deadline = time.monotonic() + 5 * POLL
    while two.feed.polls == polls:
        assert time.monotonic() < deadline, "the feed did not recover"
        await asyncio.sleep(0.01)


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
