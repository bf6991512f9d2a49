"""Change stamps shared by every process on one data directory, a change feed that carries
them between machines, and the caches they keep honest.

The hot read paths (who is signing in, does this blob exist and what type is it, how much
does this user store) would otherwise cost a database round trip per request: through
aiosqlite that is a thread hop, several times the cost of the rest of a small request.
Their answers change rarely, so each process caches them, and every write that could change
an answer moves a stamp for its topic *after* it commits and *before* it answers its client.
A cache empties itself as soon as it sees its topic's stamp move, and it only keeps what was
read under the stamp it still holds, so on one machine it can never serve an answer older
than the last completed write, whichever process (a worker, the CLI) made it.

The stamps live in a small memory-mapped file in the data directory: reading one is a memory
load, not a system call. A write stores a fresh random value rather than incrementing, so two
writers racing can never leave the stamp at a value some reader has already seen.

Several instances (machines) on one PostgreSQL database share no data directory, so the
stamps stay local and `PostgresChangeFeed` moves them for writes made elsewhere. Every write
transaction that changes a topic also increments the topic's row in `change_counters` and
`pg_notify`s the channel `filecask_changes` with the topics and their new counters, inside
the transaction: the notification is delivered only if, and once, the write commits. Each
process keeps one dedicated connection LISTENing and bumps the local stamps of the topics
it is told about (usually within milliseconds), and also reads the counters every
`change_poll / 2` seconds with a timeout of `change_poll / 2`, as a safety net for what
notifications cannot promise (a notification lost with a dropped connection, a reconnect).
A poll that fails bumps every topic: no cache outlives the moment the process stopped being
able to tell whether it is still right.

The bound: a change committed at another instance is seen here (its caches dropped) within
`change_poll` seconds, as long as the database answers a poll within `change_poll / 2`; if
it does not, every cache is dropped by then instead. Reads never wait for the feed: a cached
read remains a memory load.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import mmap
import os
import secrets
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_STAMP = struct.Struct("<Q")
log = logging.getLogger("filecask.changes")

CHANNEL = "filecask_changes"
"""The PostgreSQL notification channel of the change feed; the payload is
`topic:counter,topic:counter` (see `SqlMetaStore._write`)."""


class Topic(enum.IntEnum):
    USERS = 0
    """A user was created, removed, or had their password or role changed."""
    REFS = 1
    """A reference, bundle or unfinished upload was added or dropped (usage figures changed)."""
    BLOBS = 2
    """A blob left the store (its row is gone; its bytes are about to go)."""
    NEW_BLOBS = 3
    """A blob was stored that was not there before (remembered misses are stale)."""
    AUTH = 4
    """A sign-in key became throttled, or a throttled one was reset (PostgreSQL only: the
    shared failure table changed; see `filecask.auth`)."""


_SIZE = len(Topic) * _STAMP.size


class ChangeStamps:
    """One 64-bit stamp per topic, shared through `path` (or private to this process when
    `path` is None, for stores nothing else opens)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._map: mmap.mmap | bytearray = bytearray(_SIZE)

    async def open(self) -> None:
        if self._path is not None:
            self._map = await asyncio.get_running_loop().run_in_executor(None, self._open_map)

    def _open_map(self) -> mmap.mmap:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)
            return mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)  # the mapping keeps the file

    async def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._map = bytearray(_SIZE)

    def read(self, topic: Topic) -> int:
        value: int = _STAMP.unpack_from(self._map, topic * _STAMP.size)[0]
        return value

    def bump(self, *topics: Topic) -> None:
        for topic in topics:
            _STAMP.pack_into(self._map, topic * _STAMP.size, secrets.randbits(64))


