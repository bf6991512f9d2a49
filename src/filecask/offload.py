"""Blocking calls run in a worker thread (the loop's default executor): the one place the
code hands work to threads and awaits it.

`run` is the plain hop: if the awaiting task is cancelled, the thread still runs to its end
and its result is dropped. That is wrong for a call that hands back a resource (an fd, a
file): `await run(os.open, ...)` cannot stop the thread, so if the client goes away
meanwhile the handler is cancelled, the thread still opens the file, and nobody ever closes
it. `run_owned` lets the thread finish and gives what it made to `release` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run(func: Callable[..., T], *args: object) -> T:
    """`func(*args)` in the default executor; cancelling the caller abandons the result
    (the thread runs on): for calls whose result needs no release."""
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


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
