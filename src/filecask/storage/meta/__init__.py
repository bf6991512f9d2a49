"""Who owns what: users, stored blobs' metadata and per-user references.

The contract:
- A blob row exists exactly while something references the blob; `add_ref` creates it with
  the first reference and `remove_ref` drops it with the last one, in one transaction, and
  reports which happened so the caller can add or remove the bytes under the hash's lock.
- A blob also stays while a bundle entry names it: a bundle keeps its files available
  after their owners delete their own references, until the bundle is deleted.
- Users are unique by the normalised form of their name (`filecask.auth.user_name_key`:
  NFKC + case-fold), and looked up by it: `get_user("Admin")` is `admin`. The exact name
  is tried first, so two users whose names collided before that rule (kept by migration
  0007) each stay reachable by their own spelling. Removing one removes their references
  (the caller first drops them one by one through the file store, so blobs leave the disk
  too) and their resumable uploads (`delete_user` returns their ids, so the caller removes
  their partial files).
- Every rule above holds with several processes on several machines writing to one
  PostgreSQL database at READ COMMITTED, not only under SQLite's single writer: the
  implementation takes row locks where a check and a write must be one step.
- What a user keeps alive is what they pay for: `usage(user).bytes` is the size of every
  distinct blob the user keeps, by a file reference or by an entry of a bundle they hold,
  each counted once. A bundle may only name content its maker holds by a file reference
  (`add_bundle` checks it in its transaction), so making one never adds to the figure, and
  deleting a file a bundle of theirs still names never takes from it.
- A user's quota bounds that usage plus the declared lengths of their unfinished resumable
  uploads (their reservations). `add_ref` and `create_upload` check it in the transaction
  that inserts, after locking the user's row, so concurrent uploads of any kind, from any
  process, can never together take a user past it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from filecask.errors import BadRequest
from filecask.settings import parse_size
from filecask.storage.changes import ChangeStamps, Topic

QUOTA_MAX = (1 << 63) - 1
"""The largest quota a BIGINT column holds (about 8 EiB: no limit in practice)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    password_hash: str
    is_admin: bool
    created_at: datetime
    quota: int | None = None
    """Most bytes the user's references may add up to; None: no limit."""


def parse_quota(value: object) -> int | None:
    """A quota as an administrator gives it (API or CLI): bytes as an integer, a size with
    binary units (`"10G"`, `"512M"`, as `--max-upload-size` takes), or None for no limit.
    BadRequest (naming the field) otherwise; negative and out-of-range values too, so a
    typo can never become a quota the database cannot hold."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = parse_size(value)
        except ValueError as exc:
            raise BadRequest(f"Invalid quota: {exc}.", field="quota") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            "A quota is a number of bytes, a size such as '10G', or null.", field="quota"
        )
    if not 0 <= value <= QUOTA_MAX:
        raise BadRequest(f"A quota is between 0 and {QUOTA_MAX} bytes.", field="quota")
    return value


@dataclass(frozen=True, slots=True)
class Usage:
    files: int
    """The user's file references."""
    bytes: int
    """Every distinct blob the user keeps alive (by file or by bundle), counted once."""
    bundles: int = 0
    """Bundles the user holds."""


@dataclass(frozen=True, slots=True)
class UserSummary:
    name: str
    is_admin: bool
    created_at: datetime
    usage: Usage
    quota: int | None = None
    reserved: int = 0
    """Bytes reserved by the user's unfinished resumable uploads."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    hash: str
    size: int
    crc32: int
    content_type: str


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One user's reference to a blob."""

    id: int
    hash: str
    name: str
    size: int
    content_type: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BundleEntry:
    path: str
    blob: BlobInfo


@dataclass(frozen=True, slots=True)
class Bundle:
    id: str
    name: str
    created_at: datetime
    entries: list[BundleEntry]


@dataclass(frozen=True, slots=True)
class BundleSummary:
    id: str
    name: str
    files: int
    bytes: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CachedCrc:
    """A directory file's CRC-32, valid while its size, mtime and inode are unchanged."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    crc32: int


@dataclass(frozen=True, slots=True)
class Upload:
    """A resumable (tus) upload: `offset` bytes of `length` are durable in its tus file."""

    id: str
    user_id: int
    length: int
    offset: int
    name: str | None
    metadata: str
    """The client's `Upload-Metadata`, echoed back on HEAD as the protocol asks."""
    created_at: datetime
    expires_at: datetime
    hash: str | None = None
    """The stored file's hash once the upload is complete."""


@dataclass(frozen=True, slots=True)
class RemovedUser:
    """What `delete_user` removed with the user."""

    upload_ids: list[str]
    """Their resumable uploads: the partial files are the caller's to remove."""
    refs: int
    """How many file references they had."""
    hashes: list[str]
    """Blobs they referenced or that a bundle only they held named: the rows stay, for the
    caller to drop (with the bytes) those nothing keeps any more, under each hash's lock."""


