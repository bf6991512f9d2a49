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
import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import secrets
import stat as stat_module
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from filecask.errors import InsufficientStorage, NotFound, PayloadTooLarge
from filecask.hashes import StreamHasher, fanout
from filecask.offload import run, run_owned
from filecask.storage.blobs.base import Leftover, OpenBlob, StagedBlob, StoredBlob

T = TypeVar("T")

WRITE_CHUNK = 1 << 20
READ_CHUNK = 1 << 20
"""Bytes gathered before one executor write: few hops, bounded memory (two chunks live)."""
IDLE_WRITE = 64 << 10
"""Bytes held back at most while the upload waits for its client: when the source says it
is about to wait (an empty chunk), what it gave is written if it is this much or more,
so a stalled or trickling upload holds less than this of its body, and a client that
sends a byte at a time still costs one write per IDLE_WRITE."""
HEAD_BYTES = 8192
SCRATCH_PREFIX = "upload-"
INTENT_PREFIX = "commit-"
NAMED_SCRATCH_PREFIX = SCRATCH_PREFIX + "m-"
"""Scratch made by mkstemp, which has an instant with a name but no lock."""
SCRATCH_GRACE = 5.0
"""Seconds an empty, unlocked mkstemp scratch file is spared: see `_create_scratch`."""
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})


