"""Archive id -> a planned ZIP: a folder under the archive root, or a saved bundle.

Folders: resolved inside the archive root with realpath/commonpath, so no name and no
symlink can reach outside it. An archive holds only what lies under its own folder: a
symlink met in the walk whose target is outside that folder (another folder of the root,
the root itself, a dot-folder, anything outside) is left out; a folder of the root that is
itself a symlink is served only if its target is a folder of the root that is neither the
root nor in a dot-folder. Left-out symlinks are logged once per folder and set of
left-out entries (not per request). The walk is depth-first in sorted order, so the same
tree always gives the same bytes.

Entry names follow the rules of `names.py` (safe to extract on Windows and macOS): a name
that breaks them (a non-UTF-8 name on disk, `CON.txt`, `a:b`, `Readme`/`README`...) is
served renamed (`safe_entry_names`), never dropped; bundles saved before those rules
existed are served the same way. The renames are logged with the left-out symlinks.

CRC-32s must be known before each entry's data (no data descriptors): for bundles they were
computed at upload; for folders they are computed once and cached in the metadata store by
real path, size, mtime and inode, so a change to any of those recomputes them.

Planning a folder of thousands of files costs tens of milliseconds of CPU (the CRC lookup,
every header of the plan); a CMS links the same folders again and again, so each process
keeps the plans of recent folders and reuses one while a fresh walk of the folder finds
exactly the same entries (names, sizes, mtimes, inodes). Only the walk is paid per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from filecask.archives.zipplan import Member, ZipPlan
from filecask.errors import BadRequest, NotFound
from filecask.names import PATH_MAX_BYTES, safe_entry_names, safe_file_name, shown
from filecask.offload import run
from filecask.storage.meta import Bundle, CachedCrc, MetaStore

log = logging.getLogger("filecask.archives")


FOLDER_NAME_MAX = 255
REPORTED_FOLDERS = 4096
"""Folders whose last warning (left-out symlinks, renamed entries) is remembered, so it is
logged again only when it changes."""
REPORT_EXAMPLES = 5
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


class FolderPlans:
    """Recent folders' plans, each with the walk it was made from; bounded by the total
    number of entries kept."""

    def __init__(self, max_members: int = 200_000) -> None:
        self._max_members = max_members
        self._members = 0
        self._plans: OrderedDict[str, tuple[list[Found], Archive]] = OrderedDict()
        self._reported: OrderedDict[str, int] = OrderedDict()

    def is_new_report(self, key: str, report: str) -> bool:
        """Whether `report` (a warning, "" for none) differs from the last one for `key`
        (a folder and a kind of warning): only a new one is logged."""
        digest = hash(report)
        if self._reported.get(key, hash("")) == digest:
            if key in self._reported:
                self._reported.move_to_end(key)
            return False
        self._reported[key] = digest
        self._reported.move_to_end(key)
        while len(self._reported) > REPORTED_FOLDERS:
            self._reported.popitem(last=False)
        return True

    def get(self, folder: str, scanned: list[Found]) -> Archive | None:
        entry = self._plans.get(folder)
        if entry is None or entry[0] != scanned:
            return None
        self._plans.move_to_end(folder)
        return entry[1]

    def put(self, folder: str, scanned: list[Found], archive: Archive) -> None:
        old = self._plans.pop(folder, None)
        if old is not None:
            self._members -= len(old[0])
        if len(scanned) > self._max_members:
            return
        self._plans[folder] = (scanned, archive)
        self._members += len(scanned)
        while self._members > self._max_members:
            self._members -= len(self._plans.popitem(last=False)[1][0])


class BundlePlans:
    """Recent bundles' archives (their ZIP plans), by bundle id; bounded by the total number
    of entries kept (`max_members`), least recently used first out.

    Planning a bundle of 11,500 entries costs about 0.1 s of CPU, and an anonymous client
    may ask for it again and again (HEAD is cheap for it): each process plans a bundle
    once, in a worker thread, and concurrent requests for it share that one planning.

    A bundle's entries never change under its id (the id is the hash of its manifest), but
    a bundle can be deleted, and made again later with a new `created_at` (every entry's
    mtime). So each request still looks its row up (`bundle_created_at`, one indexed
    read, in the database every instance and worker shares): a deleted bundle is a 404 at
    once everywhere, and a cached plan is used only for the same `created_at`. Nothing
    needs to be told of a deletion; the entry of a deleted bundle ages out.

    At most `max_building` bundles are planned at once per process (others wait, holding
    nothing), so many large bundles asked for together cannot fill memory with rows."""

    def __init__(self, max_members: int = 100_000, max_building: int = 2) -> None:
        self._max_members = max_members
        self._members = 0
        self._plans: OrderedDict[str, tuple[datetime, Archive]] = OrderedDict()
        self._building: dict[tuple[str, datetime], asyncio.Future[Archive | None]] = {}
        self._slots = asyncio.Semaphore(max_building)

    async def get(self, meta: MetaStore, bundle_id: str) -> Archive | None:
        """The bundle's archive, or None if there is no such bundle."""
        created = await meta.bundle_created_at(bundle_id)
        if created is None:
            self._forget(bundle_id)
            return None
        entry = self._plans.get(bundle_id)
        if entry is not None and entry[0] == created:
            self._plans.move_to_end(bundle_id)
            return entry[1]
        key = (bundle_id, created)
        building = self._building.get(key)
        if building is None:
            building = asyncio.ensure_future(self._build(meta, bundle_id))
            self._building[key] = building
            building.add_done_callback(lambda done: self._built(key, done))
        # Shielded: a client that leaves does not cancel the planning others wait for.
        return await asyncio.shield(building)

    def _built(self, key: tuple[str, datetime], done: asyncio.Future[Archive | None]) -> None:
        self._building.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody awaited any more is not logged

    async def _build(self, meta: MetaStore, bundle_id: str) -> Archive | None:
        async with self._slots:
            bundle = await meta.get_bundle(bundle_id)
            if bundle is None:
                return None
            archive = await run(bundle_archive, bundle)
        self._put(bundle.id, bundle.created_at, archive)
        return archive

    def _put(self, bundle_id: str, created: datetime, archive: Archive) -> None:
        self._forget(bundle_id)
        size = len(archive.plan.members)
        if size > self._max_members:
            return
        self._plans[bundle_id] = (created, archive)
        self._members += size
        while self._members > self._max_members:
            self._members -= len(self._plans.popitem(last=False)[1][1].plan.members)

    def _forget(self, bundle_id: str) -> None:
        old = self._plans.pop(bundle_id, None)
        if old is not None:
            self._members -= len(old[1].plan.members)

    def __len__(self) -> int:
        return len(self._plans)


