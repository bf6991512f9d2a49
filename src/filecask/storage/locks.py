"""Mutual exclusion per content hash, across tasks, processes and instances (and, at the
end, `MemoryBudget`: a weighted semaphore over bytes of memory).

Committing a blob plus its first reference, and dropping the last reference plus its blob,
are two-step changes (blob store and database). Holding the hash's lock across both steps
means an upload can never see "blob present" just before a delete removes it, and gc can
never remove a blob an upload is about to reference.

Locks are striped by the hash's first byte (256 stripes). Inside a process an asyncio lock
per stripe serialises tasks. Across processes:

- SQLite (`HashLocks`): processes sharing a data directory (`--workers`, the CLI) take an
  `flock` on `<data-dir>/locks/<ab>.lock`.
- PostgreSQL (`AdvisoryHashLocks`): instances on different machines share only the
  database, so the stripe is a session advisory lock, `pg_try_advisory_lock(LOCK_CLASS,
  stripe)`, on one dedicated connection per process (its queries serialised by an asyncio
  lock). It replaces the flock files: processes on one machine are covered too.

Both are tried without blocking and polled with backoff, so waiting never blocks the event
loop and cancellation never strands a lock.

The advisory locks' window: a session lock lives as long as its connection. If that
connection is lost (the server restarts, a network cut, `pg_terminate_backend`) while a
stripe is held, PostgreSQL releases the lock at once, and until the holder has finished the
two steps it is in the middle of (one blob-store operation and one metadata transaction,
usually milliseconds) another instance may enter the same stripe. The holder finds out when
it releases (the unlock is refused, or the connection is not the one it locked on) and logs
an error naming the hash; the next `hold` reconnects. The database itself stays consistent
(its row locks, see `filecask.storage.meta.sql`); what the lapse can cost is the bytes of a
blob that a concurrent delete removed just as an upload re-referenced it, which `fsck`
reports as missing. No other stripe's exclusion is affected once a new connection is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol

POLL_START = 0.0005
QUERY_TIMEOUT = 10.0
"""Seconds a lock query may take before its connection is taken for dead and replaced."""
POLL_MAX = 0.02
LOCK_CLASS = 0x66636B73
"""The advisory lock class id of filecask's hash stripes ("fcks"); the stripe is the object
id, so other applications' advisory locks on the same database do not collide."""

log = logging.getLogger("filecask.locks")


class Locks(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def hold(self, hex_hash: str) -> AbstractAsyncContextManager[None]: ...


def hash_locks_for(database_url: str, locks_dir: Path) -> Locks:
    """Advisory locks with PostgreSQL (instances share nothing else), else flock files."""
    from filecask.storage.meta.sql import connect_raw, is_postgres_url

    if is_postgres_url(database_url):
        return AdvisoryHashLocks(partial(connect_raw, database_url))
    return HashLocks(locks_dir)


def _stripes() -> list[str]:
    return [f"{i:02x}" for i in range(256)]


class HashLocks:
    def __init__(self, locks_dir: Path) -> None:
        self._dir = locks_dir
        self._fds: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def open(self) -> None:
        self._fds = await asyncio.get_running_loop().run_in_executor(None, self._open_all)
        self._locks = {stripe: asyncio.Lock() for stripe in self._fds}

    async def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    @asynccontextmanager
    async def hold(self, hex_hash: str) -> AsyncIterator[None]:
        stripe = hex_hash[:2]
        async with self._locks[stripe]:
            fd = self._fds[stripe]
            await _flock(fd)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open_all(self) -> dict[str, int]:
        self._dir.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        return {
            stripe: os.open(self._dir / f"{stripe}.lock", flags, 0o600) for stripe in _stripes()
        }


async def _flock(fd: int) -> None:
    delay = POLL_START
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)


