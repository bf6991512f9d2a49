"""Blobs as files at `<data-dir>/store/ab/<sha256>`, staged through `<data-dir>/tmp/`.

Durability: a body is written to a scratch file in tmp/ (same filesystem, so the final
rename is atomic), hashed while it streams, fsynced, renamed into place, and the directory
fsynced. A scratch file is held under an exclusive `flock` while its upload runs, so a
process that starts later can tell the scratch files of crashed processes (lock free) from
those of live ones (lock held) and remove only the former.

Every blocking call runs in the default executor, batched so that one request costs few
hops; writing overlaps with receiving the next chunk.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from filecask.blobstore import OpenBlob, StagedBlob, StoredBlob
from filecask.errors import InsufficientStorage, NotFound, PayloadTooLarge
from filecask.hashes import StreamHasher, fanout

T = TypeVar("T")

WRITE_CHUNK = 1 << 20
"""Bytes gathered before one executor write: few hops, bounded memory (two chunks live)."""
HEAD_BYTES = 8192
SCRATCH_PREFIX = "upload-"


class DiskBlobStore:
    def __init__(self, data_dir: Path) -> None:
        self.store_dir = data_dir / "store"
        self.tmp_dir = data_dir / "tmp"

    async def open(self) -> None:
        await _run(self._prepare)

    async def close(self) -> None:
        return None

    def path_of(self, hex_hash: str) -> Path:
        return self.store_dir / fanout(hex_hash)

    async def stage(
        self, chunks: AsyncIterator[bytes], *, max_size: int, reserve: int = 0
    ) -> StagedBlob:
        fd, name = await _run(self._create_scratch)
        try:
            hasher, head = await self._absorb_stream(fd, chunks, max_size, reserve)
            await _run(os.fsync, fd)
        except BaseException:
            await _run(_close_and_unlink, fd, name)
            raise
        await _run(os.close, fd)
        return StagedBlob(hasher.hexdigest, hasher.size, hasher.crc32, head, Path(name))

    async def commit(self, staged: StagedBlob) -> bool:
        return await _run(self._commit, staged)

    async def discard(self, staged: StagedBlob) -> None:
        await _run(_unlink_quietly, staged.scratch)

    async def delete(self, hex_hash: str) -> None:
        await _run(self._delete, hex_hash)

    async def open_blob(self, hex_hash: str) -> OpenBlob:
        return await _run(self._open_blob, hex_hash)

    async def read_blob(self, hex_hash: str) -> bytes:
        return await _run(self._read_blob, hex_hash)

    async def exists(self, hex_hash: str) -> bool:
        return await _run(self.path_of(hex_hash).is_file)

    async def ready(self) -> bool:
        return await _run(self._ready)

    def _ready(self) -> bool:
        return self.store_dir.is_dir() and os.access(self.tmp_dir, os.W_OK)

    async def iter_blobs(self) -> AsyncIterator[StoredBlob]:
        for prefix in await _run(_sorted_dirs, self.store_dir):
            for blob in await _run(_list_prefix, prefix):
                yield blob

    async def _absorb_stream(
        self, fd: int, chunks: AsyncIterator[bytes], max_size: int, reserve: int
    ) -> tuple[StreamHasher, bytes]:
        """Hash and write while the next chunk arrives; at most two buffers alive."""
        hasher = StreamHasher()
        head = b""
        buffer = bytearray()
        pending: asyncio.Future[None] | None = None
        received = 0
        async for chunk in chunks:
            received += len(chunk)
            if received > max_size:
                raise PayloadTooLarge(
                    f"The upload exceeds the limit of {max_size} bytes.", limit=max_size
                )
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
            buffer += chunk
            if len(buffer) >= WRITE_CHUNK:
                if pending is not None:
                    await pending
                pending = _spawn(self._write, fd, hasher, bytes(buffer), reserve)
                buffer.clear()
        if pending is not None:
            await pending
        if buffer:
            await _run(self._write, fd, hasher, bytes(buffer), reserve)
        return hasher, head

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        _check_same_filesystem(self.store_dir, self.tmp_dir)
        self.reap_scratch()

    def reap_scratch(self) -> list[Path]:
        """Remove scratch files whose writer is gone (their flock is free)."""
        reaped = []
        for entry in self.tmp_dir.iterdir():
            if entry.name.startswith(SCRATCH_PREFIX) and _is_abandoned(entry):
                _unlink_quietly(entry)
                reaped.append(entry)
        return reaped

    def _create_scratch(self) -> tuple[int, str]:
        fd, name = tempfile.mkstemp(prefix=SCRATCH_PREFIX, dir=self.tmp_dir)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, name

    def _write(self, fd: int, hasher: StreamHasher, data: bytes, reserve: int) -> None:
        hasher.update(data)
        if reserve:
            _check_reserve(fd, len(data), reserve)
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("The store's disk is full.") from exc
            raise

    def _commit(self, staged: StagedBlob) -> bool:
        final = self.path_of(staged.hash)
        if final.exists():
            _unlink_quietly(staged.scratch)
            return False
        created_dir = not final.parent.exists()
        final.parent.mkdir(exist_ok=True)
        os.rename(staged.scratch, final)
        _fsync_dir(final.parent)
        if created_dir:
            _fsync_dir(self.store_dir)
        return True

    def _delete(self, hex_hash: str) -> None:
        path = self.path_of(hex_hash)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def _open_blob(self, hex_hash: str) -> OpenBlob:
        try:
            fd = os.open(self.path_of(hex_hash), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound("No file with this hash.", hash=hex_hash) from None
        stat = os.fstat(fd)
        return OpenBlob(fd, stat.st_size, stat.st_mtime)

    def _read_blob(self, hex_hash: str) -> bytes:
        try:
            return self.path_of(hex_hash).read_bytes()
        except FileNotFoundError:
            raise NotFound("No file with this hash.", hash=hex_hash) from None


async def _run(func: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _spawn(func: Callable[..., T], *args: object) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(None, func, *args)


def _check_reserve(fd: int, incoming: int, reserve: int) -> None:
    stat = os.fstatvfs(fd)
    if stat.f_bavail * stat.f_frsize - incoming < reserve:
        raise InsufficientStorage("The store keeps a free-space reserve and is full.")


def _check_same_filesystem(store: Path, tmp: Path) -> None:
    if store.stat().st_dev != tmp.stat().st_dev:
        raise RuntimeError(f"{store} and {tmp} must be on one filesystem (atomic rename)")


def _is_abandoned(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _close_and_unlink(fd: int, name: str) -> None:
    os.close(fd)
    _unlink_quietly(Path(name))


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sorted_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _list_prefix(prefix: Path) -> list[StoredBlob]:
    blobs = []
    for entry in sorted(prefix.iterdir()):
        stat = entry.stat()
        blobs.append(StoredBlob(entry.name, stat.st_size, stat.st_mtime))
    return blobs