class StampedCache(Generic[K, V]):
    """A bounded LRU map that forgets everything when its topic's stamp moves.

    Use: `value, stamp = cache.get(key)`; on a miss, read the truth, then
    `cache.put(key, value, stamp)`: the value is kept only if no write happened since
    `stamp` was read, so a read that raced a write is never cached.
    """

    def __init__(
        self, stamps: ChangeStamps, topic: Topic, *, max_items: int, max_cost: int = 0
    ) -> None:
        self._stamps = stamps
        self._topic = topic
        self._max_items = max_items
        self._max_cost = max_cost
        self._cost = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._stamp = stamps.read(topic)

    def get(self, key: K) -> tuple[V | None, int]:
        stamp = self._stamps.read(self._topic)
        if stamp != self._stamp:
            self.clear()
            self._stamp = stamp
            return None, stamp
        entry = self._items.get(key)
        if entry is None:
            return None, stamp
        self._items.move_to_end(key)
        return entry[0], stamp

    async def fetch(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value, else what `load()` reads (kept unless a write raced it);
        None means "no such thing" and is not kept."""
        value, stamp = self.get(key)
        if value is None:
            value = await load()
            if value is not None:
                self.put(key, value, stamp)
        return value

    def put(self, key: K, value: V, stamp: int, cost: int = 0) -> None:
        if stamp != self._stamp or stamp != self._stamps.read(self._topic):
            return
        if self._max_cost and cost > self._max_cost:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._cost -= old[1]
        self._items[key] = (value, cost)
        self._cost += cost
        while len(self._items) > self._max_items or (
            self._max_cost and self._cost > self._max_cost
        ):
            self._cost -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._items.clear()
        self._cost = 0

    def __len__(self) -> int:
        return len(self._items)


Connect = Callable[[], Awaitable[Any]]
"""Opens a dedicated asyncpg connection (outside any pool)."""


class PostgresChangeFeed:
    """Moves the local stamps for writes committed by other instances (see the module
    docstring): LISTEN for the fast path, a poll of the counters as the bound."""

    def __init__(self, stamps: ChangeStamps, connect: Connect, *, poll: float) -> None:
        self._stamps = stamps
        self._connect = connect
        self._interval = max(poll / 2, 0.005)
        self._known: dict[int, int] = {}
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failing = False
        self.polls = 0
        """Successful polls so far (tests wait on it)."""
        self.notifications = 0
        self.deaf = False
        """Ignore notifications (tests: the poll alone must keep the bound)."""

    async def start(self) -> None:
        """Connect and take the first reading before returning, so that once the store is
        open every later change is seen; then keep going in the background."""
        await self._poll()
        self._task = asyncio.create_task(self._run(), name="filecask-change-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_connection()

    @property
    def connection(self) -> Any:
        """The listening connection (tests terminate it to simulate a lost one)."""
        return self._conn

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._poll()
            except Exception as exc:  # any failure: nothing cached may be trusted any more
                self._stamps.bump(*Topic)
                await self._drop_connection()
                if not self._failing:
                    log.warning("change feed: cannot reach the database (%s); caches off", exc)
                self._failing = True
            else:
                if self._failing:
                    log.warning("change feed: the database is back")
                self._failing = False
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, started + self._interval - loop.time())):
                    await self._wake.wait()

    async def _poll(self) -> None:
        if self._conn is None or self._conn.is_closed():
            await self._open_connection()
        rows = await self._conn.fetch(
            "SELECT topic, counter FROM change_counters", timeout=self._interval
        )
        first = not self._known and not self.polls
        for topic, counter in rows:
            if self._known.get(topic) != counter:
                self._known[topic] = counter
                if not first:
                    self._bump(topic)
        self.polls += 1

    async def _open_connection(self) -> None:
        await self._drop_connection()
        async with asyncio.timeout(self._interval):
            conn = await self._connect()
        try:
            await conn.add_listener(CHANNEL, self._notified)
            conn.add_termination_listener(self._terminated)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        conn.remove_termination_listener(self._terminated)
        try:
            await conn.close(timeout=self._interval)
        except Exception:  # a dead peer: just drop the socket
            conn.terminate()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if self.deaf:
            return
        self.notifications += 1
        for item in payload.split(","):
            topic_text, _, counter_text = item.partition(":")
            try:
                topic, counter = int(topic_text), int(counter_text)
            except ValueError:
                self._stamps.bump(*Topic)  # not ours to parse: be safe
                continue
            if counter > self._known.get(topic, -1):
                self._known[topic] = counter
            self._bump(topic)

    def _terminated(self, _conn: Any) -> None:
        """The listening connection died: notifications may be lost from now on. Drop
        every cache and poll (reconnecting) at once rather than at the next tick."""
        self._stamps.bump(*Topic)
        self._wake.set()

    def _bump(self, topic: int) -> None:
        with contextlib.suppress(ValueError):  # a newer version's topic: nothing here caches it
            self._stamps.bump(Topic(topic))