class AdvisoryHashLocks:
    """PostgreSQL session advisory locks per stripe (see the module docstring)."""

    def __init__(self, connect: Callable[[], Awaitable[Any]]) -> None:
        self._connect = connect
        self._conn: Any = None
        self._conn_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.lapses = 0
        """Stripes found released under their holder (a lost connection)."""

    async def open(self) -> None:
        self._locks = {stripe: asyncio.Lock() for stripe in _stripes()}
        async with self._conn_lock:
            await self._connection()

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)
        async with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except Exception:  # a dead peer: the server drops its locks with the session
                conn.terminate()

    @property
    def connection(self) -> Any:
        """The lock connection (tests terminate it)."""
        return self._conn

    @asynccontextmanager
    async def hold(self, hex_hash: str) -> AsyncIterator[None]:
        stripe = hex_hash[:2]
        objid = int(stripe, 16)
        async with self._locks[stripe]:
            conn = await self._acquire(objid)
            try:
                yield
            finally:
                # Shielded: a cancelled holder must not leave the session lock held, which
                # would keep every other instance out of the stripe until we reconnect.
                await asyncio.shield(self._spawn(self._release(conn, objid, hex_hash)))

    async def _acquire(self, objid: int) -> Any:
        delay = POLL_START
        while True:
            attempt = self._spawn(self._try_lock(objid))
            try:
                conn = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                # The lock may be granted after all: give it back once the query ends.
                attempt.add_done_callback(partial(self._undo_attempt, objid))
                raise
            if conn is not None:
                return conn
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def _try_lock(self, objid: int) -> Any:
        """The connection the stripe was locked on, or None if another session holds it.
        A broken connection is replaced once; a failure to reconnect is raised."""
        async with self._conn_lock:
            for retry in (False, True):
                conn = await self._connection()
                try:
                    got = await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1, $2)",
                        LOCK_CLASS,
                        objid,
                        timeout=QUERY_TIMEOUT,
                    )
                except Exception as exc:
                    if isinstance(exc, TimeoutError):
                        # A silently dead peer (a NAT timeout, a failover) would otherwise
                        # hold every stripe of this process for the TCP retransmission time.
                        conn.terminate()
                    if retry or not _is_broken(conn):
                        raise
                    self._conn = None
                    continue
                return conn if got else None
            raise AssertionError("unreachable")

    def _undo_attempt(self, objid: int, attempt: asyncio.Task[Any]) -> None:
        if attempt.cancelled() or attempt.exception() is not None:
            return
        conn = attempt.result()
        if conn is not None:
            self._spawn(self._release(conn, objid, f"{objid:02x}"))

    async def _release(self, conn: Any, objid: int, hex_hash: str) -> None:
        async with self._conn_lock:
            if conn is self._conn and not conn.is_closed():
                try:
                    if await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, objid):
                        return
                except Exception:
                    if not _is_broken(conn):
                        raise
                    self._conn = None
        self.lapses += 1
        log.error(
            "the lock of stripe %02x was lost with its database connection while %s held it:"
            " another instance may have entered the stripe; run `filecask fsck` if a delete"
            " and an upload of that content crossed",
            objid,
            hex_hash,
        )

    async def _connection(self) -> Any:
        """The lock connection, reconnecting if it was lost (the caller holds _conn_lock)."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._conn is not None:
            log.warning("lock connection lost; reconnecting")
        self._conn = await self._connect()
        return self._conn

    def _spawn(self, step: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(step)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _is_broken(conn: Any) -> bool:
    """Whether a failed query left the connection unusable (rather than failing itself)."""
    return bool(conn.is_closed())


class MemoryBudget:
    """A first-come, first-served weighted semaphore over bytes of memory: `hold(n)` waits
    until `n` more bytes fit in the budget. A request larger than the whole budget is
    granted alone (it waits until nothing else is held), so it is slow, never refused.

    Used by `filecask.auth` to bound the argon2 verifications in flight: each takes the
    hash's memory cost for as long as its thread runs, so a burst of distinct sign-ins
    queues here instead of multiplying the process's memory. Strict FIFO: a large request
    at the head is not overtaken by smaller ones behind it, so nobody starves.
    """

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return sum(not future.done() for _, future in self._waiters)

    @asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        amount = min(max(amount, 0), self.total)
        if not self._waiters and self.used + amount <= self.total:
            self.used += amount
        else:
            future = asyncio.get_running_loop().create_future()
            entry = (amount, future)
            self._waiters.append(entry)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(amount)  # granted just as we were cancelled
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(entry)
                    self._grant()  # we may have been the head holding others back
                raise
        try:
            yield
        finally:
            self._release(amount)

    def _release(self, amount: int) -> None:
        self.used -= amount
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            amount, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + amount > self.total:
                return
            self._waiters.popleft()
            self.used += amount
            future.set_result(None)
