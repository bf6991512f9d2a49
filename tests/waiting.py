"""Waiting for a condition instead of sleeping a guessed time: a test that needs a state
reached polls for it with a generous limit, so a loaded machine makes it slower, never
wrong."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

LIMIT = 10.0
"""Far longer than any of these states takes on a quiet machine (milliseconds)."""


async def until(check: Callable[[], bool], what: str, limit: float = LIMIT) -> None:
    """Return as soon as `check()` is true; fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not within {limit:.0f} s: {what}"
        await asyncio.sleep(0.005)
