"""Mutual exclusion per content hash, across tasks and across processes.

Committing a blob plus its first reference, and dropping the last reference plus its blob,
are two-step changes (disk and database). Holding the hash's lock across both steps means
an upload can never see "blob present" just before a delete removes it, and gc can never
remove a blob an upload is about to reference.

Locks are striped by the hash's first byte (256 stripes). Inside a process an asyncio lock
per stripe serialises tasks; across processes sharing a data directory (`--workers`, the
CLI) an `flock` on `<data-dir>/locks/<ab>.lock` does. `flock` is taken with LOCK_NB and
polled, so waiting never blocks the event loop and cancellation never strands a lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

POLL_START = 0.0005
POLL_MAX = 0.02


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
        return {f"{i:02x}": os.open(self._dir / f"{i:02x}.lock", flags, 0o600) for i in range(256)}


async def _flock(fd: int) -> None:
    delay = POLL_START
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
