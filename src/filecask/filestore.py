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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from filecask.blobstore import BlobStore, StagedBlob
from filecask.bundles import Manifest
from filecask.errors import BadRequest, Conflict, Forbidden, HashMismatch, NotFound
from filecask.faults import CrashPoints
from filecask.locks import Locks
from filecask.mediatypes import guess_type
from filecask.metastore import BlobInfo, FileRecord, MetaStore, MissingBlobs, RemoveOutcome, User
from filecask.names import validate_file_name

T = TypeVar("T")


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
        self, user: User, staged: StagedBlob, *, name: str | None
    ) -> tuple[FileRecord, bool]:
        """Commit a blob staged outside `upload` (a finished resumable upload) with the same
        hash lock, dedup, reference and quota as an upload; the staged copy is gone after."""
        return await self.finish(self._commit(user, staged, name))

    async def _commit(
        self, user: User, staged: StagedBlob, name: str | None
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
                result = await self.meta.add_ref(user.id, blob, name or staged.hash)
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
                if await self.meta.get_blob(hex_hash) is None:
                    undone.append(hex_hash)
                    if undo:
                        await self.blobs.delete(hex_hash)
                if undo:
                    await self.blobs.forget_commit(hex_hash)
        return undone

    async def delete(self, user: User, hex_hash: str) -> None:
        outcome = await self.finish(self._delete(user, hex_hash))
        _check_removal(outcome, "file", hash=hex_hash)

    async def _delete(self, user: User, hex_hash: str) -> RemoveOutcome:
        async with self.locks.hold(hex_hash):
            outcome = await self.meta.remove_ref(user.id, hex_hash)
            self.crash.reached("delete.ref-removed")
            if outcome is RemoveOutcome.REMOVED_LAST:
                await self.blobs.delete(hex_hash)
            self.crash.reached("delete.blob-deleted")
            return outcome

    async def create_bundle(self, user: User, manifest: Manifest) -> bool:
        """Hold the bundle for `user`; True if they did not hold it before. Every file must
        be stored (400 naming the first missing entry). The early check is cheap and lock
        free; `add_bundle` checks again in its transaction, since the last reference to a
        blob may go in between (another user's delete, at any instance)."""
        missing = await self.meta.missing_blobs([h for _, h in manifest.entries])
        if not missing:
            try:
                return await self.meta.add_bundle(
                    user.id, manifest.id, manifest.name, manifest.entries
                )
            except MissingBlobs as exc:
                missing = exc.hashes
        path, hex_hash = next((p, h) for p, h in manifest.entries if h in missing)
        raise BadRequest(
            f"No stored file has the hash given for {path!r}.", path=path, hash=hex_hash
        )

    async def delete_bundle(self, user: User, bundle_id: str) -> None:
        outcome = await self.finish(self._release_bundle(user, bundle_id))
        _check_removal(outcome, "bundle", id=bundle_id)

    async def _release_bundle(self, user: User, bundle_id: str) -> RemoveOutcome:
        outcome, hashes = await self.meta.release_bundle(user.id, bundle_id)
        self.crash.reached("bundle.released")
        for hex_hash in hashes:
            async with self.locks.hold(hex_hash):
                if await self.meta.drop_blob_if_unreferenced(hex_hash):
                    await self.blobs.delete(hex_hash)
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
        hashes = await self.meta.user_hashes(user.id)
        for hex_hash in hashes:
            await self.finish(self._delete(user, hex_hash))
        for bundle_id in await self.meta.user_bundle_ids(user.id):
            await self.finish(self._release_bundle(user, bundle_id))
        await self.meta.delete_user(name)
        return len(hashes)


def _check_removal(outcome: RemoveOutcome, what: str, **ids: Any) -> None:
    """Files and bundles fail to go the same two ways: nothing there, or not yours."""
    if outcome is RemoveOutcome.NOT_FOUND:
        raise NotFound(f"No {what} with this id.", **ids)
    if outcome is RemoveOutcome.NOT_OWNER:
        raise Forbidden(f"You hold no reference to this {what}.", **ids)
