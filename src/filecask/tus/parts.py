"""Resumable (tus 1.0) uploads: their partial files in tmp/ and their expiry.

The rules that keep a cut upload resumable, and a crash harmless, whatever the number of
worker processes:
- The row (metadata store, `uploads` table) is the truth every worker shares; the bytes
  live in `<data-dir>/tmp/tus-<id>`, on the store's filesystem so that a finished upload
  becomes a blob by a rename, like any upload's scratch.
- A PATCH holds an exclusive `flock` on the file while it writes. The row's offset moves
  only after the new bytes are fsynced, so it never names bytes a crash could lose; bytes
  beyond the offset (a PATCH cut by a crash, a checksum mismatch) are truncated away by
  the next PATCH.
- The row is created before the file ever exists, and anything that removes both (DELETE,
  expiry) takes the file's lock first, then drops the row, then the file. A file with no
  row is therefore a leftover (a removal cut by a crash, a user removed while this
  instance was down or by another instance, whose tmp/ is not ours): nothing can ever
  give it a row again, so `sweep` removes it as soon as it sees it, under its lock.
- A user's open uploads reserve their declared length against the quota until they
  complete, are deleted or expire (`MetaStore.create_upload`), and only a PATCH that adds
  bytes moves the expiry: an upload kept open without progress ends at its expiry.
- Removing a user removes their uploads' rows with the user and then their files at once
  (`remove_upload_files`); a PATCH writing one at that moment finds its row gone and
  removes the file itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filecask.errors import FilecaskError, InsufficientStorage, Locked
from filecask.offload import run, run_owned
from filecask.storage.blobs.disk import disk_full_as_507, fsync_or_507
from filecask.storage.meta import MetaStore

TUS_PREFIX = "tus-"
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
"""128 random bits in hex: the id is the upload URL's secret part."""


class DataLost(FilecaskError):
    """The tus file holds fewer bytes than its row claims (removed by hand, a disk error)."""

    status = 410
    slug = "upload-data-lost"
    title = "Upload data lost"


@dataclass(frozen=True, slots=True)
class Removed:
    """An upload or a stray tus file that `sweep` removed (or, dry, would remove)."""

    name: str
    size: int
    expired: bool
    """True: an expired upload (its row went too); False: a tus file with no row."""