async def directory_archive(
    root: Path, folder: str, meta: MetaStore, plans: FolderPlans | None = None
) -> Archive:
    validate_folder_name(folder)
    found, left_out = await run(_scan_folder, root, folder)
    _report(plans, folder, "links", _links_report(left_out))
    known = plans.get(folder, found) if plans is not None else None
    if known is not None:
        return known
    members, files, renamed, too_long = await run(_members, found)
    _report(plans, folder, "names", _names_report(renamed, too_long))
    archive = await _plan_folder(members, files, meta)
    if plans is not None:
        plans.put(folder, found, archive)
    return archive


def _report(plans: FolderPlans | None, folder: str, kind: str, report: str) -> None:
    """Log `report` as one warning line about `folder`, unless it is the one last logged
    for it (left-out links are found on every request; they are logged once)."""
    if (plans is None or plans.is_new_report(f"{kind}\0{folder}", report)) and report:
        log.warning("archive folder %s: %s", shown(folder), report)


def _examples(pairs: list[tuple[str, str]]) -> str:
    shown_pairs = ", ".join(f"{shown(a)} -> {shown(b)}" for a, b in pairs[:REPORT_EXAMPLES])
    more = len(pairs) - REPORT_EXAMPLES
    return shown_pairs + (f" and {more} more" if more > 0 else "")


def _links_report(left_out: list[tuple[str, str]]) -> str:
    if not left_out:
        return ""
    return f"left out {len(left_out)} symlink(s) leading outside the folder: " + _examples(left_out)


def _names_report(renamed: list[tuple[str, str]], too_long: list[str]) -> str:
    parts = []
    if renamed:
        parts.append(
            f"renamed {len(renamed)} entr{'y' if len(renamed) == 1 else 'ies'} to names "
            f"safe on Windows and macOS: {_examples(renamed)}"
        )
    if too_long:
        parts.append(
            f"left out {len(too_long)} entr{'y' if len(too_long) == 1 else 'ies'} whose path "
            f"is over {PATH_MAX_BYTES} bytes: "
            + ", ".join(shown(name, 60) for name in too_long[:REPORT_EXAMPLES])
        )
    return "; ".join(parts)