@dataclass(frozen=True, slots=True)
class Census:
    """What a store holds, table by table (`filecask migrate`'s checks and report)."""

    counts: dict[str, int]
    """Rows per table of the schema, by table name."""
    lone_user: tuple[str, bool] | None
    """(name, is_admin) of the only user, if there is exactly one."""


@dataclass(frozen=True, slots=True)
class TableRows:
    """A batch of one table's rows, as plain column values (datetimes in UTC)."""

    table: str
    rows: list[dict[str, Any]]


class MissingBlobs(Exception):
    """`add_bundle` found, inside its transaction, that the user holds no file reference
    to some named hashes (stored for someone else, or not at all: one answer for both)."""

    def __init__(self, hashes: set[str]) -> None:
        super().__init__(f"{len(hashes)} blob(s) not stored")
        self.hashes = hashes


class FailureStore(Protocol):
    """Failed sign-ins shared by every instance on one database (PostgreSQL); the
    authenticator mirrors the throttled keys locally (see `filecask.auth`)."""

    def failures_stamp(self) -> int:
        """A stamp that moves whenever a key becomes throttled or a throttled one is
        reset, at any instance (within `change_poll`): a memory load."""

    async def record_failures(
        self, keys: Iterable[str], *, threshold: int, memory: float, floor: int = 0
    ) -> dict[str, int]:
        """One more failure for each key, each count becoming at least `floor`; the new
        counts."""

    async def clear_failures(self, keys: Iterable[str], *, threshold: int) -> None: ...

    async def throttled_failures(
        self, *, threshold: int, memory: float, since: float | None
    ) -> tuple[float, list[tuple[str, int, float]]]: ...


class RemoveOutcome(enum.Enum):
    NOT_FOUND = "not-found"
    NOT_OWNER = "not-owner"
    REMOVED = "removed"
    REMOVED_LAST = "removed-last"
    """The last reference went, and the blob row with it: the bytes may go too."""