class TusFiles:
    """The partial files of resumable uploads, in `tmp_dir`. Every blocking call runs in
    the default executor."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir

    def path_of(self, upload_id: str) -> Path:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.tmp_dir / f"{TUS_PREFIX}{upload_id}"

    async def lock(self, upload_id: str, *, create: bool) -> int | None:
        """An fd on the upload's file holding its exclusive lock; Locked if another
        request holds it; None if the file does not exist and `create` is False. A caller
        cancelled meanwhile never gets the fd: it is closed, so the lock is not kept."""
        return await run_owned(_open_locked, self.path_of(upload_id), create, release=_close)

    async def truncate(self, fd: int, offset: int) -> None:
        """Cut the file back to `offset` durable bytes; DataLost if it holds fewer."""
        await run(_truncate, fd, offset)

    async def write(self, fd: int, data: bytes, position: int, reserve: int) -> None:
        await run(_pwrite_all, fd, data, position, reserve)

    async def sync(self, fd: int) -> None:
        await run(fsync_or_507, fd)

    async def remove(self, upload_id: str, fd: int | None) -> None:
        """Unlink the file (if `fd`, only while it is still the file `fd` locks) and close
        `fd`: a remover never takes away a newer file of the same name."""
        await run(_remove, self.path_of(upload_id), fd)

    async def close(self, fd: int) -> None:
        await run(os.close, fd)

    async def listing(self) -> list[tuple[str, int, float]]:
        """(upload id, size, mtime) of every tus file."""
        return await run(self._listing)

    def _listing(self) -> list[tuple[str, int, float]]:
        found = []
        for entry in sorted(self.tmp_dir.iterdir()):
            upload_id = entry.name.removeprefix(TUS_PREFIX)
            if entry.name.startswith(TUS_PREFIX) and UPLOAD_ID.fullmatch(upload_id):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    found.append((upload_id, stat.st_size, stat.st_mtime))
        return found


async def remove_upload_files(files: TusFiles, upload_ids: list[str]) -> None:
    """Remove the partial files of uploads whose rows are gone (their user was removed).
    A file locked by a PATCH is left to it: the PATCH removes it on finding no row."""
    for upload_id in upload_ids:
        fd = await _try_lock(files, upload_id)
        if fd is not None and fd != -1:
            await files.remove(upload_id, fd)


async def sweep(
    meta: MetaStore,
    files: TusFiles,
    *,
    stray_grace: float = 0.0,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[Removed]:
    """Remove expired uploads (row and bytes) and tus files that have had no row for
    `stray_grace` seconds (by default at once: see the module doc). Safe to run in every
    worker and in `gc` at once: each removal takes the file's lock (a PATCH in progress is
    skipped; it extends the expiry anyway) and re-reads the row under it. A dry run
    reports the sizes too."""
    now = now or datetime.now(UTC)
    removed: list[Removed] = []
    for upload_id in await meta.expired_uploads(now):
        fd = None if dry_run else await _try_lock(files, upload_id)
        if fd == -1:
            continue
        size = 0
        upload = await meta.get_upload(upload_id)
        if upload is None or upload.expires_at > now:
            if fd is not None:
                await files.close(fd)
            continue
        if dry_run:
            size = await run(_size_of, files.path_of(upload_id))
        else:
            if fd is not None:
                size = (await run(os.fstat, fd)).st_size
            await meta.delete_upload(upload_id)
            await files.remove(upload_id, fd)
        removed.append(Removed(upload_id, size, expired=True))
    # The listing comes before the ids: a file listed here had its row created before it,
    # so the row is in the ids read after, unless it is really gone.
    listed = await files.listing()
    known = await meta.upload_ids()
    cutoff = time.time() - stray_grace
    for upload_id, size, mtime in listed:
        if upload_id in known or mtime > cutoff:
            continue
        if not dry_run:
            fd = await _try_lock(files, upload_id)
            if fd is None or fd == -1:
                continue
            if await meta.get_upload(upload_id) is not None:
                await files.close(fd)
                continue
            await files.remove(upload_id, fd)
        removed.append(Removed(f"{TUS_PREFIX}{upload_id}", size, expired=False))
    return removed


async def _try_lock(files: TusFiles, upload_id: str) -> int | None:
    """The locked fd, None if there is no file, -1 if a request holds it now."""
    try:
        return await files.lock(upload_id, create=False)
    except Locked:
        return -1


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _open_locked(path: Path, create: bool) -> int | None:
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    for _ in range(10):
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(
                "Another request is writing to this upload; retry when it has finished.",
                headers={"Retry-After": "1"},
            ) from None
        # The holder before us may have removed the file: only a lock on the file that
        # still has the name counts.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
        if not create:
            return None
    raise Locked("The upload's file keeps changing; retry.", headers={"Retry-After": "1"})


def _truncate(fd: int, offset: int) -> None:
    size = os.fstat(fd).st_size
    if size < offset:
        raise DataLost(
            f"The server holds {size} of the {offset} bytes received; start a new upload."
        )
    if size > offset:
        os.ftruncate(fd, offset)
        fsync_or_507(fd)


def _pwrite_all(fd: int, data: bytes, position: int, reserve: int) -> None:
    if reserve:
        stat = os.fstatvfs(fd)
        if stat.f_bavail * stat.f_frsize - len(data) < reserve:
            raise InsufficientStorage("The store keeps a free-space reserve and is full.")
    view = memoryview(data)
    with disk_full_as_507():
        while view:
            written = os.pwrite(fd, view, position)
            view = view[written:]
            position += written


def _remove(path: Path, fd: int | None) -> None:
    try:
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()
    finally:
        if fd is not None:
            os.close(fd)