async def _plan_folder(
    scanned: list[Member], files: list[DirectoryFile], meta: MetaStore
) -> Archive:
    crcs = await _folder_crcs(files, meta)
    members = [
        Member(m.name, m.size, crcs[m.source.path], m.mtime, m.mode, m.source)
        if isinstance(m.source, DirectoryFile)
        else m
        for m in scanned
    ]
    plan = ZipPlan(members)
    identity = hashlib.sha256(plan.etag_material)
    for file in files:
        identity.update(os.fsencode(file.path) + f"\0{file.inode}\0{file.mtime_ns}\n".encode())
    newest = max((m.mtime for m in members), default=None)
    return Archive(plan, "archive.zip", f'"{identity.hexdigest()}"', newest)


def bundle_archive(bundle: Bundle) -> Archive:
    """Blobs never change under their hash, so the plan alone identifies the bytes. CPU
    bound (0.1 s for 11,500 entries): call it from a worker thread (`BundlePlans`).

    A bundle saved before the rules of `names.py` may hold paths they refuse (`CON.txt`,
    `Readme`/`README`, a bidi control...): it is still served under its id, with those
    entries renamed to safe names (`safe_entry_names`) and a safe download name."""
    mtime = bundle.created_at.timestamp()
    names = safe_entry_names([(e.path, False) for e in bundle.entries])
    members = [
        Member(name or e.path, e.blob.size, e.blob.crc32, mtime, source=e.blob.hash)
        for e, name in zip(bundle.entries, names, strict=True)
    ]
    plan = ZipPlan(members)
    etag = hashlib.sha256(plan.etag_material + bundle.id.encode()).hexdigest()
    return Archive(plan, safe_file_name(bundle.name, "archive.zip"), f'"{etag}"', mtime)


async def _folder_crcs(files: list[DirectoryFile], meta: MetaStore) -> dict[str, int]:
    cached = await meta.get_crcs([_cache_key(f.path) for f in files])
    crcs: dict[str, int] = {}
    stale: list[DirectoryFile] = []
    for file in files:
        hit = cached.get(_cache_key(file.path))
        if hit and (hit.size, hit.mtime_ns, hit.inode) == (file.size, file.mtime_ns, file.inode):
            crcs[file.path] = hit.crc32
        else:
            stale.append(file)
    if stale:
        # A file reached under two names (a link to a file of the same folder) is read
        # and cached once: one row per path.
        stale = list({file.path: file for file in stale}.values())
        computed = await run(_compute_crcs, stale)
        await meta.put_crcs(computed)
        crcs.update({file.path: c.crc32 for file, c in zip(stale, computed, strict=True)})
    return crcs


def _cache_key(path: str) -> str:
    """A real path as the CRC cache's text key. A path that is not UTF-8 on disk (decoded
    with surrogate escapes) cannot be stored as text: it is keyed by `hex:` and its bytes,
    which no real (absolute) path starts with."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return "hex:" + os.fsencode(path).hex()
    return path


Found = tuple[str, str, int, int, float, int, int]
"""One walked entry: name in the archive, real path, st_mode, st_size, st_mtime, st_mtime_ns,
st_ino. A folder's list of these is what a cached plan is checked against."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _scan_folder(root: Path, folder: str) -> tuple[list[Found], list[tuple[str, str]]]:
    """Call from an executor: walks the filesystem. The entries found, and the symlinks
    left out (name in the archive, target) because they lead outside the folder."""
    real_root = os.path.realpath(root)
    start = os.path.realpath(os.path.join(real_root, folder))
    if (
        not _inside(real_root, start)
        or start == real_root
        or any(part.startswith(".") for part in Path(os.path.relpath(start, real_root)).parts)
        or not os.path.isdir(start)
    ):
        raise NotFound(ARCHIVE_MISSING, id=folder)
    found: list[Found] = []
    left_out: list[tuple[str, str]] = []
    try:
        fd = os.open(start, _DIR_FLAGS)
    except OSError:
        raise NotFound(ARCHIVE_MISSING, id=folder) from None
    try:
        _walk(start, fd, start, "", found, left_out, {_dir_key(start)})
    finally:
        os.close(fd)
    return found, left_out