class DiskBlobStore:
    gives_fds = True

    def __init__(self, data_dir: Path, *, reap_on_open: bool = True) -> None:
        self.reap_on_open = reap_on_open
        """fsck and gc open the store without reaping: they report what they remove."""
        self.store_dir = data_dir / "store"
        self.tmp_dir = data_dir / "tmp"
        self.quarantine_dir = data_dir / "quarantine"
        self._staged: dict[str, int] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        """Scratch name -> its open, locked fd, for every staged blob not yet committed."""

    async def open(self) -> None:
        await run(self._prepare)

    async def close(self) -> None:
        return None

    def path_of(self, hex_hash: str) -> Path:
        return self.store_dir / fanout(hex_hash)

    async def stage(
        self, chunks: AsyncIterator[bytes], *, max_size: int, reserve: int = 0
    ) -> StagedBlob:
        fd, name = await run_owned(self._create_scratch, release=_close_and_unlink_pair)
        inflight: list[asyncio.Future[None]] = []
        try:
            hasher, head = await self._absorb_stream(fd, chunks, max_size, reserve, inflight)
            inflight.append(_spawn(fsync_or_507, fd))
            await inflight[-1]
        except BaseException:
            await _after_threads(self._cleanups, inflight, _close_and_unlink, fd, name)
            raise
        # The fd (and its lock) stays open until commit or discard: unlocked, the staged
        # file would look abandoned to a reaper in another process.
        self._staged[name] = fd
        return StagedBlob(hasher.hexdigest, hasher.size, hasher.crc32, head, Path(name))

    async def adopt(self, fd: int, path: Path) -> StagedBlob:
        """Stage a file already written and fsynced in tmp/ (a finished resumable upload),
        hashing it in full in a worker thread. `fd` must be open on `path` and hold its
        exclusive flock: the store takes it over exactly like a scratch file of `stage`, so
        the lock stays held through `commit` (a reaper never sees it as abandoned) and
        `settle`/`discard` unlink the file and close `fd`."""
        if path.parent != self.tmp_dir:
            raise ValueError(f"{path} is not in {self.tmp_dir}")
        hasher, head = await run(_hash_fd, fd)
        self._staged[str(path)] = fd
        return StagedBlob(hasher.hexdigest, hasher.size, hasher.crc32, head, path)

    async def commit(self, staged: StagedBlob) -> bool:
        """Link the blob into the store and keep its scratch, renamed `commit-<hash>`, as
        the record of a commit in progress until `settle`. If this process dies before
        then, the record is found (its lock is free) and `FileStore.recover` undoes a blob
        whose reference never made it to the database: a crash leaves no orphan."""
        try:
            return await run(_full_disk_is_507, self._commit, staged)
        except BaseException:
            await self.discard(staged)
            raise

    async def settle(self, staged: StagedBlob) -> None:
        """The commit is over (reference stored, or the blob removed again)."""
        await self.discard(staged)

    async def discard(self, staged: StagedBlob) -> None:
        fd = self._staged.pop(str(staged.scratch), -1)
        if fd >= 0:
            await run(self._drop_scratch, fd, staged)

    def _drop_scratch(self, fd: int, staged: StagedBlob) -> None:
        """Unlink our scratch under whichever name it has now, and never another upload's
        commit record of the same content (hence the inode check)."""
        try:
            ours = os.fstat(fd).st_ino
            for path in (Path(staged.scratch), self._intent_path(staged.hash)):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_ino == ours:
                        path.unlink()
        finally:
            os.close(fd)

    async def interrupted_commits(self) -> list[str]:
        return await run(self._interrupted_commits)

    async def commit_pending(self, hex_hash: str) -> bool:
        return await run(self._intent_path(hex_hash).exists)

    async def forget_commit(self, hex_hash: str) -> None:
        await run(_remove_if_abandoned, self._intent_path(hex_hash))

    def _intent_path(self, hex_hash: str) -> Path:
        return self.tmp_dir / f"{INTENT_PREFIX}{hex_hash}"

    def _interrupted_commits(self) -> list[str]:
        return sorted(
            entry.name.removeprefix(INTENT_PREFIX)
            for entry in self.tmp_dir.iterdir()
            if entry.name.startswith(INTENT_PREFIX) and _is_abandoned(entry)
        )

    async def delete(self, hex_hash: str) -> None:
        await run(self._delete, hex_hash)

    async def open_blob(self, hex_hash: str) -> OpenBlob:
        return await run_owned(self._open_blob, hex_hash, release=_close_blob)

    async def read_blob(self, hex_hash: str) -> bytes:
        return await run(self._read_blob, hex_hash)

    def blob_opener(self) -> Callable[[str], int]:
        return self._open_blob_fd

    def _open_blob_fd(self, hex_hash: str) -> int:
        fd = self._open_blob(hex_hash).fd
        assert fd is not None
        return fd

    async def read_range(
        self, hex_hash: str, offset: int, length: int
    ) -> AsyncGenerator[bytes, None]:
        """For callers that cannot sendfile (downloads use `open_blob` and sendfile): pread
        in the executor, one READ_CHUNK at a time."""
        blob = await self.open_blob(hex_hash)
        try:
            position, end = offset, offset + length
            while position < end:
                data = await run(os.pread, blob.fd, min(READ_CHUNK, end - position), position)
                if not data:
                    raise EOFError(f"blob {hex_hash} ended {end - position} bytes early")
                position += len(data)
                yield data
        finally:
            await asyncio.shield(run(_close_blob, blob))

    async def download_url(
        self, hex_hash: str, *, content_type: str, disposition: str
    ) -> str | None:
        """Never: files on disk are sent by filecask itself (sendfile)."""
        return None

    async def holds_blobs(self) -> bool:
        return await run(_store_holds_files, self.store_dir)

    async def exists(self, hex_hash: str) -> bool:
        return await run(self.path_of(hex_hash).is_file)

    async def ready(self) -> bool:
        return await run(self._ready)

    def _ready(self) -> bool:
        return self.store_dir.is_dir() and os.access(self.tmp_dir, os.W_OK)

    async def iter_blobs(self) -> AsyncIterator[StoredBlob]:
        for entry in await run(_top_entries, self.store_dir):
            if isinstance(entry, Path):
                for blob in await run(_list_prefix, entry):
                    yield blob
            else:
                yield entry

    async def _absorb_stream(
        self,
        fd: int,
        chunks: AsyncIterator[bytes],
        max_size: int,
        reserve: int,
        inflight: list[asyncio.Future[None]],
    ) -> tuple[StreamHasher, bytes]:
        """Hash and write while the next chunk arrives; at most two buffers alive (one of
        WRITE_CHUNK gathering, one being written), and less than IDLE_WRITE gathered while
        `chunks` waits for its client (it says so with an empty chunk). Every thread hop
        on `fd` is added to `inflight`, so a failure can wait for them before closing it."""
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
            if len(buffer) >= (WRITE_CHUNK if chunk else IDLE_WRITE):
                if pending is not None:
                    await pending
                pending = _spawn(self._write, fd, hasher, bytes(buffer), reserve)
                inflight.append(pending)
                buffer.clear()
        if pending is not None:
            await pending
        if buffer:
            inflight.append(_spawn(self._write, fd, hasher, bytes(buffer), reserve))
            await inflight[-1]
        return hasher, head

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        _check_same_filesystem(self.store_dir, self.tmp_dir)
        if self.reap_on_open:
            self.reap_scratch()

    def reap_scratch(self) -> list[Path]:
        """Remove scratch files whose writer is gone (their flock is free)."""
        reaped = []
        for entry in self.tmp_dir.iterdir():
            if entry.name.startswith(SCRATCH_PREFIX) and _remove_if_abandoned(entry):
                reaped.append(entry)
        return reaped

    async def digest(self, key: str) -> tuple[str, int]:
        return await run(_sha256_of, self._entry(key))

    async def quarantine(self, key: str) -> str:
        return await run(self._quarantine, key)

    async def leftovers(self) -> list[Leftover]:
        return await run(self._leftovers)

    async def remove_leftover(self, leftover: Leftover) -> bool:
        return await run(_remove_if_abandoned, self.tmp_dir / leftover.name)

    def _entry(self, key: str) -> Path:
        """A listed key back to its path; keys come from our own listing, but a key with
        a way out of the store is refused all the same."""
        parts = key.split("/")
        if len(parts) > 2 or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a store key: {key!r}")
        return self.store_dir.joinpath(*parts)

    def _quarantine(self, key: str) -> str:
        self.quarantine_dir.mkdir(exist_ok=True)
        name = key.replace("/", "_")
        target = self.quarantine_dir / name
        for n in itertools.count(1):  # never replace what an earlier run moved here
            if not os.path.lexists(target):
                break
            target = self.quarantine_dir / f"{name}.{n}"
        os.rename(self._entry(key), target)
        _fsync_dir(self.quarantine_dir)
        return str(target)

    def _leftovers(self) -> list[Leftover]:
        found = []
        for entry in sorted(self.tmp_dir.iterdir()):
            if entry.name.startswith(SCRATCH_PREFIX) and _is_abandoned(entry):
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # its owner was dropping it: not a leftover
                    continue
                found.append(Leftover(entry.name, stat.st_size, stat.st_mtime))
        return found

    def _create_scratch(self) -> tuple[int, str]:
        """A scratch file that is locked before anyone can find it by name.

        With mkstemp alone, a reaper in another process could find the new file in the
        instant before our flock and take it for a dead upload's. An unnamed O_TMPFILE is
        locked first and only then linked under its scratch name. Filesystems without
        O_TMPFILE fall back to mkstemp; reapers there also spare files younger than
        SCRATCH_GRACE."""
        try:
            fd = os.open(self.tmp_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            return self._create_named_scratch()
        dir_fd = os.open(self.tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, self._link_scratch(fd, dir_fd)
        except FileNotFoundError:  # no /proc: name it the portable way
            os.close(fd)
            return self._create_named_scratch()
        except BaseException:
            os.close(fd)
            raise
        finally:
            os.close(dir_fd)

    def _link_scratch(self, fd: int, dir_fd: int) -> str:
        # dst_dir_fd makes CPython call linkat() with AT_SYMLINK_FOLLOW (plain link() would
        # try to link the /proc symlink itself).
        for _ in range(100):
            name = SCRATCH_PREFIX + secrets.token_hex(8)
            try:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            except FileExistsError:
                continue
            return str(self.tmp_dir / name)
        raise FileExistsError("no free scratch name")

    def _create_named_scratch(self) -> tuple[int, str]:
        fd, name = tempfile.mkstemp(prefix=NAMED_SCRATCH_PREFIX, dir=self.tmp_dir)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, name

    def _write(self, fd: int, hasher: StreamHasher, data: bytes, reserve: int) -> None:
        hasher.update(data)
        if reserve:
            _check_reserve(fd, len(data), reserve)
        view = memoryview(data)
        with disk_full_as_507():
            while view:
                written = os.write(fd, view)
                view = view[written:]

    def _commit(self, staged: StagedBlob) -> bool:
        final = self.path_of(staged.hash)
        if final.exists():
            return False
        intent = self._intent_path(staged.hash)
        os.rename(staged.scratch, intent)
        created_dir = not final.parent.exists()
        final.parent.mkdir(exist_ok=True)
        os.link(intent, final)
        try:
            _fsync_dir(self.tmp_dir)
            _fsync_dir(final.parent)
            if created_dir:
                _fsync_dir(self.store_dir)
        except BaseException:
            _unlink_quietly(final)
            raise
        return True

    def _delete(self, hex_hash: str) -> None:
        path = self.path_of(hex_hash)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def _open_blob(self, hex_hash: str) -> OpenBlob:
        # O_NOFOLLOW: a symlink planted in the store must not lead a download outside it.
        try:
            fd = os.open(self.path_of(hex_hash), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound("No file with this hash.", hash=hex_hash) from exc
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise NotFound("No file with this hash.", hash=hex_hash) from exc
        stat = os.fstat(fd)
        return OpenBlob(fd, stat.st_size, stat.st_mtime)

    def _read_blob(self, hex_hash: str) -> bytes:
        blob = self._open_blob(hex_hash)
        assert blob.fd is not None
        with open(blob.fd, "rb", buffering=0) as file:
            return file.read()


async def _after_threads(
    keep: set[asyncio.Task[None]],
    inflight: list[asyncio.Future[None]],
    cleanup: Callable[..., None],
    *args: object,
) -> None:
    """Run `cleanup` in a thread once every thread hop still using its fd has returned
    (closing an fd under a running write could let the number be reused mid-write), and see
    it through even if the caller is cancelled again meanwhile."""

    async def settle() -> None:
        for future in inflight:
            with contextlib.suppress(BaseException):
                await future
        await run(cleanup, *args)

    task = asyncio.ensure_future(settle())
    keep.add(task)  # the loop holds tasks weakly
    task.add_done_callback(keep.discard)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)


def _spawn(func: Callable[..., T], *args: object) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(None, func, *args)


@contextlib.contextmanager
def disk_full_as_507() -> Iterator[None]:
    """Out of space (or quota) anywhere on the way, write, fsync, mkdir: a 507, not a 500."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("The store's disk is full.") from exc
        raise


def _full_disk_is_507(func: Callable[..., T], *args: object) -> T:
    with disk_full_as_507():
        return func(*args)


def fsync_or_507(fd: int) -> None:
    # Some filesystems only find out at fsync that delayed writes do not fit.
    with disk_full_as_507():
        os.fsync(fd)


def _check_reserve(fd: int, incoming: int, reserve: int) -> None:
    stat = os.fstatvfs(fd)
    if stat.f_bavail * stat.f_frsize - incoming < reserve:
        raise InsufficientStorage("The store keeps a free-space reserve and is full.")


def _check_same_filesystem(store: Path, tmp: Path) -> None:
    if store.stat().st_dev != tmp.stat().st_dev:
        raise RuntimeError(f"{store} and {tmp} must be on one filesystem (atomic rename)")


def _is_abandoned(path: Path) -> bool:
    return _when_abandoned(path, lambda: None)


def _is_young_and_empty(path: Path, fd: int) -> bool:
    """Possibly a mkstemp scratch file in the instant before its creator locks it."""
    if not path.name.startswith(NAMED_SCRATCH_PREFIX):
        return False
    stat = os.fstat(fd)
    return stat.st_size == 0 and stat.st_mtime > time.time() - SCRATCH_GRACE


def _remove_if_abandoned(path: Path) -> bool:
    """Unlink while holding the scratch file's lock, so its writer cannot be alive."""
    return _when_abandoned(path, lambda: _unlink_quietly(path))


def _when_abandoned(path: Path, act: Callable[[], None]) -> bool:
    """If `path` is scratch whose writer is gone (its flock is free), `act` while holding
    that lock and return True."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if _is_young_and_empty(path, fd):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        act()
        return True
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as file:
        while chunk := file.read(READ_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _hash_fd(fd: int) -> tuple[StreamHasher, bytes]:
    hasher = StreamHasher()
    position = 0
    while chunk := os.pread(fd, READ_CHUNK, position):
        hasher.update(chunk)
        position += len(chunk)
    return hasher, os.pread(fd, HEAD_BYTES, 0)


def _close_and_unlink_pair(created: tuple[int, str]) -> None:
    _close_and_unlink(*created)


def _close_blob(blob: OpenBlob) -> None:
    if blob.fd is not None:
        os.close(blob.fd)


def _store_holds_files(store: Path) -> bool:
    """Any file in the store (an empty fan-out directory does not count)."""
    try:
        with os.scandir(store) as entries:
            prefixes = list(entries)
    except FileNotFoundError:
        return False
    return any(not p.is_dir() or _is_nonempty_dir(p.path) for p in prefixes)


def _is_nonempty_dir(path: str) -> bool:
    with os.scandir(path) as entries:
        return any(True for _ in entries)


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


def _top_entries(root: Path) -> list[Path | StoredBlob]:
    """The store's sub-directories to list, and anything else found at its top (strays)."""
    found: list[Path | StoredBlob] = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        stat = entry.stat(follow_symlinks=False)
        if stat_module.S_ISDIR(stat.st_mode):
            found.append(entry)
        else:
            found.append(StoredBlob(entry.name, stat.st_size, stat.st_mtime, regular=False))
    return found


def _list_prefix(prefix: Path) -> list[StoredBlob]:
    blobs = []
    for entry in sorted(prefix.iterdir()):
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted while we listed
            continue
        key = f"{prefix.name}/{entry.name}"
        regular = stat_module.S_ISREG(stat.st_mode)
        blobs.append(StoredBlob(key, stat.st_size, stat.st_mtime, regular))
    return blobs
