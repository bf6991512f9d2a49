"""Benchmark data: random bytes (incompressible, never committed) written to the run's
temporary directory, and uploaded through filecask's own API so it stores them as usual."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.env import BenchError
from bench.servers import Filecask

CHUNK = 4 * 2**20


@dataclass(frozen=True)
class Blob:
    hash: str
    size: int


def random_file(path: Path, size: int) -> Blob:
    """`size` random bytes at `path`, hashed as they are written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left > 0:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return Blob(digest.hexdigest(), size)


def random_tree(folder: Path, groups: Iterable[tuple[int, int]]) -> int:
    """`count` files of `size` bytes for each (count, size), a hundred per sub-folder, as a
    CMS would drop them; returns the total bytes."""
    total = 0
    number = 0
    for count, size in groups:
        for _ in range(count):
            random_file(folder / f"d{number // 100:03d}" / f"f{number:05d}.bin", size)
            total += size
            number += 1
    return total


async def _upload_all(server: Filecask, bodies: list[bytes], concurrency: int) -> list[Blob]:
    auth = aiohttp.BasicAuth("admin", server.password)
    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, body: bytes) -> Blob:
        async with gate, session.put(server.url("/files"), data=body) as response:
            if response.status not in (200, 201):
                raise BenchError(f"upload: {response.status} {await response.text()}")
            info = await response.json()
        return Blob(str(info["hash"]), int(info["size"]))

    async with aiohttp.ClientSession(auth=auth) as session:
        return list(await asyncio.gather(*(one(session, b) for b in bodies)))


def upload_random(server: Filecask, count: int, size: int, concurrency: int = 8) -> list[Blob]:
    """`count` new random files of `size` bytes uploaded as admin (set-up, not timed)."""
    bodies = [os.urandom(size) for _ in range(count)]
    blobs = asyncio.run(_upload_all(server, bodies, concurrency))
    for blob, body in zip(blobs, bodies, strict=True):
        if blob.hash != hashlib.sha256(body).hexdigest():
            raise BenchError(f"filecask stored {blob.hash} for other content")
    return blobs
