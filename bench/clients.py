"""The clients the cases drive: curl (one big transfer), wrk (many small requests), and a
plain http.client for set-up calls. Each returns what was measured and how many errors."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.env import BenchError
from bench.servers import HOST

WRK_THREADS = 2
WRK_CONNECTIONS = 64


@dataclass(frozen=True)
class Transfer:
    """One curl transfer: HTTP status, bytes, total and time-to-first-byte seconds."""

    status: int
    size: int
    seconds: float
    first_byte: float

    @property
    def rate(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else 0.0


_WRITE_OUT = "%{http_code} %{size_download} %{size_upload} %{time_total} %{time_starttransfer}"


def _curl(curl: str, args: list[str]) -> tuple[int, int, int, float, float]:
    command = [curl, "-sS", "-o", os.devnull, "-w", _WRITE_OUT, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 5:
        raise BenchError(f"curl failed ({done.returncode}): {done.stderr.strip()}")
    return int(fields[0]), int(fields[1]), int(fields[2]), float(fields[3]), float(fields[4])


def curl_download(curl: str, url: str) -> Transfer:
    """GET `url` to /dev/null."""
    status, down, _up, total, first = _curl(curl, [url])
    return Transfer(status, down, total, first)


def curl_upload(curl: str, url: str, path: Path, user: str) -> Transfer:
    """PUT a file as a raw body (curl streams `-T`; `Expect:` off so no 100-continue wait)."""
    args = ["-u", user, "-H", "Expect:", "-H", "Content-Type: application/octet-stream"]
    status, _down, up, total, first = _curl(curl, [*args, "-T", str(path), url])
    return Transfer(status, up, total, first)


def basic_auth(user: str) -> str:
    return "Basic " + base64.b64encode(user.encode()).decode()


def request(
    port: int, method: str, path: str, *, user: str | None = None, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request for set-up and checks (not timed); returns status and body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    headers = {"Authorization": basic_auth(user)} if user else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def request_json(port: int, method: str, path: str, **kwargs: Any) -> Any:
    status, body = request(port, method, path, **kwargs)
    if status >= 300:
        raise BenchError(f"{method} {path}: {status} {body[:300]!r}")
    return json.loads(body)


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    requests: int
    errors: int
    """Non-2xx/3xx responses plus socket errors (connect, read, write, timeout)."""


WRK_PATHS_SCRIPT = """\
-- Round robin over a list of paths; the threads start half the list apart.
local paths = {{}}
for line in io.lines("{paths}") do paths[#paths + 1] = line end
local threads = 0
function setup(thread)
    thread:set("start", threads * math.floor(#paths / 2))
    threads = threads + 1
end
local i = nil
request = function()
    if i == nil then i = start or 0 end
    i = i % #paths + 1
    return wrk.format("GET", paths[i])
end
"""


def wrk_paths_script(directory: Path, name: str, paths: list[str]) -> Path:
    """A wrk Lua script requesting `paths` round robin; the list goes in a file beside it."""
    listing = directory / f"{name}.paths"
    listing.write_text("\n".join(paths) + "\n")
    script = directory / f"{name}.lua"
    script.write_text(WRK_PATHS_SCRIPT.format(paths=listing))
    return script


def wrk(
    binary: str,
    url: str,
    seconds: float,
    *,
    script: Path | None = None,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    """`wrk -t2 -c64 -dN` (two threads for two cores); parses its summary."""
    command = [binary, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds:g}s"]
    command += ["--timeout", "10s"]
    for header in headers:
        command += ["-H", header]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)  # noqa: S603
    return parse_wrk(done.stdout, done.returncode, done.stderr)


def parse_wrk(out: str, returncode: int = 0, err: str = "") -> WrkResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if returncode != 0 or rate is None or total is None:
        raise BenchError(f"wrk failed ({returncode}): {err.strip() or out.strip()}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkResult(float(rate.group(1)), int(total.group(1)), errors)


def timed(command: list[str], cwd: Path | None = None) -> float:
    """Wall seconds of a command run with its output discarded; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run(  # noqa: S603
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"{command[0]} failed ({done.returncode}): {done.stderr[-500:]!r}")
    return elapsed
