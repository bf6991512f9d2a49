"""Metadata store at scale: upload, download and delete latency (p99) with a million file
records vs a thousand, on two servers that differ only in how full their database is.

The records go straight into the SQLite database of a stopped server (through the HTTP
API a million uploads would take hours); the operations timed then use new, real files."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.context import Bench, alternate
from bench.env import BenchError
from bench.report import Row, Sample, ms, ratio_row
from bench.servers import Filecask

BATCH = 50_000
OPS = ("upload", "download", "delete")
WARMUP = 10
"""Requests before timing: the first sign-in pays argon2, which the cache then absorbs."""


def _hashes(count: int) -> list[str]:
    """Distinct, realistic-looking hashes, sorted so the B-trees fill in order (fast)."""
    return sorted(hashlib.sha256(b"filecask-bench-%d" % i).hexdigest() for i in range(count))


def populate(db: Path, count: int) -> None:
    """`count` blobs, each referenced once by `admin`, in big transactions."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    con = sqlite3.connect(db)
    try:
        (user_id,) = con.execute("SELECT id FROM users WHERE name = 'admin'").fetchone()
        hashes = _hashes(count)
        for start in range(0, count, BATCH):
            chunk = hashes[start : start + BATCH]
            with con:
                con.executemany(
                    "INSERT INTO blobs (hash, size, crc32, content_type, created_at)"
                    " VALUES (?, ?, ?, 'application/octet-stream', ?)",
                    ((h, 4096 + i, int(h[:8], 16), now) for i, h in enumerate(chunk)),
                )
                con.executemany(
                    "INSERT INTO refs (user_id, hash, name, created_at) VALUES (?, ?, ?, ?)",
                    ((user_id, h, f"file-{start + i}.bin", now) for i, h in enumerate(chunk)),
                )
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("ANALYZE")
    finally:
        con.close()


def prepared(bench: Bench, name: str, count: int) -> Path:
    """A data directory whose database holds `count` file records (plus the admin)."""
    data_dir = bench.tmp / name
    with bench.start_filecask(f"{name}-setup", data_dir):
        pass  # the first start runs the migrations and creates `admin`
    populate(data_dir / "filecask.db", count)
    return data_dir


async def _timed(
    session: aiohttp.ClientSession, method: str, url: str, **kw: object
) -> tuple[float, int, bytes]:
    start = time.perf_counter()
    async with session.request(method, url, **kw) as response:  # type: ignore[arg-type]
        body = await response.read()
    return time.perf_counter() - start, response.status, body


async def _operations(server: Filecask, count: int) -> dict[str, Sample]:
    """`count` sequential uploads of new 4 KiB files, then their downloads, then deletes;
    the p99 of each kind (errors counted: any status but the expected one)."""
    auth = aiohttp.BasicAuth("admin", server.password)
    times: dict[str, list[float]] = {op: [] for op in OPS}
    errors = dict.fromkeys(OPS, 0)
    bodies = [os.urandom(4096) for _ in range(count)]
    hashes = [hashlib.sha256(b).hexdigest() for b in bodies]
    async with aiohttp.ClientSession(auth=auth) as session:
        for body in bodies:
            took, status, _ = await _timed(session, "PUT", server.url("/files"), data=body)
            times["upload"].append(took)
            errors["upload"] += status != 201
        for body, digest in zip(bodies, hashes, strict=True):
            took, status, got = await _timed(session, "GET", server.url(f"/files/{digest}"))
            times["download"].append(took)
            errors["download"] += status != 200 or got != body
        for digest in hashes:
            took, status, _ = await _timed(session, "DELETE", server.url(f"/files/{digest}"))
            times["delete"].append(took)
            errors["delete"] += status != 204
    return {op: Sample(p99(times[op]), errors[op]) for op in OPS}


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]


def records(bench: Bench) -> list[Row]:
    """Three rows (upload, download, delete): p99 with many records over p99 with few."""
    many, few = bench.sizes.records_many, bench.sizes.records_few
    many_dir, few_dir = prepared(bench, "records-many", many), prepared(bench, "records-few", few)
    ops = bench.sizes.record_ops
    with (
        bench.start_filecask("records-many", many_dir) as big,
        bench.start_filecask("records-few", few_dir) as little,
    ):
        for server in (big, little):
            asyncio.run(_operations(server, WARMUP))
        runs = alternate(
            bench.pairs,
            lambda: asyncio.run(_operations(big, ops)),
            lambda: asyncio.run(_operations(little, ops)),
        )
    rows = []
    for op in OPS:
        pairs = [(run[0][op], run[1][op]) for run in runs]
        name = f"records: {op} p99, {many:,} vs {few:,} records ({ops} ops)"
        rows.append(ratio_row(name, pairs, ms, 1.5, quick=bench.quick, higher_is_better=False))
    if not rows:
        raise BenchError("no operations measured")
    return rows
