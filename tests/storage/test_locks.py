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

from filecask.storage.locks import AdvisoryHashLocks, HashLocks, Locks, MemoryBudget
from filecask.storage.meta.sql import connect_raw
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


# --- MemoryBudget -------------------------------------------------------------------------


async def test_memory_budget_bounds_what_is_held_at_once() -> None:
    budget = MemoryBudget(100)
    held = 0
    peak = 0

    async def use(amount: int) -> None:
        nonlocal held, peak
        async with budget.hold(amount):
            held += amount
            peak = max(peak, held)
            await asyncio.sleep(0.002)
            held -= amount

    await asyncio.gather(*(use(a) for a in [40, 40, 40, 30, 60, 10, 100, 25] * 3))
    assert peak <= 100
    assert budget.used == 0
    assert budget.waiting == 0


async def test_memory_budget_is_first_come_first_served() -> None:
    """A large request at the head is not overtaken by smaller ones behind it."""
    budget = MemoryBudget(100)
    order: list[str] = []
    release = asyncio.Event()

    async def use(label: str, amount: int, wait: bool = False) -> None:
        async with budget.hold(amount):
            order.append(label)
            if wait:
                await release.wait()

    first = asyncio.ensure_future(use("first", 60, wait=True))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(use(label, n)) for label, n in [("big", 80), ("small", 10)]]
    await asyncio.sleep(0.01)
    assert order == ["first"]  # small (10) would fit, but big came first
    release.set()
    await asyncio.gather(first, *rest)
    assert order == ["first", "big", "small"]


async def test_memory_budget_grants_an_oversized_request_alone() -> None:
    budget = MemoryBudget(100)
    async with budget.hold(1_000):
        assert budget.used == 100
    assert budget.used == 0


async def test_memory_budget_cancelled_waiter_gives_way() -> None:
    budget = MemoryBudget(100)
    release = asyncio.Event()

    async def hold_until_released() -> None:
        async with budget.hold(100):
            await release.wait()

    holder = asyncio.ensure_future(hold_until_released())
    await asyncio.sleep(0)
    blocked = asyncio.ensure_future(budget.hold(100).__aenter__())
    await asyncio.sleep(0)
    assert budget.waiting == 1
    blocked.cancel()
    await asyncio.gather(blocked, return_exceptions=True)
    assert budget.waiting == 0
    release.set()
    await holder
    assert budget.used == 0
    async with budget.hold(100):  # nothing was leaked by the cancelled waiter
        assert budget.used == 100


async def test_memory_budget_waiter_cancelled_as_it_is_granted_gives_it_back() -> None:
    budget = MemoryBudget(100)
    holder = budget.hold(100)
    await holder.__aenter__()
    waiter = asyncio.ensure_future(budget.hold(100).__aenter__())
    await asyncio.sleep(0)
    await holder.__aexit__(None, None, None)  # grants the waiter ...
    assert budget.used == 100
    waiter.cancel()  # ... which is cancelled before it runs again
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    assert budget.used == 0
