"""The file store: content-addressed blobs plus per-user references, kept in step.

The rules that keep the disk and the database in agreement, whatever runs concurrently and
wherever a process dies:
- Upload: stream to scratch and hash (no lock), then under the hash's lock make the blob
  visible on disk *before* committing the reference. A crash in between leaves a blob with
  no row, never a row with no blob; the blob store keeps a record of the commit until the
  row is in, so the next start (`recover`) removes such a blob.
- Delete: under the hash's lock commit the reference's removal, then remove the bytes if
  it was the last reference. A crash in between leaves an orphan blob; `fsck --repair` and
  `gc` remove it.
- The locked sections are shielded from cancellation (a client hanging up mid-commit), so
  they always finish both steps or undo the first.
- Removing a user removes what they kept: references, bundle holds (the blobs nothing else
  keeps leave the disk) and unfinished resumable uploads with their partial files.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from filecask.archives.manifest import Manifest
from filecask.errors import Conflict, Forbidden, HashMismatch, NotFound, NotHeld
from filecask.faults import CrashPoints
from filecask.mediatypes import guess_type
from filecask.names import validate_file_name
from filecask.storage.blobs import BlobStore, StagedBlob
from filecask.storage.locks import Locks
from filecask.storage.meta import BlobInfo, FileRecord, MetaStore, MissingBlobs, RemoveOutcome, User
from filecask.tus.parts import TusFiles, remove_upload_files

T = TypeVar("T")

NOT_HELD_LISTED = 100
"""At most this many of a refused bundle's unheld hashes are named in the answer."""


