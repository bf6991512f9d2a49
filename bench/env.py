"""The external tools the bench drives, installed when missing; and what machine this is.

A benchmark figure means nothing without the machine and versions it came from, so they
are printed above the table."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

# Debian package of each command the bench runs.
TOOLS: dict[str, str] = {"nginx": "nginx", "wrk": "wrk", "zip": "zip", "curl": "curl"}
# Debian puts nginx in sbin, which a normal user's PATH often lacks.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class BenchError(Exception):
    """The bench itself cannot go on (a tool is missing, a server does not start)."""


def _search_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])


def which(command: str) -> str | None:
    return shutil.which(command, path=_search_path())


def ensure_tools() -> dict[str, str]:
    """Path of every tool; missing ones are apt-get installed when we are root."""
    missing = [name for name in TOOLS if which(name) is None]
    if missing:
        _install([TOOLS[name] for name in missing])
    found = {name: which(name) for name in TOOLS}
    absent = sorted(name for name, path in found.items() if path is None)
    if absent:
        raise BenchError(f"still missing after installing: {', '.join(absent)}")
    return {name: path for name, path in found.items() if path is not None}


def _install(packages: list[str]) -> None:
    """apt-get install, only as root: the bench never asks for a password."""
    listed = " ".join(packages)
    if os.geteuid() != 0 or which("apt-get") is None:
        raise BenchError(
            f"missing tools; install them first (Debian: sudo apt-get install -y {listed})"
        )
    print(f"installing {listed} with apt-get", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-q", "-y"]
    subprocess.run([*apt, "update"], check=True, env=env)  # noqa: S603
    subprocess.run([*apt, "install", "--no-install-recommends", *packages], check=True, env=env)  # noqa: S603


def _first_line(command: list[str], prefer: str = "") -> str:
    """A tool's version banner; some print it on stderr or exit non-zero (`wrk -v`), and
    `zip -v` opens with a copyright line, so the first line containing `prefer` wins."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return next((line for line in lines if prefer in line), "unknown")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def memory_total() -> str:
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return f"{pages * page_size / 2**30:.1f} GiB"


def machine_info(tools: dict[str, str], filecask: list[str]) -> list[tuple[str, str]]:
    """What the figures were measured on, printed before the table."""
    return [
        ("cpu", cpu_model()),
        ("cores", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("memory", memory_total()),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        ("filecask", _first_line([*filecask, "--version"])),
        ("aiohttp", _version("aiohttp")),
        ("uvloop", _version("uvloop")),
        ("nginx", _first_line([tools["nginx"], "-v"])),
        ("wrk", _first_line([tools["wrk"], "-v"]).split(" Copyright")[0]),
        ("zip", _first_line([tools["zip"], "-v"], prefer="This is Zip")),
        ("curl", _first_line([tools["curl"], "--version"]).split(" libcurl/")[0]),
    ]
