"""Crash points for tests: kill this process at a named step of an upload or a delete.

The crash tests need the process to die *between* two durable steps (the blob renamed into
place but its row not committed, the row gone but the bytes still there, ...), which no
signal sent from outside can hit reliably. `FILECASK_TEST_CRASH_AT=upload.blob-committed`
makes the process SIGKILL itself the moment it reaches that step: no cleanup, no `finally`,
exactly what a power cut or the OOM killer would leave. Unset (always, outside the tests)
every check is a set lookup on an empty set.

The variable is deliberately not a setting: it has no flag, no `.env` entry and no place in
the settings table, and a server that starts with it set says so loudly in its log.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping

ENV_VAR = "FILECASK_TEST_CRASH_AT"

POINTS = frozenset(
    {
        "upload.staged",  # body written and fsynced to tmp/, nothing visible yet
        "upload.blob-committed",  # blob renamed into store/, no reference row yet
        "upload.ref-committed",  # reference committed, the client not yet answered
        "delete.ref-removed",  # reference (and blob row) gone, the bytes still on disk
        "delete.blob-deleted",  # bytes gone too, the client not yet answered
        "bundle.released",  # bundle rows gone, its unreferenced blobs not yet removed
    }
)

log = logging.getLogger("filecask")


class CrashPoints:
    """The steps at which this process kills itself (none unless the tests ask)."""

    def __init__(self, points: frozenset[str] = frozenset()) -> None:
        unknown = points - POINTS
        if unknown:
            raise ValueError(f"{ENV_VAR}: unknown crash points {sorted(unknown)}")
        self.points = points

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> CrashPoints:
        text = environ.get(ENV_VAR, "")
        points = frozenset(p.strip() for p in text.split(",") if p.strip())
        if points:
            log.warning("%s is set: this process will kill itself at %s", ENV_VAR, sorted(points))
        return cls(points)

    def reached(self, point: str) -> None:
        """Die here, at once and uncleanly, if the tests asked for it."""
        if point in self.points:
            os.kill(os.getpid(), signal.SIGKILL)
