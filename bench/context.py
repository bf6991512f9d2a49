"""What every case shares: sizes, the temporary directory, the tools, and the servers and
data built on first use (so `--only me` does not generate gigabytes it never reads)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from bench import clients, data, servers
from bench.data import Blob
from bench.env import BenchError
from bench.servers import Filecask, Server

KIB, MIB, GIB = 2**10, 2**20, 2**30
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    big: int
    """The file downloaded and the file uploaded."""
    small_count: int
    small_size: int
    wrk_seconds: float
    zip_big: tuple[int, int]
    zip_small: tuple[int, int]
    slow_clients: int
    slow_file: int
    records_many: int
    records_few: int
    record_ops: int


FULL = Sizes(
    big=GIB,
    small_count=1000,
    small_size=4 * KIB,
    wrk_seconds=10,
    zip_big=(40, 25 * MIB),
    zip_small=(2000, 4 * KIB),
    slow_clients=1000,
    slow_file=MIB,
    records_many=1_000_000,
    records_few=1000,
    record_ops=300,
)
QUICK = Sizes(
    big=16 * MIB,
    small_count=1000,
    small_size=4 * KIB,
    wrk_seconds=1,
    zip_big=(2, 4 * MIB),
    zip_small=(50, 4 * KIB),
    slow_clients=50,
    slow_file=256 * KIB,
    records_many=10_000,
    records_few=1000,
    record_ops=30,
)


class Bench:
    """One run: everything started through `stack` is stopped when the run ends."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        tmp: Path,
        tools: dict[str, str],
        *,
        quick: bool,
        pairs: int,
    ) -> None:
        self.stack = stack
        self.tmp = tmp
        self.tools = tools
        self.quick = quick
        self.pairs = pairs
        self.sizes = QUICK if quick else FULL
        self.password = secrets.token_urlsafe(18)
        self.logs: list[Path] = []

    def start_filecask(
        self, name: str, data_dir: Path, *, workers: int | None = None
    ) -> contextlib.AbstractContextManager[Filecask]:
        """A filecask server (not yet entered); its log is scanned for errors at the end."""
        self.logs.append(self.tmp / "run" / f"{name}.log")
        return servers.filecask(
            self.tmp / "run",
            data_dir,
            self.password,
            archive_root=self.archive_root,
            workers=workers,
            name=name,
        )

    @property
    def archive_root(self) -> Path:
        path = self.tmp / "archives"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def filecask(self) -> Filecask:
        """The server shared by most cases (one worker, default settings)."""
        return self.stack.enter_context(self.start_filecask("filecask", self.tmp / "data"))

    @cached_property
    def nginx(self) -> Server:
        """nginx with filecask's data directory as its root, and `/ref/` for extra files."""
        self.logs.append(self.tmp / "nginx" / "error.log")
        server = servers.nginx(
            self.tools["nginx"], self.tmp / "nginx", self.filecask.data_dir, self.ref_dir
        )
        return self.stack.enter_context(server)

    @property
    def ref_dir(self) -> Path:
        return self.tmp / "ref"

    @cached_property
    def big_blob(self) -> Blob:
        """The big file, stored in filecask (uploaded once, never deleted)."""
        source = self.tmp / "big-download.bin"
        blob = data.random_file(source, self.sizes.big)
        done = clients.curl_upload(
            self.tools["curl"], self.filecask.url("/files"), source, self.filecask.user
        )
        source.unlink()
        if done.status not in (200, 201):
            raise BenchError(f"uploading the big file: HTTP {done.status}")
        return blob

    @cached_property
    def small_blobs(self) -> list[Blob]:
        """The 4 KiB files that wrk spreads its requests over."""
        return data.upload_random(self.filecask, self.sizes.small_count, self.sizes.small_size)

    def small_script(self, store_paths: bool) -> Path:
        """wrk script over the small files: nginx's `/store/..` or filecask's `/files/..`."""
        if store_paths:
            paths = [f"/store/{b.hash[:2]}/{b.hash}" for b in self.small_blobs]
            return clients.wrk_paths_script(self.tmp, "small-nginx", paths)
        paths = [f"/files/{b.hash}" for b in self.small_blobs]
        return clients.wrk_paths_script(self.tmp, "small-filecask", paths)


def alternate(pairs: int, *sides: Callable[[], T]) -> list[list[T]]:
    """Each side once per pair, in reverse order every other pair, so neither side always
    runs on the caches (or the quiet moment) the other left behind."""
    results: list[list[T]] = []
    for number in range(pairs):
        order = range(len(sides)) if number % 2 == 0 else reversed(range(len(sides)))
        row: dict[int, T] = {}
        for index in order:
            row[index] = sides[index]()
        results.append([row[i] for i in range(len(sides))])
    return results
