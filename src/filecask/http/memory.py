"""Memory the process no longer uses goes back to the OS.

Python hands every object over 512 bytes to C's `malloc`, and glibc keeps freed memory
for reuse instead of returning it: pages in the middle of its heap stay resident as long
as anything lives above them. So a burst (a thousand hostile connections each holding a
32 KiB request head, a hundred uploads whose buffers filled while the disk lagged) leaves
the process as large as it made it, for ever, though nothing holds that memory any more.

`Reclaimer` looks every RECLAIM_INTERVAL seconds, in a worker thread, at how much of the
C heap is free (glibc's `mallinfo2`) and, past RECLAIM_FREE bytes, gives the free pages
back (`malloc_trim`: about 0.2 ms per MiB, under the allocator's lock; the event loop
waits that long at most if it allocates meanwhile). On a C library without both calls
(musl, glibc before 2.33) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

__all__ = ["RECLAIM_FREE", "RECLAIM_INTERVAL", "Reclaimer", "free_heap", "reclaim"]

RECLAIM_INTERVAL = 2.0
"""Seconds between two looks at the C heap."""
RECLAIM_FREE = 16 << 20
"""Free bytes in the C heap worth handing back (below it, the next burst reuses them)."""


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc() -> tuple[Callable[[], _MallInfo2], Callable[[int], int]] | None:
    """glibc's `mallinfo2` and `malloc_trim`, looked up among the symbols the process
    has loaded already (no file is read), or None."""
    try:
        libc = ctypes.CDLL(None)
        info = libc.mallinfo2
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    info.restype = _MallInfo2
    info.argtypes = []
    trim.restype = ctypes.c_int
    trim.argtypes = [ctypes.c_size_t]
    return info, trim


_GLIBC = _glibc()


def free_heap() -> int | None:
    """Bytes free in the C heap's arenas, kept by the allocator (None: unknown)."""
    if _GLIBC is None:
        return None
    return int(_GLIBC[0]().fordblks)


def reclaim(threshold: int = RECLAIM_FREE) -> int:
    """If at least `threshold` bytes of the C heap are free, give the free pages back to
    the OS. Blocks (tens of ms for hundreds of MiB): call it in a worker thread. The
    bytes that were free, 0 if nothing was done."""
    free = free_heap()
    if _GLIBC is None or free is None or free < threshold:
        return 0
    _GLIBC[1](0)
    return free


class Reclaimer:
    """Runs `reclaim` every RECLAIM_INTERVAL seconds in the loop's default executor
    while started (one server's lifetime), never two at once."""

    __slots__ = ("_handle", "_running")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._running = False

    def start(self) -> None:
        """Begin (in a running event loop; without one, or without glibc, nothing)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if _GLIBC is not None and self._handle is None:
            self._handle = loop.call_later(RECLAIM_INTERVAL, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._running:
            self._running = True
            done = loop.run_in_executor(None, reclaim)
            done.add_done_callback(self._finished)
        self._handle = loop.call_later(RECLAIM_INTERVAL, self._tick)

    def _finished(self, done: asyncio.Future[int]) -> None:
        self._running = False
        if not done.cancelled():
            done.exception()  # nothing to report: reclaiming is best effort