class FileStore:
    def __init__(
        self,
        meta: MetaStore,
        blobs: BlobStore,
        locks: Locks,
        crash: CrashPoints | None = None,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.locks = locks
        self.crash = crash or CrashPoints()
        self._unfinished: set[asyncio.Task[Any]] = set()

    async def finish(self, step: Coroutine[Any, Any, T]) -> T:
        """Run a disk-and-database step to its end even if the caller is cancelled (a
        client hanging up mid-commit), and keep track of it, so that a shutdown can wait
        for it (`drain`) before the stores are closed under it."""
        task = asyncio.ensure_future(step)
        self._unfinished.add(task)
        task.add_done_callback(self._unfinished.discard)
        return await asyncio.shield(task)

    async def drain(self, limit: float = 30.0) -> None:
        """Wait for the steps still running (at shutdown, after the server stopped taking
        requests); their locks and connections must outlive them."""
        if self._unfinished:
            await asyncio.wait(set(self._unfinished), timeout=limit)

    async def upload(
        self,
        user: User,
        chunks: AsyncIterator[bytes],
        *,
        name: str | None,
        max_size: int,
        reserve: int = 0,
        expected_hash: str | None = None,
    ) -> tuple[FileRecord, bool]:
        """Store the stream for `user`; True if this created the user's reference.
        `reserve` bytes of the disk stay free (507 rather than filling it)."""
        if name is not None:
            validate_file_name(name)
        staged = await self.blobs.stage(chunks, max_size=max_size, reserve=reserve)
        self.crash.reached("upload.staged")
        if expected_hash is not None and staged.hash != expected_hash:
            await self.blobs.discard(staged)
            raise HashMismatch(
                "The uploaded content does not have the hash named in the URL; nothing was stored.",
                expected=expected_hash,
                actual=staged.hash,
            )
        return await self.finish(self._commit(user, staged, name))

    async def store_staged(
        self, user: User, staged: StagedBlob, *, name: str | None, upload_id: str | None = None
    ) -> tuple[FileRecord, bool]:
        """Commit a blob staged outside `upload` (a finished resumable upload, `upload_id`,
        whose own reservation is then not counted against it) with the same hash lock,
        dedup, reference and quota as an upload; the staged copy is gone after."""
        return await self.finish(self._commit(user, staged, name, upload_id))

    async def _commit(
        self, user: User, staged: StagedBlob, name: str | None, upload_id: str | None = None
    ) -> tuple[FileRecord, bool]:
        blob = BlobInfo(staged.hash, staged.size, staged.crc32, guess_type(name, staged.head))
        async with contextlib.AsyncExitStack() as held:
            try:
                await held.enter_async_context(self.locks.hold(staged.hash))
            except BaseException:
                # No lock (the lock's database connection is gone): nothing was committed;
                # the staged copy must not outlive the request.
                await self.blobs.discard(staged)
                raise
            created_blob = await self.blobs.commit(staged)
            self.crash.reached("upload.blob-committed")
            try:
                result = await self.meta.add_ref(
                    user.id, blob, name or staged.hash, upload_id=upload_id
                )
            except BaseException:
                if created_blob:
                    await self.blobs.delete(staged.hash)
                raise
            finally:
                await self.blobs.settle(staged)
            self.crash.reached("upload.ref-committed")
            return result

    async def recover(self, *, undo: bool = True) -> list[str]:
        """Resolve commits cut by a crash: a blob that made it to the store but not its row
        is removed (it was never acknowledged). Returns the hashes undone (or, with
        `undo=False`, that would be). Runs at start, so a crash leaves no orphan behind."""
        undone = []
        for hex_hash in await self.blobs.interrupted_commits():
            async with self.locks.hold(hex_hash):
                if not await self.blobs.commit_pending(hex_hash):
                    continue  # its writer settled while we waited for the lock
                if await self.meta.get_blob(hex_hash) is None:
                    undone.append(hex_hash)
                    if undo:
                        await self.blobs.delete(hex_hash)
                if undo:
                    await self.blobs.forget_commit(hex_hash)
        return undone

    async def delete(self, user: User, hex_hash: str) -> RemoveOutcome:
        """REMOVED_LAST: the content left the store; REMOVED: something still keeps it."""
        outcome = await self.finish(self._delete(user, hex_hash))
        _check_removal(outcome, "file", hash=hex_hash)
        return outcome

    async def _delete(self, user: User, hex_hash: str) -> RemoveOutcome:
        async with self.locks.hold(hex_hash):
            outcome = await self.meta.remove_ref(user.id, hex_hash)
            self.crash.reached("delete.ref-removed")
            if outcome is RemoveOutcome.REMOVED_LAST:
                await self.blobs.delete(hex_hash)
            self.crash.reached("delete.blob-deleted")
            return outcome

    async def create_bundle(
        self, user: User, manifest: Manifest, *, max_bundles: int | None = None
    ) -> bool:
        """Hold the bundle for `user`; True if they did not hold it before. The user must
        hold a file reference to every hash it names, now: NotHeld (403) names those they
        do not, whether someone else stores them or nobody does (one answer, so a bundle
        is no oracle), and TooManyBundles (409) if they hold `max_bundles` already. The
        early check is cheap and lock free; `add_bundle` checks again in its transaction,
        since the user may delete a file in between (at any instance)."""
        hashes = [h for _, h in manifest.entries]
        unheld = await self.meta.unheld_hashes(user.id, hashes)
        if not unheld:
            try:
                return await self.meta.add_bundle(
                    user.id, manifest.id, manifest.name, manifest.entries, max_bundles=max_bundles
                )
            except MissingBlobs as exc:
                unheld = exc.hashes
        paths = [p for p, h in manifest.entries if h in unheld]
        more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
        raise NotHeld(
            f"You hold no file with the hash given for {paths[0]!r}{more}: a bundle may only"
            " name your own files.",
            path=paths[0],
            hashes=sorted(unheld)[:NOT_HELD_LISTED],
            count=len(unheld),
        )

    async def delete_bundle(self, user: User, bundle_id: str) -> None:
        outcome = await self.finish(self._release_bundle(user, bundle_id))
        _check_removal(outcome, "bundle", id=bundle_id)

    async def _release_bundle(self, user: User, bundle_id: str) -> RemoveOutcome:
        outcome, hashes = await self.meta.release_bundle(user.id, bundle_id)
        self.crash.reached("bundle.released")
        await self._drop_unreferenced(hashes)
        return outcome

    async def remove_user(self, name: str) -> int:
        """Drop every reference and bundle the user holds (blobs nothing else holds leave
        the disk), then the user. Returns how many references were dropped. The last administrator
        stays: without one, nobody could provision users over the API."""
        user = await self.meta.get_user(name)
        if user is None:
            raise NotFound(f"No user named {name!r}.", user=name)
        if user.is_admin and sum(u.is_admin for u in await self.meta.list_users()) <= 1:
            raise Conflict("The last administrator cannot be removed.", user=name)
        return await self.finish(self._remove_user(name))

    async def _remove_user(self, name: str) -> int:
        removed = await self.meta.delete_user(name)
        # Everything the user kept went in one transaction (an upload or bundle being
        # added meanwhile either went with it or found the user gone); the blobs nothing
        # keeps any more leave the disk now, each under its lock as a release does.
        await self._drop_unreferenced(removed.hashes)
        # Their uploads' rows went with the user; their partial files go now (a PATCH
        # writing one holds its lock and removes it itself on finding the row gone). Other
        # instances, with their own tmp/, remove theirs when they see the user go
        # (`uploads.sweeper`).
        await remove_upload_files(TusFiles(self.blobs.tmp_dir), removed.upload_ids)
        return removed.refs

    async def _drop_unreferenced(self, hashes: list[str]) -> None:
        for hex_hash in hashes:
            async with self.locks.hold(hex_hash):
                if await self.meta.drop_blob_if_unreferenced(hex_hash):
                    await self.blobs.delete(hex_hash)


def _check_removal(outcome: RemoveOutcome, what: str, **ids: Any) -> None:
    """Files and bundles fail to go the same two ways: nothing there, or not yours."""
    if outcome is RemoveOutcome.NOT_FOUND:
        raise NotFound(f"No {what} with this id.", **ids)
    if outcome is RemoveOutcome.NOT_OWNER:
        raise Forbidden(f"You hold no reference to this {what}.", **ids)
