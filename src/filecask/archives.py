"""Archive id -> a planned ZIP: a folder under the archive root, or a saved bundle.

Folders: resolved inside the archive root with realpath/commonpath, so no name and no
symlink can reach outside it; a symlink whose target is outside the root is skipped. The
walk is depth-first in sorted order, so the same tree always gives the same bytes.

CRC-32s must be known before each entry's data (no data descriptors): for bundles they were
computed at upload; for folders they are computed once and cached in the metadata store by
real path, size, mtime and inode, so a change to any of those recomputes them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from filecask.bundles import path_problem
from filecask.errors import BadRequest, NotFound
from filecask.metastore import Bundle, CachedCrc, MetaStore
from filecask.zipwriter import Member, ZipPlan

log = logging.getLogger("filecask.archives")

T = TypeVar("T")

FOLDER_NAME_MAX = 255
CRC_READ = 1 << 20
ARCHIVE_MISSING = "The archive does not exist or has been deleted."


@dataclass(frozen=True, slots=True)
class DirectoryFile:
    """A file found in a folder, as it was when the archive was planned."""

    path: str
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True, slots=True)
class Archive:
    plan: ZipPlan
    filename: str
    etag: str
    last_modified: float | None


def validate_folder_name(folder: str) -> str:
    """A folder id is one plain path segment: anything else is refused before any I/O."""
    if (
        not folder
        or folder.startswith(".")
        or len(folder.encode()) > FOLDER_NAME_MAX
        or any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in folder)
    ):
        raise BadRequest("Not a valid archive id.", id=folder[:100])
    return folder


async def directory_archive(root: Path, folder: str, meta: MetaStore) -> Archive:
    validate_folder_name(folder)
    members, files = await _run(_scan_folder, root, folder)
    crcs = await _folder_crcs(files, meta)
    members = [
        Member(m.name, m.size, crcs[m.source.path], m.mtime, m.mode, m.source)
        if isinstance(m.source, DirectoryFile)
        else m
        for m in members
    ]
    plan = ZipPlan(members)
    identity = hashlib.sha256(plan.etag_material)
    for file in files:
        identity.update(f"{file.path}\0{file.inode}\0{file.mtime_ns}\n".encode())
    newest = max((m.mtime for m in members), default=None)
    return Archive(plan, "archive.zip", f'"{identity.hexdigest()}"', newest)


def bundle_archive(bundle: Bundle) -> Archive:
    """Blobs never change under their hash, so the plan alone identifies the bytes."""
    mtime = bundle.created_at.timestamp()
    members = [
        Member(e.path, e.blob.size, e.blob.crc32, mtime, source=e.blob.hash) for e in bundle.entries
    ]
    plan = ZipPlan(members)
    etag = hashlib.sha256(plan.etag_material + bundle.id.encode()).hexdigest()
    return Archive(plan, bundle.name, f'"{etag}"', mtime)


async def _folder_crcs(files: list[DirectoryFile], meta: MetaStore) -> dict[str, int]:
    cached = await meta.get_crcs([f.path for f in files])
    crcs: dict[str, int] = {}
    stale: list[DirectoryFile] = []
    for file in files:
        hit = cached.get(file.path)
        if hit and (hit.size, hit.mtime_ns, hit.inode) == (file.size, file.mtime_ns, file.inode):
            crcs[file.path] = hit.crc32
        else:
            stale.append(file)
    if stale:
        computed = await _run(_compute_crcs, stale)
        await meta.put_crcs(computed)
        crcs.update({c.path: c.crc32 for c in computed})
    return crcs


def _scan_folder(root: Path, folder: str) -> tuple[list[Member], list[DirectoryFile]]:
    """Call from an executor: walks the filesystem."""
    real_root = os.path.realpath(root)
    start = os.path.realpath(os.path.join(real_root, folder))
    if not _inside(real_root, start) or start == real_root or not os.path.isdir(start):
        raise NotFound(ARCHIVE_MISSING, id=folder)
    members: list[Member] = []
    files: list[DirectoryFile] = []
    seen_dirs = {_dir_key(start)}
    _walk(real_root, start, "", members, files, seen_dirs)
    return members, files


def _walk(
    root: str,
    directory: str,
    prefix: str,
    members: list[Member],
    files: list[DirectoryFile],
    seen_dirs: set[tuple[int, int]],
) -> None:
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        name = prefix + entry.name
        target = os.path.realpath(entry.path)
        if not _inside(root, target):
            log.warning(
                "skipping %s: its target %s is outside the archive root", entry.path, target
            )
            continue
        if path_problem(name):
            log.warning("skipping %s: the name cannot be stored in a ZIP", entry.path)
            continue
        try:
            info = os.stat(target)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            if _dir_key(target) in seen_dirs:  # a symlink loop inside the root
                continue
            seen_dirs.add(_dir_key(target))
            members.append(Member.directory(name, info.st_mtime, 0o40000 | (info.st_mode & 0o777)))
            _walk(root, target, name + "/", members, files, seen_dirs)
        elif stat.S_ISREG(info.st_mode):
            file = DirectoryFile(target, info.st_size, info.st_mtime_ns, info.st_ino)
            files.append(file)
            mode = stat.S_IFREG | (info.st_mode & 0o777)
            members.append(Member(name, info.st_size, 0, info.st_mtime, mode, file))


def _compute_crcs(files: list[DirectoryFile]) -> list[CachedCrc]:
    """Call from an executor: reads every byte of the files."""
    results = []
    for file in files:
        crc = 0
        with open(file.path, "rb") as handle:
            while chunk := handle.read(CRC_READ):
                crc = zlib.crc32(chunk, crc)
            info = os.fstat(handle.fileno())
        if (info.st_size, info.st_mtime_ns) != (file.size, file.mtime_ns):
            raise ArchiveChanged(file.path)
        results.append(CachedCrc(file.path, file.size, file.mtime_ns, file.inode, crc))
    return results


class ArchiveChanged(RuntimeError):
    """A file changed between planning an archive and sending it; the stream is abandoned
    (the client sees a cut transfer and can retry, getting a new ETag)."""


def open_directory_file(file: DirectoryFile) -> int:
    """Call from an executor: open a planned file, refusing one that has changed since."""
    fd = os.open(file.path, os.O_RDONLY | os.O_CLOEXEC)
    info = os.fstat(fd)
    if (info.st_size, info.st_mtime_ns, info.st_ino) != (file.size, file.mtime_ns, file.inode):
        os.close(fd)
        raise ArchiveChanged(file.path)
    return fd


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _dir_key(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


async def _run(func: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)