def _walk(
    top: str,
    dir_fd: int,
    directory: str,
    prefix: str,
    found: list[Found],
    left_out: list[tuple[str, str]],
    seen_dirs: set[tuple[int, int]],
) -> None:
    """Lists `dir_fd` and descends through fds opened relative to it, each checked to be
    the directory that was stat()ed: a folder swapped for a symlink mid-walk can never
    lead outside the archive's folder `top`. Only a symlink met in the listing is resolved
    (realpath and commonpath are too slow to run on every entry) and must land inside
    `top`, the archive's own (real) folder: not merely inside the archive root, where it
    could publish another folder, the root itself or a dot-folder."""
    with os.scandir(dir_fd) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        name = prefix + entry.name
        path = os.path.join(directory, entry.name)
        linked = entry.is_symlink()
        target = os.path.realpath(path) if linked else path
        if linked and not _inside(top, target):
            left_out.append((name, target))
            continue
        try:
            if linked:
                info = os.stat(target, follow_symlinks=False)
            else:
                info = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append(_found(name, target, info))
        elif stat.S_ISDIR(info.st_mode) and (info.st_dev, info.st_ino) not in seen_dirs:
            seen_dirs.add((info.st_dev, info.st_ino))  # also ends symlink loops
            opened_as = target if linked else entry.name
            _descend(top, dir_fd, opened_as, target, info, name, found, left_out, seen_dirs)


def _descend(
    top: str,
    parent_fd: int,
    opened_as: str,
    target: str,
    info: os.stat_result,
    name: str,
    found: list[Found],
    left_out: list[tuple[str, str]],
    seen_dirs: set[tuple[int, int]],
) -> None:
    try:
        # Relative to the parent's fd for a plain entry; an absolute, resolved path
        # (dir_fd ignored) for a symlink's target.
        child = os.open(opened_as, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return
    try:
        now = os.fstat(child)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            log.warning("skipping %s: it changed while the folder was read", target)
            return
        found.append(_found(name, target, info))
        _walk(top, child, target, name + "/", found, left_out, seen_dirs)
    finally:
        os.close(child)


def _found(name: str, target: str, info: os.stat_result) -> Found:
    return (name, target, info.st_mode, info.st_size, info.st_mtime, info.st_mtime_ns, info.st_ino)


def _members(
    found: list[Found],
) -> tuple[list[Member], list[DirectoryFile], list[tuple[str, str]], list[str]]:
    """Call from an executor: the archive entries of a walk, named safely for every client
    (`safe_entry_names`); the entries renamed so (name on disk, name in the ZIP); and the
    paths left out for being over PATH_MAX_BYTES (with anything under them)."""
    kept: list[Found] = []
    too_long: list[str] = []
    for entry in found:
        if len(os.fsencode(entry[0])) <= PATH_MAX_BYTES:
            kept.append(entry)
        else:
            too_long.append(entry[0])
    names = safe_entry_names([(entry[0], stat.S_ISDIR(entry[2])) for entry in kept])
    members: list[Member] = []
    files: list[DirectoryFile] = []
    renamed: list[tuple[str, str]] = []
    for (original, target, mode, size, mtime, mtime_ns, inode), name in zip(
        kept, names, strict=True
    ):
        if name is None:  # a folder that became the same as an earlier one: merged
            continue
        if name != original:
            renamed.append((original, name))
        if stat.S_ISDIR(mode):
            members.append(Member.directory(name, mtime, 0o40000 | (mode & 0o777)))
            continue
        file = DirectoryFile(target, size, mtime_ns, inode)
        files.append(file)
        members.append(Member(name, size, 0, mtime, stat.S_IFREG | (mode & 0o777), file))
    return members, files, renamed, too_long


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
        results.append(CachedCrc(_cache_key(file.path), file.size, file.mtime_ns, file.inode, crc))
    return results


class ArchiveChanged(RuntimeError):
    """A file changed between planning an archive and sending it; the stream is abandoned
    (the client sees a cut transfer and can retry, getting a new ETag)."""


def open_directory_file(file: DirectoryFile) -> int:
    """Call from an executor: open a planned file, refusing one that has changed since."""
    # The planned path is real: a last component that is a symlink now was swapped in.
    fd = os.open(file.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
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
