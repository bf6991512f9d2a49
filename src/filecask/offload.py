"""Blocking calls that hand back a resource (an fd, a file), run in a worker thread without
leaking it when the awaiting task is cancelled.

`await loop.run_in_executor(None, os.open, ...)` cannot stop the thread: if the client goes
away meanwhile, the handler is cancelled, the thread still opens the file, and nobody ever
closes it. `run_owned` lets the thread finish and gives what it made to `release` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_owned(func: Callable[..., T], *args: object, release: Callable[[T], None]) -> T:
    """`func(*args)` in the default executor; if we are cancelled before it returns, its
    result is passed to `release` (in the executor too) once it does."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, func, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda done: _release_later(loop, done, release))
        raise


def _release_later(
    loop: asyncio.AbstractEventLoop, done: asyncio.Future[T], release: Callable[[T], None]
) -> None:
    if not done.cancelled() and done.exception() is None:
        loop.run_in_executor(None, release, done.result())
