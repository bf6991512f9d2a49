"""The consistency checker (`filecask fsck [--repair]`) and the collector (`filecask gc`).

What "consistent" means, from the rules in `filestore`: every blob row has its bytes in the
store under its hash, with that size and that SHA-256; every blob in the store has a row;
every row is referenced by a user or by a bundle someone holds; every bundle has a holder;
nothing is left in tmp/ by a dead upload; nothing else lives in the store.

Both commands are safe while servers run on the same data directory. A verdict that leads
to a change (this blob has no row, this row has no reference) is re-checked under the
hash's lock, which every upload and delete holds across its disk and database steps, so a
commit or delete in flight is never mistaken for damage.

What repair does, and what it cannot do:
- an interrupted commit (bytes stored by an upload that died before its reference was
  committed; a server's start resolves these too): the bytes are removed.
- an orphan blob (bytes with no row, left by a crash before its reference was committed):
  removed; it was never acknowledged to anyone.
- a row nothing references (the invariant forbids it; kept for safety): dropped with its
  bytes.
- a bundle nobody holds (a user removal before it was atomic left some): removed, then the
  rows only it kept as above.
- leftover scratch files of dead uploads: removed.
- a corrupt blob (content or size not what its hash says) and stray entries: moved to
  `<data-dir>/quarantine/`, out of every download's reach, bytes kept for a person.
- a row whose bytes are missing or corrupt: cannot be repaired (the content is gone); it is
  reported with how many references point at it, and left for the owners to re-upload.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from filecask.hashes import fanout
from filecask.services import Services
from filecask.storage.changes import Topic
from filecask.tus.parts import TusFiles, sweep

_HASH = re.compile(r"[0-9a-f]{64}")

Progress = Callable[[int], None]
"""Told how many more bytes were checked."""


@dataclass(frozen=True)
class Finding:
    kind: str
    """corrupt, unreadable, missing, orphan, interrupted, holderless, unreferenced, leftover,
    expired or stray."""
    key: str
    detail: str
    size: int = 0
    fixed: bool = False
    action: str = ""


@dataclass
class Report:
    blobs: int = 0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def unresolved(self) -> list[Finding]:
        return [f for f in self.findings if not f.fixed]

    @property
    def freed(self) -> int:
        """Bytes removed from the disk by repairs (orphans, unreferenced, leftovers)."""
        return sum(f.size for f in self.findings if f.fixed and f.kind not in _MOVED)


_MOVED = frozenset({"corrupt", "stray"})


async def fsck(services: Services, *, repair: bool, progress: Progress | None = None) -> Report:
    """Re-hash every blob and compare the store with the database (see the module doc)."""
    report = Report()
    interrupted = await _interrupted_commits(services, report, repair=repair)
    await _holderless_bundles(services, report, repair=repair)
    await _unreferenced_rows(services, report, repair=repair)
    rows = await services.meta.blob_sizes()
    seen: set[str] = set(interrupted)
    async for entry in services.blobs.iter_blobs():
        hex_hash = entry.hash
        if not (entry.regular and _HASH.fullmatch(hex_hash) and entry.key == fanout(hex_hash)):
            await _stray(services, report, entry.key, entry.size, repair=repair)
            continue
        if hex_hash in seen:
            continue
        seen.add(hex_hash)
        if hex_hash in rows:
            await _verify(services, report, hex_hash, rows[hex_hash], repair=repair)
            report.blobs += 1
            report.bytes += entry.size
            if progress is not None:
                progress(rows[hex_hash])
        else:
            await _orphan(services, report, hex_hash, entry.size, repair=repair)
    for hex_hash in sorted(rows.keys() - seen):
        await _missing(services, report, hex_hash)
    await _leftovers(services, report, older_than=None, repair=repair)
    return report


async def gc(services: Services, *, grace: float, dry_run: bool = False) -> Report:
    """Remove what nothing references and is older than `grace` seconds: orphan blobs,
    unreferenced rows and dead uploads' scratch files; and, whatever their age, expired
    resumable uploads and the partial files of uploads that no longer exist (a removed
    user's, at an instance that was down): no upload can ever own those again. No
    re-hashing: cheap to run often."""
    report = Report()
    await _interrupted_commits(services, report, repair=not dry_run)
    await _holderless_bundles(services, report, repair=not dry_run)
    await _unreferenced_rows(services, report, repair=not dry_run)
    rows = await services.meta.all_blob_hashes()
    cutoff = time.time() - grace
    async for entry in services.blobs.iter_blobs():
        hex_hash = entry.hash
        is_blob = entry.regular and _HASH.fullmatch(hex_hash) and entry.key == fanout(hex_hash)
        if is_blob and hex_hash not in rows and entry.mtime <= cutoff:
            await _orphan(services, report, hex_hash, entry.size, repair=not dry_run)
    await _leftovers(services, report, older_than=cutoff, repair=not dry_run)
    await _expired_uploads(services, report, repair=not dry_run)
    return report


async def _interrupted_commits(services: Services, report: Report, *, repair: bool) -> set[str]:
    undone = await services.files.recover(undo=repair)
    for hex_hash in undone:
        detail = "stored by an upload that died before its reference was committed"
        report.findings.append(Finding("interrupted", hex_hash, detail, 0, repair, "removed"))
    return set(undone)


async def _verify(
    services: Services, report: Report, hex_hash: str, size: int, *, repair: bool
) -> None:
    if await _looks_intact(services, report, hex_hash, size) is not False:
        return
    async with services.files.locks.hold(hex_hash):
        # Again, under the lock: the blob may have been deleted and uploaded afresh since.
        if await services.meta.get_blob(hex_hash) is None:
            return
        try:
            actual, on_disk = await services.blobs.digest(fanout(hex_hash))
        except FileNotFoundError:
            return
        if actual == hex_hash and on_disk == size:
            return
        refs = await services.meta.references_to(hex_hash)
        detail = (
            f"{on_disk} bytes hashing to {actual}, recorded as {size} bytes;"
            f" {refs} reference(s) point at lost content"
        )
        if not repair:
            report.findings.append(Finding("corrupt", hex_hash, detail, on_disk))
            return
        where = await services.blobs.quarantine(fanout(hex_hash))
    # Servers may hold the bad bytes in their small-file caches: make every one (on every
    # machine) drop them.
    await services.meta.announce(Topic.BLOBS)
    action = f"moved to {where}; the content cannot be restored: re-upload it"
    report.findings.append(Finding("corrupt", hex_hash, detail, on_disk, False, action))


async def _looks_intact(
    services: Services, report: Report, hex_hash: str, size: int
) -> bool | None:
    """True if the content matches; False if not; None if it is gone or cannot be read
    (reported here: a failing disk must not stop the check of every other blob)."""
    try:
        actual, on_disk = await services.blobs.digest(fanout(hex_hash))
    except FileNotFoundError:  # deleted (last reference gone) while we looked
        return None
    except OSError as exc:
        detail = f"cannot be read: {exc}; its content may be lost"
        report.findings.append(Finding("unreadable", hex_hash, detail, size))
        return None
    return actual == hex_hash and on_disk == size


async def _orphan(
    services: Services, report: Report, hex_hash: str, size: int, *, repair: bool
) -> None:
    async with services.files.locks.hold(hex_hash):
        if await services.meta.get_blob(hex_hash) is not None:
            return  # committed by an upload in flight
        if not await services.blobs.exists(hex_hash):
            return
        detail = f"{size} bytes in the store with no row (an upload cut before its commit)"
        if repair:
            await services.blobs.delete(hex_hash)
        report.findings.append(Finding("orphan", hex_hash, detail, size, repair, "removed"))


async def _missing(services: Services, report: Report, hex_hash: str) -> None:
    async with services.files.locks.hold(hex_hash):
        if await services.meta.get_blob(hex_hash) is None:
            return  # deleted meanwhile
        if await services.blobs.exists(hex_hash):
            return  # uploaded meanwhile
        refs = await services.meta.references_to(hex_hash)
        detail = f"a row with no bytes in the store; {refs} reference(s) point at lost content"
        action = "the content cannot be restored: re-upload it"
        report.findings.append(Finding("missing", hex_hash, detail, action=action))


async def _holderless_bundles(services: Services, report: Report, *, repair: bool) -> None:
    """Bundles nobody holds (a user removal before it was atomic left them, their links
    still serving): removed whatever their age, since a bundle is made with its first
    holder in one transaction; the blobs only they named are then unreferenced rows."""
    for bundle_id, entries in await services.meta.holderless_bundles():
        detail = f"a bundle of {entries} entries that nobody holds"
        if repair and await services.meta.drop_holderless_bundle(bundle_id) is None:
            continue  # held again (made afresh) or removed meanwhile
        report.findings.append(Finding("holderless", bundle_id, detail, 0, repair, "removed"))


async def _unreferenced_rows(services: Services, report: Report, *, repair: bool) -> None:
    for hex_hash in await services.meta.unreferenced_blobs():
        async with services.files.locks.hold(hex_hash):
            blob = await services.meta.get_blob(hex_hash)
            if blob is None:
                continue
            detail = f"{blob.size} bytes kept by a row that nothing references"
            fixed = repair and await services.meta.drop_blob_if_unreferenced(hex_hash)
            if fixed:
                await services.blobs.delete(hex_hash)
            if repair and not fixed:
                continue  # referenced again meanwhile
            finding = Finding("unreferenced", hex_hash, detail, blob.size, fixed, "removed")
            report.findings.append(finding)


async def _leftovers(
    services: Services, report: Report, *, older_than: float | None, repair: bool
) -> None:
    for leftover in await services.blobs.leftovers():
        if older_than is not None and leftover.mtime > older_than:
            continue
        detail = f"{leftover.size} bytes of scratch left by an upload whose process died"
        fixed = repair and await services.blobs.remove_leftover(leftover)
        finding = Finding("leftover", leftover.name, detail, leftover.size, fixed, "removed")
        report.findings.append(finding)


async def _expired_uploads(services: Services, report: Report, *, repair: bool) -> None:
    """Expired resumable uploads (row and bytes), and tus files with no row (stray): the
    row is always made before the file, so a file without one is certainly dead."""
    files = TusFiles(services.blobs.tmp_dir)
    for item in await sweep(services.meta, files, dry_run=not repair):
        kind, why = ("expired", "an unfinished resumable upload past its expiry")
        if not item.expired:
            kind, why = ("leftover", "bytes of a resumable upload that no longer exists")
        detail = f"{item.size} bytes of {why}" if item.size else why
        report.findings.append(Finding(kind, item.name, detail, item.size, repair, "removed"))


async def _stray(services: Services, report: Report, key: str, size: int, *, repair: bool) -> None:
    detail = f"{size} bytes under a name that is not ab/<sha256>"
    if not repair:
        report.findings.append(Finding("stray", key, detail, size))
        return
    where = await services.blobs.quarantine(key)
    report.findings.append(Finding("stray", key, detail, size, True, f"moved to {where}"))
