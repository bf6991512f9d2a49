"""Hash locks exclude tasks in one process, other processes on the same data dir (flock),
and, with PostgreSQL, other instances on the same database (advisory locks)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import asyncpg
import pytest

from filecask.locks import AdvisoryHashLocks, HashLocks, Locks
from filecask.metastore.sql import connect_raw
from tests.backends import POSTGRES_ADMIN_URL


async def test_same_hash_is_exclusive_across_tasks(tmp_path: Path) -> None:
    locks = HashLocks(tmp_path)
    await locks.open()
    inside = 0
    peak = 0

    async def critical() -> None:
        nonlocal inside, peak
        async with locks.hold("ab" + "0" * 62):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(critical() for _ in range(10)))
    await locks.close()
    assert peak == 1


async def test_other_stripes_do_not_wait(tmp_path: Path) -> None:
    locks = HashLocks(tmp_path)
    await locks.open()
    async with locks.hold("aa" + "0" * 62):
        await asyncio.wait_for(_enter(locks, "bb" + "0" * 62), timeout=1)
    await locks.close()


async def test_lock_excludes_another_process(tmp_path: Path) -> None:
    """A second process holding the stripe's flock keeps us out until it lets go."""
    script = textwrap.dedent(
        f"""
        import fcntl, os, sys
        fd = os.open({str(tmp_path / "cd.lock")!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.readline()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    loop = asyncio.get_running_loop()
    try:
        assert holder.stdout is not None
        assert (await loop.run_in_executor(None, holder.stdout.readline)).strip() == "held"
        locks = HashLocks(tmp_path)
        await locks.open()
        waiter = asyncio.create_task(_enter(locks, "cd" + "0" * 62))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await loop.run_in_executor(None, holder.communicate, "release\n")
        await asyncio.wait_for(waiter, timeout=2)
        await locks.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            await loop.run_in_executor(None, holder.communicate)


async def test_cancelled_waiter_leaves_lock_usable(tmp_path: Path) -> None:
    locks = HashLocks(tmp_path)
    await locks.open()
    key = "ee" + "0" * 62
    async with locks.hold(key):
        waiter = asyncio.create_task(_enter(locks, key))
        await asyncio.sleep(0.01)
        waiter.cancel()
    await asyncio.wait_for(_enter(locks, key), timeout=1)
    await locks.close()


async def _enter(locks: Locks, key: str) -> None:
    async with locks.hold(key):
        pass


# PostgreSQL advisory locks: instances on different machines


@pytest.fixture
async def two_lock_sets(postgres_database: str) -> AsyncIterator[tuple[AdvisoryHashLocks, ...]]:
    """Two processes' advisory locks on one database (what two instances hold)."""
    sets = tuple(AdvisoryHashLocks(partial(connect_raw, postgres_database)) for _ in range(2))
    for locks in sets:
        await locks.open()
    try:
        yield sets
    finally:
        for locks in sets:
            await locks.close()


async def test_advisory_lock_excludes_another_instance(
    two_lock_sets: tuple[AdvisoryHashLocks, ...],
) -> None:
    one, two = two_lock_sets
    key = "cd" + "0" * 62
    async with one.hold(key):
        waiter = asyncio.create_task(_enter(two, key))
        await asyncio.wait_for(_enter(two, "ce" + "0" * 62), timeout=2)  # another stripe
        await asyncio.sleep(0.3)
        assert not waiter.done()
    await asyncio.wait_for(waiter, timeout=2)


async def test_advisory_lock_is_exclusive_across_tasks_too(
    two_lock_sets: tuple[AdvisoryHashLocks, ...],
) -> None:
    """A session lock is re-entrant for its own session: the per-stripe asyncio lock is
    what keeps two tasks of one process apart."""
    one, two = two_lock_sets
    inside = peak = 0

    async def critical(locks: AdvisoryHashLocks) -> None:
        nonlocal inside, peak
        async with locks.hold("ab" + "0" * 62):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.gather(*(critical(locks) for locks in (one, two) * 5))
    assert peak == 1


async def test_cancelled_advisory_waiter_leaves_the_lock_usable(
    two_lock_sets: tuple[AdvisoryHashLocks, ...],
) -> None:
    one, two = two_lock_sets
    key = "ee" + "0" * 62
    async with one.hold(key):
        waiter = asyncio.create_task(_enter(two, key))
        await asyncio.sleep(0.05)
        waiter.cancel()
    await asyncio.wait_for(_enter(two, key), timeout=2)
    await asyncio.wait_for(_enter(one, key), timeout=2)


async def test_a_lost_lock_connection_is_replaced_and_the_lapse_reported(
    two_lock_sets: tuple[AdvisoryHashLocks, ...], caplog: pytest.LogCaptureFixture
) -> None:
    one, two = two_lock_sets
    key = "f0" + "0" * 62
    async with one.hold(key):
        await _terminate(one.connection.get_server_pid())
        # The server let go with the session: the other instance may enter (the window).
        await asyncio.wait_for(_enter(two, key), timeout=2)
    assert one.lapses == 1
    assert "lost with its database connection" in caplog.text
    # A new connection serves the next holder, and excludes again.
    async with one.hold(key):
        waiter = asyncio.create_task(_enter(two, key))
        await asyncio.sleep(0.2)
        assert not waiter.done()
    await asyncio.wait_for(waiter, timeout=2)


async def _terminate(pid: int) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
