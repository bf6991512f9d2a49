"""Hash locks exclude tasks in one process and other processes on the same data dir."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from filecask.locks import HashLocks


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


async def _enter(locks: HashLocks, key: str) -> None:
    async with locks.hold(key):
        pass
