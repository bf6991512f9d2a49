"""Change stamps shared by every process on one data directory, and the caches they keep
honest.

The hot read paths (who is signing in, does this blob exist and what type is it, how much
does this user store) would otherwise cost a database round trip per request: through
aiosqlite that is a thread hop, several times the cost of the rest of a small request.
Their answers change rarely, so each process caches them, and every write that could change
an answer moves a stamp for its topic *after* it commits and *before* it answers its client.
A cache empties itself as soon as it sees its topic's stamp move, and it only keeps what was
read under the stamp it still holds, so it can never serve an answer older than the last
completed write, whichever process (a worker, the CLI) made it.

The stamps live in a small memory-mapped file in the data directory: reading one is a memory
load, not a system call. A write stores a fresh random value rather than incrementing, so two
writers racing can never leave the stamp at a value some reader has already seen.
"""

from __future__ import annotations

import asyncio
import enum
import mmap
import os
import secrets
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_STAMP = struct.Struct("<Q")


class Topic(enum.IntEnum):
    USERS = 0
    """A user was created, removed, or had their password or role changed."""
    REFS = 1
    """A reference or bundle was added or dropped (usage figures changed)."""
    BLOBS = 2
    """A blob left the store (its row is gone; its bytes are about to go)."""
    NEW_BLOBS = 3
    """A blob was stored that was not there before (remembered misses are stale)."""


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
