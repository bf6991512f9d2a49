"""Where file contents live, behind one small interface.

The contract every implementation keeps:
- `stage` streams a body to private scratch space while hashing it, and makes it durable;
  nothing staged is visible under a hash until `commit`.
- `commit` makes a staged blob visible under its hash atomically; if the hash is already
  stored the staged copy is dropped (same hash, same bytes). It keeps a record of the commit
  until `settle`, so a commit cut by a crash can be found and undone (`interrupted_commits`).
  `discard` drops a staged blob.
- `delete` removes a blob; deleting a missing blob is not an error.
- The caller (`filestore.FileStore`) serialises commit/delete of one hash with a lock and
  keeps the metadata store in step; the blob store itself knows nothing of references.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """An upload written and synced to scratch space, not yet visible under its hash."""

    hash: str
    size: int
    crc32: int
    head: bytes
    """The first bytes of the content, for type sniffing."""
    scratch: Path | str
    """Where it is staged: a file in tmp/, or an object key in a bucket."""


@dataclass(frozen=True, slots=True)
class OpenBlob:
    """An open, readable blob; the caller closes `fd`. A store with no local file (S3)
    gives None: its bytes are read with `BlobStore.read_range` instead of sendfile."""

    fd: int | None
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """An entry found by listing the store (used by fsck and gc)."""

    key: str
    """Its place under the store, `ab/<hash>` for a well-placed blob."""
    size: int
    mtime: float
    regular: bool = True
    """A plain file (a symlink or anything else in the store is a stray)."""

    @property
    def hash(self) -> str:
        return self.key.rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class Leftover:
    """Scratch space of an upload whose process is gone."""

    name: str
    size: int
    mtime: float


class BlobStore(Protocol):
    gives_fds: bool
    """Whether `open_blob` hands out a file descriptor (disk) or only the size (S3): a
    reader that would only ask for the size of a blob it then reads in ranges anyway can
    skip that round trip when there is no fd to be had."""
    tmp_dir: Path
    """The local directory for resumable uploads' partial files (on disk whatever the
    store: a tus upload is appended to in place until it is finished, then `adopt`ed)."""

    async def open(self) -> None:
        """Prepare directories and recover scratch space left by dead processes."""

    async def close(self) -> None: ...

    async def stage(
        self, chunks: AsyncIterator[bytes], *, max_size: int, reserve: int = 0
    ) -> StagedBlob:
        """Stream `chunks` to scratch space; PayloadTooLarge past `max_size` bytes,
        InsufficientStorage when the disk fills. Nothing is left behind on failure.

        An empty chunk says the source is about to wait for its client: a store that
        gathers data before writing it may write it out then (the disk store does, so a
        stalled upload holds little memory; S3 parts cannot be smaller than 5 MiB)."""

    async def adopt(self, fd: int, path: Path) -> StagedBlob:
        """Stage a finished resumable upload's file (hashed here), taking over `fd` and
        the exclusive lock it holds, as if `stage` had written it."""

    async def commit(self, staged: StagedBlob) -> bool:
        """Make `staged` visible under its hash; True if this call created the blob."""

    async def settle(self, staged: StagedBlob) -> None:
        """End a commit: its reference is stored, or the blob was deleted again."""

    async def discard(self, staged: StagedBlob) -> None: ...

    async def interrupted_commits(self) -> list[str]:
        """Hashes whose commit was cut by a dead process: the blob may lack its row."""

    async def commit_pending(self, hex_hash: str) -> bool:
        """The record of a commit of `hex_hash` is still there. Asked again under the hash
        lock: a writer that settled since `interrupted_commits` listed it leaves none."""

    async def forget_commit(self, hex_hash: str) -> None:
        """Drop the record of an interrupted commit once it has been resolved."""

    async def delete(self, hex_hash: str) -> None: ...

    async def open_blob(self, hex_hash: str) -> OpenBlob:
        """Open a blob for reading; NotFound if it is not stored."""

    async def read_blob(self, hex_hash: str) -> bytes:
        """A small blob's whole content; NotFound if it is not stored."""

    def blob_opener(self) -> Callable[[str], int] | None:
        """For a store that keeps blobs as local files (disk): a function, to call from a
        worker thread, that opens a blob for reading and returns its fd (the caller closes
        it; NotFound if it is not stored), so many small blobs can be read in one thread
        hop. None for the others (S3)."""

    def read_range(self, hex_hash: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """`length` bytes from `offset`, in bounded pieces, each read only when the caller
        asks for the next (so a slow client holds one piece); NotFound if not stored,
        EOFError if the blob is shorter. Close it (`contextlib.aclosing`) when stopping
        early."""

    async def download_url(
        self, hex_hash: str, *, content_type: str, disposition: str
    ) -> str | None:
        """A URL the client may fetch the blob from directly (a presigned S3 URL answering
        with these headers), or None: the blob is sent through filecask."""

    async def holds_blobs(self) -> bool:
        """Anything is stored (the start-up guard refuses an empty database then)."""

    async def exists(self, hex_hash: str) -> bool: ...

    async def ready(self) -> bool:
        """The store can be read and written (for /readyz)."""

    def iter_blobs(self) -> AsyncIterator[StoredBlob]:
        """Every entry of the store, in key order, whatever its name (fsck judges)."""

    async def digest(self, key: str) -> tuple[str, int]:
        """SHA-256 and size of an entry's content as stored (re-read in full; fsck)."""

    async def quarantine(self, key: str) -> str:
        """Move an entry out of the store, where no download can reach it, keeping its
        bytes for a person to look at; returns where it went."""

    async def leftovers(self) -> list[Leftover]:
        """Scratch space of dead uploads (a live upload's scratch is never listed)."""

    async def remove_leftover(self, leftover: Leftover) -> bool:
        """Remove it if it is still abandoned; True if it went."""