class MetaStore(Protocol):
    @property
    def stamps(self) -> ChangeStamps:
        """The change stamps every write here moves (and caches elsewhere may follow)."""

    async def open(self, *, create: bool = True) -> None:
        """Connect and bring the schema to the newest migration. With `create=False` a
        database never set up is refused (`EmptyDatabase`) instead of initialised."""

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def announce(self, *topics: Topic) -> None:
        """Move the stamps of `topics` here and at every instance sharing the database: for
        a change made outside it (fsck quarantining a corrupt blob's bytes, a migration)."""

    def failure_store(self) -> FailureStore | None:
        """The shared failure table, or None where failures stay in each process."""

    async def create_user(
        self, name: str, password_hash: str, *, is_admin: bool, quota: int | None = None
    ) -> User:
        """Conflict if the name is taken."""

    async def get_user(self, name: str) -> User | None: ...

    async def list_users(self) -> list[UserSummary]: ...

    async def count_users(self) -> int: ...

    async def set_password(self, name: str, password_hash: str) -> None:
        """NotFound if there is no such user."""

    async def set_quota(self, name: str, quota: int | None) -> None:
        """Bytes (None: no limit); NotFound if there is no such user. Lowering it below what
        the user stores already removes nothing: it only refuses their new uploads."""

    async def delete_user(self, name: str) -> RemovedUser:
        """NotFound if there is no such user. Atomic with respect to concurrent adds for
        the user: their references, bundle holds, the bundles no one else holds and their
        resumable uploads go with them, whatever was added meanwhile."""

    async def add_ref(
        self, user_id: int, blob: BlobInfo, name: str, *, upload_id: str | None = None
    ) -> tuple[FileRecord, bool]:
        """Reference `blob` for the user (creating the blob row if needed); True if new.
        QuotaExceeded (and nothing changed) if the blob is new to the user and would take
        their usage plus their open uploads' reservations past their quota; a blob they
        keep already (by file or bundle) costs nothing. `upload_id`: the resumable upload
        this completes, whose own reservation is not counted against it. NotFound if the
        user was removed meanwhile."""

    async def holds_ref(
        self, user_id: int, *, hex_hash: str | None = None, size: int | None = None
    ) -> bool:
        """Whether the user keeps this hash alive (by file or by bundle), or any blob of
        exactly this size (an upload's early quota check: a re-upload costs nothing)."""

    async def largest_ref_size(self, user_id: int) -> int:
        """The largest blob the user keeps alive (by file or bundle); 0 if none."""

    async def unheld_hashes(self, user_id: int, hashes: list[str]) -> set[str]:
        """Those of `hashes` the user holds no file reference to (lock free: a bundle's
        early check; `add_bundle` checks again in its transaction)."""

    async def remove_ref(self, user_id: int, hex_hash: str) -> RemoveOutcome: ...

    async def get_blob(self, hex_hash: str) -> BlobInfo | None: ...

    async def list_refs(
        self, user_id: int, *, limit: int, before_id: int | None
    ) -> list[FileRecord]:
        """The user's references, newest first, starting below `before_id` (a cursor)."""

    async def usage(self, user_id: int) -> Usage: ...

    async def user_hashes(self, user_id: int) -> list[str]: ...

    async def all_blob_hashes(self) -> set[str]: ...

    async def blob_totals(self) -> tuple[int, int]:
        """How many blob rows there are, and the sum of their sizes (/metrics)."""

    async def blob_sizes(self) -> dict[str, int]:
        """Every blob row's hash and recorded size (fsck compares them with the store)."""

    async def unreferenced_blobs(self) -> list[str]:
        """Blob rows nothing keeps (no reference, no held bundle naming them): the invariant
        says none exist; fsck and gc find them."""

    async def holderless_bundles(self) -> list[tuple[str, int]]:
        """Bundles nobody holds, with their entry counts (left by a user removal before
        it was atomic): garbage that fsck and gc remove."""

    async def drop_holderless_bundle(self, bundle_id: str) -> list[str] | None:
        """Delete the bundle with its entries if nobody holds it; the hashes it named (for
        the caller to drop the blobs nothing keeps), or None if it is held or gone."""

    async def references_to(self, hex_hash: str) -> int: ...

    async def drop_blob_if_unreferenced(self, hex_hash: str) -> bool:
        """Delete the blob row if nothing references it any more; True if it went."""

    async def add_bundle(
        self,
        user_id: int,
        bundle_id: str,
        name: str,
        entries: list[tuple[str, str]],
        *,
        max_bundles: int | None = None,
    ) -> bool:
        """Hold the bundle (creating it with its (path, hash) entries if new); True if the
        user did not hold it before. MissingBlobs (and nothing changed) if the user holds no
        file reference to a hash, checked in the same transaction (an `unheld_hashes`
        check made before may be stale by then). TooManyBundles if the user holds
        `max_bundles` bundles already and not this one."""

    async def missing_blobs(self, hashes: list[str]) -> set[str]: ...

    async def get_bundle(self, bundle_id: str) -> Bundle | None: ...

    async def bundle_created_at(self, bundle_id: str) -> datetime | None:
        """When the bundle was made, or None if it does not exist: one indexed lookup,
        enough to tell whether a cached plan of it still holds (see `BundlePlans`)."""

    async def list_bundles(
        self, user_id: int, *, hex_hash: str | None = None
    ) -> list[BundleSummary]:
        """The bundles the user holds, newest first; with `hex_hash`, only those naming it."""

    async def release_bundle(self, user_id: int, bundle_id: str) -> tuple[RemoveOutcome, list[str]]:
        """Drop the user's hold; with the last hold the bundle goes, and the hashes its
        entries named are returned so the caller can drop blobs nothing else references."""

    async def user_bundle_ids(self, user_id: int) -> list[str]: ...

    async def get_crcs(self, paths: list[str]) -> dict[str, CachedCrc]: ...

    async def put_crcs(self, crcs: list[CachedCrc]) -> None: ...

    async def create_upload(self, upload: Upload, *, max_open: int | None = None) -> None:
        """Insert the upload, reserving its `length` against the user's quota: refused
        with QuotaExceeded if usage plus the reservations of the user's open uploads plus
        this one would pass it, with TooManyUploads if the user has `max_open` open
        already; both checked after locking the user's row, so concurrent creations (and
        uploads) queue. NotFound if the user is gone."""

    async def open_uploads(self, user_id: int) -> tuple[int, int]:
        """The user's unfinished, unexpired uploads: how many, and the bytes they reserve."""

    async def get_upload(self, upload_id: str) -> Upload | None: ...

    async def advance_upload(
        self, upload_id: str, *, old_offset: int, new_offset: int, expires_at: datetime
    ) -> bool:
        """Move the offset (only from `old_offset`) and the expiry; False if the row is gone
        or moved meanwhile."""

    async def finish_upload(self, upload_id: str, hex_hash: str) -> None: ...

    async def delete_upload(self, upload_id: str) -> bool: ...

    async def expired_uploads(self, now: datetime) -> list[str]: ...

    async def upload_ids(self) -> set[str]: ...

    async def census(self) -> Census:
        """Every table's row count, and the lone user if there is one."""

    def dump_tables(self, tables: Sequence[str], *, batch: int) -> AsyncGenerator[TableRows]:
        """Every row of `tables` (schema names), in that order, from one snapshot."""

    async def load_tables(
        self,
        tables: Sequence[str],
        rows: AsyncIterable[TableRows],
        *,
        vet: Callable[[Census], bool],
    ) -> bool:
        """Insert `rows` (batches of `tables`, ids kept) in one transaction, after `vet` has
        passed this store's census (it raises to refuse; True: empty the users table
        first). What `vet` answered."""
