"""A thousand concurrent slow downloads: files and archives, each client reading at most
256 KiB/s, every body checked byte for byte, the server's memory watched throughout.

The clients are raw asyncio streams (one socket each, a small receive buffer so the
slowness reaches the server instead of piling up in the kernel), run in this process
while a thread samples the server's RSS."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
import time
from dataclasses import dataclass

import uvloop

from bench import clients, data
from bench.context import Bench
from bench.env import BenchError
from bench.report import Row, limit_row, mib, verdict
from bench.servers import HOST, RssSampler, raise_fd_limit

RATE = 256 * 2**10
"""Bytes per second each client reads at most."""
READ = 16 * 2**10
RECEIVE_BUFFER = 64 * 2**10
CLIENT_TIMEOUT = 600.0
DISTINCT = 4
"""Distinct files and distinct archive folders; clients take them in turn."""
CLIENTS_PER_ADDRESS = 100


@dataclass(frozen=True)
class Target:
    path: str
    size: int
    sha256: str


def source_address(client: int) -> str:
    """A loopback address of its own for every CLIENTS_PER_ADDRESS clients: a thousand
    real clients come from many addresses, and filecask limits connections per address
    (`--max-connections-per-address`, 128)."""
    return f"127.1.{client // CLIENTS_PER_ADDRESS}.1"


async def _connect(port: int, client: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.setblocking(False)
    try:
        sock.bind((source_address(client), 0))
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    """Status and Content-Length of a response (filecask always sends a length here)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    lengths = [
        line.split(":", 1)[1] for line in head[1:] if line.lower().startswith("content-length:")
    ]
    if not lengths:
        raise BenchError(f"no Content-Length: {head[0]}")
    return status, int(lengths[0])


async def _slow_get(port: int, target: Target, client: int) -> str | None:
    """One paced download; None if the body is exactly right, else what went wrong."""
    reader, writer = await _connect(port, client)
    try:
        request = f"GET {target.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        status, length = await _read_head(reader)
        if status != 200 or length != target.size:
            return f"{target.path}: HTTP {status}, length {length}"
        digest, received, start = hashlib.sha256(), 0, time.monotonic()
        while received < length:
            chunk = await reader.read(min(READ, length - received))
            if not chunk:
                return f"{target.path}: cut after {received} of {length} bytes"
            digest.update(chunk)
            received += len(chunk)
            ahead = received / RATE - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        return None if digest.hexdigest() == target.sha256 else f"{target.path}: wrong body"
    finally:
        writer.close()


async def _guarded(port: int, target: Target, client: int) -> str | None:
    try:
        return await asyncio.wait_for(_slow_get(port, target, client), CLIENT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
        return f"{target.path}: {type(exc).__name__}: {exc}"


async def _run_clients(port: int, targets: list[Target]) -> list[str | None]:
    return list(await asyncio.gather(*(_guarded(port, t, n) for n, t in enumerate(targets))))


def _targets(bench: Bench) -> list[Target]:
    """Distinct files and archive folders (warmed: CRCs cached), with their expected sha256."""
    size = bench.sizes.slow_file
    files = data.upload_random(bench.filecask, DISTINCT, size, concurrency=2)
    targets = [Target(f"/files/{b.hash}", b.size, b.hash) for b in files]
    for number in range(DISTINCT):
        name = f"bench-slow-{number}"
        data.random_tree(bench.archive_root / name, [(8, size // 8)])
        status, body = clients.request(bench.filecask.port, "GET", f"/archive/{name}/")
        if status != 200:
            raise BenchError(f"archive {name}: HTTP {status}")
        targets.append(Target(f"/archive/{name}/", len(body), hashlib.sha256(body).hexdigest()))
    return targets


def slow(bench: Bench) -> list[Row]:
    """All clients at once; no error allowed, peak server RSS under 300 MiB."""
    raise_fd_limit()
    kinds = _targets(bench)
    files, archives = kinds[:DISTINCT], kinds[DISTINCT:]
    count = bench.sizes.slow_clients
    targets = [(files if i % 2 == 0 else archives)[(i // 2) % DISTINCT] for i in range(count)]
    start = time.monotonic()
    with RssSampler(bench.filecask.pid) as rss:
        outcomes = uvloop.run(_run_clients(bench.filecask.port, targets))
    elapsed = time.monotonic() - start
    problems = [p for p in outcomes if p is not None]
    for problem in sorted(set(problems))[:5]:
        print(f"slow: {problem}", file=sys.stderr)
    complete = len(targets) - len(problems)
    name = f"slow: {count} clients ≤ 256 KiB/s, half files half archives"
    row = limit_row(f"{name}: server peak RSS", rss.peak, mib, 300 * 2**20, quick=bench.quick)
    completed = Row(
        f"{name}: byte-exact",
        f"{complete}/{count} in {elapsed:.0f} s",
        "—",
        "—",
        "—",
        "all, no errors",
        verdict(bench.quick, not problems, len(problems)),
    )
    return [completed, row]
