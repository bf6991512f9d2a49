"""What the library adapters' start-up self-checks share: the error, and the version rule.

filecask builds on internals of aiohttp (`filecask.http.aiohttp_internals`) and
prometheus-client (`filecask.http.prometheus_internals`), which any release may change.
Each adapter declares the versions it was tested with and the attributes it needs, and
checks both before a server starts: an upgrade that breaks an assumption stops
`filecask serve` with one line naming the package, its version and what is missing,
rather than failing later on a connection. `FILECASK_ALLOW_UNTESTED_LIBRARIES=1` lets an
untested version through (the attributes are still checked): the canary script
(`scripts/canary`) runs the tests that way against the newest releases.
"""

from __future__ import annotations

import functools
import os
import re
from importlib import metadata

__all__ = ["ALLOW_UNTESTED_ENV", "UnsupportedLibrary", "check_version", "version_tuple"]

ALLOW_UNTESTED_ENV = "FILECASK_ALLOW_UNTESTED_LIBRARIES"


class UnsupportedLibrary(RuntimeError):
    """An installed library is not one filecask can run on; the message is one line."""


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading release numbers of `version` (`3.14.5rc1` -> (3, 14, 5))."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        return ()
    return tuple(int(part) for part in match.group().split("."))


@functools.cache
def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def check_version(package: str, version: str, lowest: str, below: str) -> None:
    """Raise UnsupportedLibrary unless `lowest <= version < below`, the versions the
    adapter of `package` was tested with (or the environment allows untested ones)."""
    if os.environ.get(ALLOW_UNTESTED_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return  # the words every boolean setting takes for yes; `false`, `no`... mean no
    if version_tuple(lowest) <= version_tuple(version) < version_tuple(below):
        return
    raise UnsupportedLibrary(
        f"{package} {version} is installed, but filecask was tested with {package}"
        f">={lowest},<{below} only (it relies on {package}'s internals): install a version"
        f" in that range, or set {ALLOW_UNTESTED_ENV}=1 to try this one"
    )


def missing_message(package: str, version: str, missing: list[str]) -> str:
    return (
        f"{package} {version} lacks what filecask relies on: {', '.join(missing)}"
        f" (filecask needs a version its adapter supports)"
    )
