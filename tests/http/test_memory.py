"""`filecask.http.memory`: free memory of the C heap goes back to the OS (glibc only)."""

from __future__ import annotations

import psutil
import pytest

from filecask.http.memory import free_heap, reclaim

MiB = 1 << 20


def test_freed_memory_goes_back_once_past_the_threshold() -> None:
    """64 MiB of 32 KiB objects (malloc's, not pymalloc's), every other one kept: the
    freed half cannot shrink the heap from its top, only `reclaim` gives it back."""
    if free_heap() is None:
        pytest.skip("not glibc 2.33 or later: nothing to reclaim with")
    process = psutil.Process()
    blocks = [bytes(32 << 10) for _ in range(2048)]
    kept = blocks[::2]
    del blocks
    assert (free_heap() or 0) >= 24 * MiB
    before = process.memory_info().rss
    assert reclaim(threshold=1 << 40) == 0  # under the threshold: nothing done
    assert reclaim() >= 24 * MiB
    assert process.memory_info().rss < before - 16 * MiB
    assert len(kept) == 1024
