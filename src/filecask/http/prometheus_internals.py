"""Every use filecask makes of prometheus-client's internals, in one place, checked at start-up.

- **Batched histogram observations** (`add_to_histogram`): prometheus-client has no
  batch `observe`; `filecask.http.metrics` moves a second's worth of latencies into a
  histogram child by adding to its per-bucket values (`child._buckets`, one per bound
  plus +Inf, each counting the observations of its own bucket: the exposition makes
  them cumulative) and its sum (`child._sum`), the objects `observe` increments (in
  memory, or this process's file in multiprocess mode).
- **Choosing multiprocess values after import** (`choose_value_class_again`): the
  class of every metric value (`values.ValueClass`) is chosen when prometheus-client is
  imported, from PROMETHEUS_MULTIPROC_DIR; `serve --workers N` sets that variable later,
  so it has prometheus-client choose again (`values.get_value_class()`).
- **Which was chosen** (`multiprocess_values`): the chosen class says whether it writes to
  files (`_multiprocess`).

`check()` looks for each (on the module, or on a histogram built for the check, in memory)
and for a tested version (TESTED_LOWEST <= prometheus-client < TESTED_BELOW), and raises
`UnsupportedLibrary` with one line otherwise; `filecask serve` and `create_app` call it.
tests/http/test_prometheus_internals.py states each assumption as a test of its own.

Upgrading prometheus-client: run `scripts/canary`; if it passes, raise TESTED_BELOW here
and the bound in pyproject.toml together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, values

from filecask.http.libcheck import (
    UnsupportedLibrary,
    check_version,
    installed_version,
    missing_message,
)

__all__ = [
    "PACKAGE",
    "TESTED_BELOW",
    "TESTED_LOWEST",
    "add_to_histogram",
    "check",
    "choose_value_class_again",
    "missing",
    "multiprocess_values",
]

PACKAGE = "prometheus-client"
TESTED_LOWEST = "0.20"
TESTED_BELOW = "0.27"
"""The prometheus-client versions this adapter is meant for: TESTED_LOWEST <= version <
TESTED_BELOW (pyproject.toml has the same bounds)."""


def add_to_histogram(child: Histogram, total: float, counts: Sequence[int]) -> None:
    """Record in `child` (a histogram with its labels) observations summing to `total`,
    `counts[i]` of them in bucket i (the last: past the last bound), as that many calls
    of `observe` would."""
    child._sum.inc(total)
    for bucket, observed in zip(child._buckets, counts, strict=True):
        if observed:
            bucket.inc(observed)


def multiprocess_values() -> bool:
    """Whether metric values created now go to this process's file (multiprocess mode)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def choose_value_class_again() -> None:
    """Have prometheus-client choose the class of the values of metrics created from now on
    again, from PROMETHEUS_MULTIPROC_DIR as it is now (it chose once, on import)."""
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _check_histogram() -> Any:
    """A histogram child built for the check, with in-memory values even in multiprocess
    mode (the check must not add a metric to this process's file)."""
    chosen = values.ValueClass
    values.ValueClass = values.MutexValue
    try:
        histogram = Histogram(
            "filecask_selfcheck", "", ["label"], buckets=(1.0,), registry=CollectorRegistry()
        )
        return histogram.labels("check")
    finally:
        values.ValueClass = chosen


def missing() -> list[str]:
    """What this adapter needs that the installed prometheus-client lacks."""
    lacking = [
        f"values.{name}"
        for name in ("ValueClass", "MutexValue", "MultiProcessValue", "get_value_class")
        if not hasattr(values, name)
    ]
    if hasattr(values, "MutexValue") and not hasattr(values.MutexValue, "_multiprocess"):
        lacking.append("values.MutexValue._multiprocess")
    if not hasattr(values, "MutexValue"):
        return lacking
    child = _check_histogram()
    if not hasattr(getattr(child, "_sum", None), "inc"):
        lacking.append("Histogram child._sum")
    buckets = getattr(child, "_buckets", None)
    if not isinstance(buckets, list) or len(buckets) != 2 or not hasattr(buckets[0], "inc"):
        lacking.append("Histogram child._buckets (one value per bound and +Inf)")
    return lacking


# Looked up now, on import: reading the package metadata is file I/O, which the event loop
# (create_app may be called on it) must not wait for.
installed_version(PACKAGE)


def check() -> None:
    """Raise UnsupportedLibrary (one line) unless the installed prometheus-client is a
    tested version and has everything this adapter uses."""
    version = installed_version(PACKAGE)
    lacking = missing()
    if lacking:
        raise UnsupportedLibrary(missing_message(PACKAGE, version, lacking))
    check_version(PACKAGE, version, TESTED_LOWEST, TESTED_BELOW)
