"""The metadata store on SQLAlchemy Core with async drivers (aiosqlite, asyncpg).

SQLite specifics, set on every connection: WAL (readers never wait for the writer), a busy
timeout (a brief lock waits instead of failing), foreign keys on, and write transactions
opened with BEGIN IMMEDIATE: a deferred transaction that later wants to write can fail with
"database is locked" at once, whatever the timeout, when another writer got there first.

The three lookups on every hot path (a user by name, a blob by hash, a user's usage) are
answered from caches that follow the shared change stamps (see `filecask.storage.changes`): every
write here moves the stamps of what it changed once it has committed.

PostgreSQL specifics, for several instances on one database:
- Every write that changes a topic also increments the topic's `change_counters` row and
  `pg_notify`s the change feed, as the last statements of its transaction (so the counter
  rows are locked only for the commit itself); `PostgresChangeFeed`, started by `open`,
  carries other instances' writes to the local stamps within `change_poll`.
- READ COMMITTED gives none of the "one writer at a time" that SQLite's BEGIN IMMEDIATE
  does, so every rule that was a check-then-write is made atomic with row locks: a
  transaction that may delete a blob row first locks it FOR UPDATE (`remove_ref`,
  `drop_blob_if_unreferenced`), one that adds a reference to an existing blob locks it FOR
  SHARE (`add_ref`, `add_bundle`), a bundle's row is locked FOR UPDATE by `release_bundle`
  and FOR SHARE by `add_bundle`, and inserts that may meet a concurrent twin use ON
  CONFLICT. Each waits for the other and then, reading afresh, sees what it committed.
  SQLite's compiler leaves the FOR clauses out (it serialises writers already).
- Failed sign-ins are kept in `auth_failures` (`FailureStore`), so every instance throttles.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from filecask.errors import (
    Conflict,
    InsufficientStorage,
    NotFound,
    QuotaExceeded,
    TooManyBundles,
    TooManyUploads,
)
from filecask.names import user_name_key
from filecask.storage.changes import CHANNEL, ChangeStamps, PostgresChangeFeed, StampedCache, Topic
from filecask.storage.meta import (
    BlobInfo,
    Bundle,
    BundleEntry,
    BundleSummary,
    CachedCrc,
    FailureStore,
    FileRecord,
    MissingBlobs,
    RemovedUser,
    RemoveOutcome,
    Upload,
    Usage,
    User,
    UserSummary,
)
from filecask.storage.meta.schema import (
    auth_failures,
    blobs,
    bundle_entries,
    bundle_holders,
    bundles,
    change_counters,
    crc_cache,
    refs,
    uploads,
    users,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE = "filecask_write"
_ASYNC_DRIVERS = (
    ("sqlite://", "sqlite+aiosqlite://"),
    ("postgresql://", "postgresql+asyncpg://"),
    ("postgres://", "postgresql+asyncpg://"),
)


USER_CACHE_ITEMS = 10_000
BLOB_CACHE_ITEMS = 100_000
USAGE_CACHE_ITEMS = 10_000
FAILURE_ROWS_MAX = 100_000
"""Most throttled keys one mirror refresh reads (the newest first)."""
FAILURE_PRUNE_ODDS = 64
"""One recorded failure in this many also deletes the rows that have been forgotten."""
CONNECT_TIMEOUT = 10.0
BUNDLE_PAGE = 500
"""Bundle entries read per query (`get_bundle`): a few ms of rows to objects at a time."""


def is_postgres_url(url: str) -> bool:
    return make_url(_async_url(url)).get_backend_name() == "postgresql"


async def connect_raw(url: str) -> Any:
    """A dedicated asyncpg connection to the PostgreSQL database at `url`, outside every
    pool (the change feed's LISTEN, the advisory locks), with the connection arguments
    SQLAlchemy would use for the same URL."""
    import asyncpg

    sa_url = make_url(_async_url(url))
    dialect: Any = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
    _, kwargs = dialect.create_connect_args(sa_url)
    # Options SQLAlchemy's asyncpg adapter takes for itself, not asyncpg.connect's.
    for option in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        kwargs.pop(option, None)
    return await asyncpg.connect(**kwargs, timeout=CONNECT_TIMEOUT)


class SqlMetaStore:
    def __init__(
        self,
        url: str,
        stamps: ChangeStamps | None = None,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        change_poll: float = 1.0,
    ) -> None:
        """`pool_size`, `max_overflow`: the PostgreSQL connection pool of this process (SQLite
        keeps SQLAlchemy's own setup for it). `change_poll`: with PostgreSQL, the longest time
        a change made by another instance may go unseen here (see `filecask.storage.changes`)."""
        self._url = _async_url(url)
        self._engine: AsyncEngine | None = None
        self._pool_size = pool_size
        self._max_overflow = max_overflow
        self._change_poll = change_poll
        self.shared = is_postgres_url(url)
        """PostgreSQL: other instances may share the database (change feed, failures)."""
        self.feed: PostgresChangeFeed | None = None
        self.stamps = stamps or ChangeStamps(None)
        self._users: StampedCache[str, User] = StampedCache(
            self.stamps, Topic.USERS, max_items=USER_CACHE_ITEMS
        )
        # Names asked for and not found (sign-ins with made-up names): answered from memory
        # like a known name's row, so the lookup's time does not tell which names exist.
        self._no_users: StampedCache[str, bool] = StampedCache(
            self.stamps, Topic.USERS, max_items=USER_CACHE_ITEMS
        )
        self._blobs: StampedCache[str, BlobInfo] = StampedCache(
            self.stamps, Topic.BLOBS, max_items=BLOB_CACHE_ITEMS
        )
        self._usage: StampedCache[int, Usage] = StampedCache(
            self.stamps, Topic.REFS, max_items=USAGE_CACHE_ITEMS
        )
        # A user's open uploads (count, reserved bytes, soonest expiry): they change by a
        # write that moves REFS (created, completed, deleted) or when the soonest expires.
        self._reserved: StampedCache[int, tuple[int, int, datetime | None]] = StampedCache(
            self.stamps, Topic.REFS, max_items=USAGE_CACHE_ITEMS
        )
        # Hashes asked for and not found: a flood of 404s (scanners, stale links) would
        # otherwise cost a database round trip each, ten times the cost of a hit.
        self._missing: StampedCache[str, bool] = StampedCache(
            self.stamps, Topic.NEW_BLOBS, max_items=BLOB_CACHE_ITEMS
        )

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("metastore is not open")
        return self._engine

    async def open(self, *, create: bool = True) -> None:
        """Connect and migrate. With `create=False` a database that has never been set up
        (no migration recorded: an empty file, a fresh PostgreSQL database) is refused with
        EmptyDatabase instead of being initialised."""
        if self.shared:
            self._engine = create_async_engine(
                self._url,
                pool_size=self._pool_size,
                max_overflow=self._max_overflow,
                pool_pre_ping=True,
            )
        else:
            self._engine = create_async_engine(self._url, pool_pre_ping=True)
        if self._engine.dialect.name == "sqlite":
            _tune_sqlite(self._engine)
        async with self._engine.begin() as conn:
            if not create and not await conn.run_sync(_is_set_up):
                raise EmptyDatabase(self._url)
            await conn.run_sync(_upgrade_schema)
        if self.shared:
            self.feed = PostgresChangeFeed(
                self.stamps, partial(connect_raw, self._url), poll=self._change_poll
            )
            await self.feed.start()

    async def close(self) -> None:
        feed, self.feed = self.feed, None
        if feed is not None:
            await feed.stop()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    # users

    async def create_user(
        self, name: str, password_hash: str, *, is_admin: bool, quota: int | None = None
    ) -> User:
        """ON CONFLICT rather than look-then-insert: on PostgreSQL two instances creating
        the same name at once (two first starts, each bootstrapping `admin`) would otherwise
        both look, and the second insert would fail with an IntegrityError, not Conflict.
        A name whose normalised form is taken (`Admin` next to `admin`) conflicts too."""
        insert = self._insert()
        async with self._write({Topic.USERS}) as conn:
            created_at = _now()
            key = await conn.scalar(
                insert(users)
                .values(
                    name=name,
                    name_key=user_name_key(name),
                    password_hash=password_hash,
                    is_admin=is_admin,
                    created_at=created_at,
                    quota=quota,
                )
                .on_conflict_do_nothing()
                .returning(users.c.id)
            )
            if key is None:
                taken = await conn.scalar(_lookup_user(name, users.c.name))
                detail = f"A user named {name!r} already exists."
                if taken is not None and taken != name:
                    detail = f"The name {name!r} is too like the existing user {taken!r}."
                raise Conflict(detail, user=name)
            return User(int(key), name, password_hash, is_admin, created_at, quota)

    async def get_user(self, name: str) -> User | None:
        """The user `name` signs in as: the one of that exact name, else the one whose
        normalised name is `name`'s (`Admin` is `admin`)."""
        user, stamp = self._users.get(name)
        if user is not None:
            return user
        missing, _ = self._no_users.get(name)
        if missing:
            return None
        user = await self._load_user(name)
        if user is None:
            self._no_users.put(name, True, stamp)
        else:
            self._users.put(name, user, stamp)
        return user

    async def _load_user(self, name: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_lookup_user(name, users))).first()
        return None if row is None else _user(row)

    async def list_users(self) -> list[UserSummary]:
        """Every user with the figures of `usage` and `open_uploads`, in one query: each
        figure is grouped by user in a subquery, then joined (a plain join of refs and
        bundle entries would count a blob kept both ways twice)."""
        kept = sa.union(
            sa.select(refs.c.user_id, refs.c.hash),
            sa.select(bundle_holders.c.user_id, bundle_entries.c.hash).select_from(_held_entries()),
        ).subquery()
        kept_bytes = (
            sa.select(kept.c.user_id, sa.func.sum(blobs.c.size).label("n"))
            .select_from(kept.join(blobs, blobs.c.hash == kept.c.hash))
            .group_by(kept.c.user_id)
            .subquery()
        )
        files = _count_by_user(refs.c.user_id)
        held = _count_by_user(bundle_holders.c.user_id)
        reserved = (
            sa.select(uploads.c.user_id, sa.func.sum(uploads.c.length).label("n"))
            .where(_open_upload(_now()))
            .group_by(uploads.c.user_id)
            .subquery()
        )
        figures = [files, kept_bytes, held, reserved]
        joined: sa.FromClause = users
        for figure in figures:
            joined = joined.outerjoin(figure, figure.c.user_id == users.c.id)
        query = sa.select(
            users.c.name,
            users.c.is_admin,
            users.c.created_at,
            users.c.quota,
            *(sa.func.coalesce(figure.c.n, 0) for figure in figures),
        ).select_from(joined)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(users.c.name))).all()
        return [
            UserSummary(
                r[0],
                r[1],
                _utc(r[2]),
                Usage(int(r[4]), int(r[5]), int(r[6])),
                _quota(r[3]),
                int(r[7]),
            )
            for r in rows
        ]

    async def count_users(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count(users.c.id)))).scalar_one())

    async def set_password(self, name: str, password_hash: str) -> None:
        await self._update_user(name, password_hash=password_hash)

    async def set_quota(self, name: str, quota: int | None) -> None:
        """Moves the USERS stamp (through `_update_user`): every process's cached `User`,
        which carries the quota, is dropped, so /me and the early upload check see the new
        value at once. `add_ref` never trusts a cache: it reads the row it locks."""
        await self._update_user(name, quota=quota)

    async def delete_user(self, name: str) -> RemovedUser:
        """One transaction, after locking the user's row: `add_ref`, `add_bundle` and
        `create_upload` lock it too, so whatever they add for the user either committed
        before (and goes here) or waits and then finds the user gone. Drops the user's
        references and bundle holds, the bundles left with no holder (and their entries),
        then the user (their uploads go by cascade). The blob rows stay for the caller,
        who drops those nothing keeps any more under each hash's lock (as `release_bundle`'s
        caller does): a cascade alone left holderless bundles serving their content and
        blobs nothing referenced."""
        async with self._write({Topic.USERS, Topic.REFS}) as conn:
            locked = _lookup_user(name, users.c.id).with_for_update()
            user_id = await conn.scalar(locked)
            if user_id is None:
                raise NotFound(f"No user named {name!r}.", user=name)
            theirs = sa.select(uploads.c.id).where(uploads.c.user_id == user_id)
            upload_ids = sorted((await conn.execute(theirs)).scalars())
            hashes = set(
                (
                    await conn.execute(sa.select(refs.c.hash).where(refs.c.user_id == user_id))
                ).scalars()
            )
            dropped = await conn.execute(refs.delete().where(refs.c.user_id == user_id))
            held = sa.select(bundle_holders.c.bundle_id).where(bundle_holders.c.user_id == user_id)
            bundle_ids = sorted((await conn.execute(held)).scalars())
            await conn.execute(bundle_holders.delete().where(bundle_holders.c.user_id == user_id))
            for bundle_id in bundle_ids:
                hashes.update(await _drop_if_holderless(conn, bundle_id) or ())
            await conn.execute(users.delete().where(users.c.id == user_id))
            return RemovedUser(upload_ids, dropped.rowcount, sorted(hashes))

    async def _update_user(self, name: str, **values: Any) -> None:
        async with self._write({Topic.USERS}) as conn:
            target = _lookup_user(name, users.c.id).scalar_subquery()
            result = await conn.execute(users.update().where(users.c.id == target).values(values))
            if result.rowcount == 0:
                raise NotFound(f"No user named {name!r}.", user=name)

    # blobs and references

    async def add_ref(
        self, user_id: int, blob: BlobInfo, name: str, *, upload_id: str | None = None
    ) -> tuple[FileRecord, bool]:
        now = _now()
        insert = self._insert()
        changed = {Topic.REFS}
        async with self._write(changed) as conn:
            await _check_quota(conn, user_id, blob, now, upload_id)
            # The blob row exists, or is created here, and is locked (FOR SHARE) until we
            # commit: a concurrent removal of its last other reference waits and then sees
            # ours (PostgreSQL; see the module docstring). If that removal committed between
            # our insert and our lock, the row is gone: insert it again.
            while True:
                stored = await conn.execute(
                    insert(blobs)
                    .values(
                        hash=blob.hash,
                        size=blob.size,
                        crc32=blob.crc32,
                        content_type=blob.content_type,
                        created_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["hash"])
                )
                if stored.rowcount:
                    changed.add(Topic.NEW_BLOBS)
                    break
                if await conn.scalar(_lock_blob(blob.hash, share=True)) is not None:
                    break
            result = await conn.execute(
                insert(refs)
                .values(user_id=user_id, hash=blob.hash, name=name, created_at=now)
                .on_conflict_do_nothing(index_elements=["user_id", "hash"])
            )
            created = result.rowcount == 1
            row = (
                await conn.execute(
                    _ref_query().where(refs.c.user_id == user_id, refs.c.hash == blob.hash)
                )
            ).one()
        return _record(row), created

    async def holds_ref(
        self, user_id: int, *, hex_hash: str | None = None, size: int | None = None
    ) -> bool:
        kept = _kept_hashes(user_id).subquery()
        query = sa.select(blobs.c.hash).select_from(blobs.join(kept, kept.c.hash == blobs.c.hash))
        if hex_hash is not None:
            query = query.where(blobs.c.hash == hex_hash)
        if size is not None:
            query = query.where(blobs.c.size == size)
        async with self.engine.connect() as conn:
            return await conn.scalar(query.limit(1)) is not None

    async def largest_ref_size(self, user_id: int) -> int:
        """The size of the largest blob the user keeps (0 if none): a re-upload of it costs
        nothing, so a stream that size may always run."""
        kept = _kept_hashes(user_id).subquery()
        query = sa.select(sa.func.coalesce(sa.func.max(blobs.c.size), 0)).select_from(
            blobs.join(kept, kept.c.hash == blobs.c.hash)
        )
        async with self.engine.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def unheld_hashes(self, user_id: int, hashes: list[str]) -> set[str]:
        wanted = set(hashes)
        async with self.engine.connect() as conn:
            held = await _held_refs(conn, user_id, sorted(wanted))
        return wanted - held

    async def remove_ref(self, user_id: int, hex_hash: str) -> RemoveOutcome:
        changed = {Topic.REFS}
        async with self._write(changed) as conn:
            # Locked first, so a reference being added concurrently (add_ref, add_bundle,
            # which lock it FOR SHARE) is either committed and seen below, or waits for us
            # and finds the row gone.
            if await conn.scalar(_lock_blob(hex_hash)) is None:
                return RemoveOutcome.NOT_FOUND  # no blob row, so no reference to it either
            deleted = await conn.execute(
                refs.delete().where(refs.c.user_id == user_id, refs.c.hash == hex_hash)
            )
            if deleted.rowcount == 0:
                return RemoveOutcome.NOT_OWNER
            if await _is_referenced(conn, hex_hash):
                return RemoveOutcome.REMOVED
            changed.add(Topic.BLOBS)
            await conn.execute(blobs.delete().where(blobs.c.hash == hex_hash))
            return RemoveOutcome.REMOVED_LAST

    async def get_blob(self, hex_hash: str) -> BlobInfo | None:
        return await self._blobs.fetch(hex_hash, partial(self._load_blob, hex_hash))

    async def _load_blob(self, hex_hash: str) -> BlobInfo | None:
        missing, missing_stamp = self._missing.get(hex_hash)
        if missing:
            return None
        query = sa.select(blobs.c.hash, blobs.c.size, blobs.c.crc32, blobs.c.content_type).where(
            blobs.c.hash == hex_hash
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            self._missing.put(hex_hash, True, missing_stamp)
            return None
        return BlobInfo(*row)

    async def list_refs(
        self, user_id: int, *, limit: int, before_id: int | None
    ) -> list[FileRecord]:
        query = _ref_query().where(refs.c.user_id == user_id).order_by(refs.c.id.desc())
        if before_id is not None:
            query = query.where(refs.c.id < before_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [_record(r) for r in rows]

    async def usage(self, user_id: int) -> Usage:
        usage = await self._usage.fetch(user_id, partial(self._load_usage, user_id))
        assert usage is not None  # an aggregate always has a row
        return usage

    async def _load_usage(self, user_id: int) -> Usage:
        files = sa.select(sa.func.count()).select_from(refs).where(refs.c.user_id == user_id)
        held = sa.select(sa.func.count()).select_from(bundle_holders)
        held = held.where(bundle_holders.c.user_id == user_id)
        query = sa.select(
            files.scalar_subquery(),
            _kept_bytes(user_id).scalar_subquery(),
            held.scalar_subquery(),
        )
        async with self.engine.connect() as conn:
            count, total, bundle_count = (await conn.execute(query)).one()
        return Usage(int(count), int(total or 0), int(bundle_count))

    async def user_hashes(self, user_id: int) -> list[str]:
        query = sa.select(refs.c.hash).where(refs.c.user_id == user_id).order_by(refs.c.id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def all_blob_hashes(self) -> set[str]:
        async with self.engine.connect() as conn:
            return set((await conn.execute(sa.select(blobs.c.hash))).scalars())

    async def blob_sizes(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(blobs.c.hash, blobs.c.size))
            return {hex_hash: int(size) for hex_hash, size in rows}

    async def unreferenced_blobs(self) -> list[str]:
        """Only a bundle someone holds keeps a blob: one with no holder is garbage itself
        (`holderless_bundles`), and so is what only it names."""
        kept_by_ref = sa.select(refs.c.id).where(refs.c.hash == blobs.c.hash).exists()
        kept_by_bundle = (
            sa.select(bundle_entries.c.position)
            .select_from(
                bundle_entries.join(
                    bundle_holders, bundle_holders.c.bundle_id == bundle_entries.c.bundle_id
                )
            )
            .where(bundle_entries.c.hash == blobs.c.hash)
        ).exists()
        query = sa.select(blobs.c.hash).where(~kept_by_ref, ~kept_by_bundle)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def holderless_bundles(self) -> list[tuple[str, int]]:
        query = (
            sa.select(bundles.c.id, sa.func.count(bundle_entries.c.position))
            .select_from(bundles.outerjoin(bundle_entries))
            .where(~_is_held())
            .group_by(bundles.c.id)
            .order_by(bundles.c.id)
        )
        async with self.engine.connect() as conn:
            return [(r[0], int(r[1])) for r in (await conn.execute(query)).all()]

    async def drop_holderless_bundle(self, bundle_id: str) -> list[str] | None:
        async with self._write({Topic.REFS}) as conn:
            return await _drop_if_holderless(conn, bundle_id)

    async def references_to(self, hex_hash: str) -> int:
        """User references plus bundle entries naming the blob (for fsck's report)."""
        by_ref = sa.select(sa.func.count()).where(refs.c.hash == hex_hash)
        by_bundle = sa.select(sa.func.count()).where(bundle_entries.c.hash == hex_hash)
        async with self.engine.connect() as conn:
            return int(await conn.scalar(by_ref) or 0) + int(await conn.scalar(by_bundle) or 0)

    async def drop_blob_if_unreferenced(self, hex_hash: str) -> bool:
        changed: set[Topic] = set()
        async with self._write(changed) as conn:
            # As in remove_ref: lock, then look (a concurrent add_ref or add_bundle either
            # committed its reference already or waits for us and finds the row gone).
            if await conn.scalar(_lock_blob(hex_hash)) is None:
                return False
            if await _is_referenced(conn, hex_hash):
                return False
            changed.add(Topic.BLOBS)
            result = await conn.execute(blobs.delete().where(blobs.c.hash == hex_hash))
        return bool(result.rowcount)

    # bundles

    async def missing_blobs(self, hashes: list[str]) -> set[str]:
        wanted = set(hashes)
        found: set[str] = set()
        async with self.engine.connect() as conn:
            for chunk in _chunks(sorted(wanted), 500):
                query = sa.select(blobs.c.hash).where(blobs.c.hash.in_(chunk))
                found.update((await conn.execute(query)).scalars())
        return wanted - found

    async def add_bundle(
        self,
        user_id: int,
        bundle_id: str,
        name: str,
        entries: list[tuple[str, str]],
        *,
        max_bundles: int | None = None,
    ) -> bool:
        """Locks the user's row (FOR UPDATE: the bundle count, like the quota, is checked
        by one transaction at a time), then the blob rows (FOR SHARE), then checks that the
        user holds a file reference to each: a `remove_ref` of one (which locks its blob
        FOR UPDATE) either committed before, and the reference is seen gone (MissingBlobs),
        or waits for us and then finds the bundle entry keeping the blob. The caller's
        earlier `unheld_hashes` ran outside any lock. The bundle's row is inserted ON
        CONFLICT DO NOTHING and locked FOR SHARE, so a twin `add_bundle` or a
        `release_bundle` of its last holder (FOR UPDATE) waits or is waited for; a bundle
        deleted under us is created afresh. Moves REFS: the holder's usage figures change
        (bundles held), though never their bytes."""
        insert = self._insert()
        wanted = sorted({hex_hash for _, hex_hash in entries})
        async with self._write({Topic.REFS}) as conn:
            if (await conn.execute(_quota_for_update(user_id))).first() is None:
                raise NotFound("The user was removed meanwhile.")
            for chunk in _chunks(wanted, 500):
                query = (
                    sa.select(blobs.c.hash)
                    .where(blobs.c.hash.in_(chunk))
                    .order_by(blobs.c.hash)
                    .with_for_update(read=True)
                )
                await conn.execute(query)
            held = await _held_refs(conn, user_id, wanted)
            if len(held) < len(wanted):
                raise MissingBlobs(set(wanted) - held)
            if max_bundles is not None:
                await _check_bundle_count(conn, user_id, bundle_id, max_bundles)
            while True:
                created = await conn.execute(
                    insert(bundles)
                    .values(id=bundle_id, name=name, created_at=_now())
                    .on_conflict_do_nothing(index_elements=["id"])
                )
                if created.rowcount:
                    rows = [
                        {"bundle_id": bundle_id, "position": i, "path": path, "hash": hex_hash}
                        for i, (path, hex_hash) in enumerate(entries)
                    ]
                    for chunk in _chunks(rows, 500):
                        await conn.execute(bundle_entries.insert(), chunk)
                    break
                kept = sa.select(bundles.c.id).where(bundles.c.id == bundle_id)
                if await conn.scalar(kept.with_for_update(read=True)) is not None:
                    break
            result = await conn.execute(
                insert(bundle_holders)
                .values(bundle_id=bundle_id, user_id=user_id, created_at=_now())
                .on_conflict_do_nothing(index_elements=["bundle_id", "user_id"])
            )
            return result.rowcount == 1

    async def get_bundle(self, bundle_id: str) -> Bundle | None:
        """The bundle with its entries, read in pages of BUNDLE_PAGE rows (keyset on the
        position): each page is a short query and a few milliseconds of turning rows into
        objects, with the event loop free in between, where 11,500 rows at once held it
        for 50 ms. A bundle never changes, it is only deleted (and perhaps made again,
        with a new `created_at`): its row is read again after the pages, and if it went
        or was remade meanwhile (the pages may be cut short) the read starts over."""
        head = sa.select(bundles).where(bundles.c.id == bundle_id, _is_held())
        for _attempt in range(3):
            async with self.engine.connect() as conn:
                row = (await conn.execute(head)).first()
                if row is None:
                    return None
                entries = await self._bundle_entries(conn, bundle_id)
                again = (await conn.execute(head)).first()
            if again is not None and again.created_at == row.created_at:
                return Bundle(row.id, row.name, _utc(row.created_at), entries)
        return None

    async def _bundle_entries(self, conn: AsyncConnection, bundle_id: str) -> list[BundleEntry]:
        query = (
            sa.select(
                bundle_entries.c.position,
                bundle_entries.c.path,
                blobs.c.hash,
                blobs.c.size,
                blobs.c.crc32,
                blobs.c.content_type,
            )
            .select_from(bundle_entries.join(blobs))
            .where(bundle_entries.c.bundle_id == bundle_id)
            .order_by(bundle_entries.c.position)
            .limit(BUNDLE_PAGE)
        )
        entries: list[BundleEntry] = []
        last = -1
        while True:
            page = (await conn.execute(query.where(bundle_entries.c.position > last))).all()
            entries += [
                BundleEntry(r.path, BlobInfo(r.hash, r.size, r.crc32, r.content_type)) for r in page
            ]
            if len(page) < BUNDLE_PAGE:
                return entries
            last = page[-1].position

    async def bundle_created_at(self, bundle_id: str) -> datetime | None:
        query = sa.select(bundles.c.created_at).where(bundles.c.id == bundle_id, _is_held())
        async with self.engine.connect() as conn:
            created = await conn.scalar(query)
        return None if created is None else _utc(created)

    async def list_bundles(
        self, user_id: int, *, hex_hash: str | None = None
    ) -> list[BundleSummary]:
        query = (
            sa.select(
                bundles.c.id,
                bundles.c.name,
                bundle_holders.c.created_at,
                sa.func.count(bundle_entries.c.position),
                sa.func.coalesce(sa.func.sum(blobs.c.size), 0),
            )
            .select_from(bundle_holders.join(bundles).outerjoin(bundle_entries).outerjoin(blobs))
            .where(bundle_holders.c.user_id == user_id)
            .group_by(
                bundles.c.id, bundles.c.name, bundle_holders.c.id, bundle_holders.c.created_at
            )
            .order_by(bundle_holders.c.id.desc())
        )
        if hex_hash is not None:
            naming = sa.select(bundle_entries.c.bundle_id).where(bundle_entries.c.hash == hex_hash)
            query = query.where(bundles.c.id.in_(naming))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [BundleSummary(r[0], r[1], int(r[3]), int(r[4]), _utc(r[2])) for r in rows]

    async def release_bundle(self, user_id: int, bundle_id: str) -> tuple[RemoveOutcome, list[str]]:
        """The bundle's row is locked first (FOR UPDATE): two holders releasing at once
        would otherwise each see the other's hold and both leave the bundle, holderless,
        keeping its blobs forever; an `add_bundle` (FOR SHARE) waits, then creates it anew.
        Moves REFS: the holder's usage may shrink."""
        async with self._write({Topic.REFS}) as conn:
            locked = sa.select(bundles.c.id).where(bundles.c.id == bundle_id).with_for_update()
            if await conn.scalar(locked) is None:
                return RemoveOutcome.NOT_FOUND, []
            deleted = await conn.execute(
                bundle_holders.delete().where(
                    bundle_holders.c.bundle_id == bundle_id, bundle_holders.c.user_id == user_id
                )
            )
            if deleted.rowcount == 0:
                return RemoveOutcome.NOT_OWNER, []
            held = await conn.scalar(
                sa.select(bundle_holders.c.id)
                .where(bundle_holders.c.bundle_id == bundle_id)
                .limit(1)
            )
            if held is not None:
                return RemoveOutcome.REMOVED, []
            hashes = list(
                (
                    await conn.execute(
                        sa.select(bundle_entries.c.hash)
                        .where(bundle_entries.c.bundle_id == bundle_id)
                        .distinct()
                    )
                ).scalars()
            )
            await conn.execute(
                bundle_entries.delete().where(bundle_entries.c.bundle_id == bundle_id)
            )
            await conn.execute(bundles.delete().where(bundles.c.id == bundle_id))
            return RemoveOutcome.REMOVED_LAST, hashes

    async def user_bundle_ids(self, user_id: int) -> list[str]:
        query = sa.select(bundle_holders.c.bundle_id).where(bundle_holders.c.user_id == user_id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    # the CRC-32 cache of directory archives

    async def get_crcs(self, paths: list[str]) -> dict[str, CachedCrc]:
        found: dict[str, CachedCrc] = {}
        async with self.engine.connect() as conn:
            for chunk in _chunks(paths, 500):
                query = sa.select(crc_cache).where(crc_cache.c.path.in_(chunk))
                for r in await conn.execute(query):
                    found[r.path] = CachedCrc(r.path, r.size, r.mtime_ns, r.inode, r.crc32)
        return found

    async def put_crcs(self, crcs: list[CachedCrc]) -> None:
        if not crcs:
            return
        insert = self._insert()
        rows = [
            {
                "path": c.path,
                "size": c.size,
                "mtime_ns": c.mtime_ns,
                "inode": c.inode,
                "crc32": c.crc32,
            }
            for c in crcs
        ]
        async with self._write() as conn:
            for chunk in _chunks(rows, 500):
                statement = insert(crc_cache).values(chunk)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["path"],
                        set_={
                            "size": statement.excluded.size,
                            "mtime_ns": statement.excluded.mtime_ns,
                            "inode": statement.excluded.inode,
                            "crc32": statement.excluded.crc32,
                        },
                    )
                )

    # resumable (tus) uploads: plain rows, no cache (every worker must see every move)

    async def create_upload(self, upload: Upload, *, max_open: int | None = None) -> None:
        """The reservation and the count are read after locking the user's row (FOR
        UPDATE; SQLite: BEGIN IMMEDIATE), as `add_ref` does, so two creations, or a
        creation and an upload, by one user never both fit where only one does."""
        now = upload.created_at
        async with self._write({Topic.REFS}) as conn:
            quota_row = (await conn.execute(_quota_for_update(upload.user_id))).first()
            if quota_row is None:
                raise NotFound("The user was removed meanwhile.")
            count, reserved, soonest = await _open_uploads(conn, upload.user_id, now)
            if max_open is not None and count >= max_open:
                wait = 1
                if soonest is not None:
                    wait = max(1, math.ceil((_utc(soonest) - now).total_seconds()))
                raise TooManyUploads(
                    f"You have {count} unfinished uploads, the most allowed: finish or"
                    " delete one, or wait for one to expire.",
                    headers={"Retry-After": str(wait)},
                    limit=max_open,
                    retry_after=wait,
                )
            quota = quota_row.quota
            if quota is not None:
                used = int(await conn.scalar(_kept_bytes(upload.user_id)) or 0)
                if used + reserved + upload.length > quota:
                    raise QuotaExceeded(
                        quota=int(quota), used=used, size=upload.length, reserved=reserved
                    )
            await conn.execute(
                uploads.insert().values(
                    id=upload.id,
                    user_id=upload.user_id,
                    length=upload.length,
                    offset=upload.offset,
                    name=upload.name,
                    metadata=upload.metadata,
                    created_at=upload.created_at,
                    expires_at=upload.expires_at,
                    hash=upload.hash,
                )
            )

    async def open_uploads(self, user_id: int) -> tuple[int, int]:
        """Cached (a signed-in /me stays free of database round trips) until a write moves
        REFS or the soonest of the uploads expires."""
        now = _now()
        cached, stamp = self._reserved.get(user_id)
        if cached is None or (cached[2] is not None and _utc(cached[2]) <= now):
            async with self.engine.connect() as conn:
                cached = await _open_uploads(conn, user_id, now)
            self._reserved.put(user_id, cached, stamp)
        return cached[0], cached[1]

    async def get_upload(self, upload_id: str) -> Upload | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(uploads).where(uploads.c.id == upload_id))).first()
        if row is None:
            return None
        return Upload(
            row.id,
            row.user_id,
            int(row.length),
            int(row.offset),
            row.name,
            row.metadata,
            _utc(row.created_at),
            _utc(row.expires_at),
            row.hash,
        )

    async def advance_upload(
        self, upload_id: str, *, old_offset: int, new_offset: int, expires_at: datetime
    ) -> bool:
        """A compare-and-set in one UPDATE: atomic on PostgreSQL too, where a concurrent
        UPDATE of the row makes this one wait and then re-check `offset` on the row as the
        other left it (READ COMMITTED re-evaluates the WHERE), so two PATCHes from one
        offset never both win. An upload past its expiry never moves: its reservation
        ended then, so a PATCH still writing when it passed must not bring it back."""
        async with self._write() as conn:
            result = await conn.execute(
                uploads.update()
                .where(
                    uploads.c.id == upload_id,
                    uploads.c.offset == old_offset,
                    uploads.c.expires_at > _now(),
                )
                .values(offset=new_offset, expires_at=expires_at)
            )
            return bool(result.rowcount)

    async def finish_upload(self, upload_id: str, hex_hash: str) -> None:
        """Moves REFS: the upload no longer reserves anything."""
        async with self._write({Topic.REFS}) as conn:
            await conn.execute(
                uploads.update().where(uploads.c.id == upload_id).values(hash=hex_hash)
            )

    async def delete_upload(self, upload_id: str) -> bool:
        """Moves REFS: the upload no longer reserves anything."""
        async with self._write({Topic.REFS}) as conn:
            result = await conn.execute(uploads.delete().where(uploads.c.id == upload_id))
            return bool(result.rowcount)

    async def expired_uploads(self, now: datetime) -> list[str]:
        query = sa.select(uploads.c.id).where(uploads.c.expires_at <= now).order_by(uploads.c.id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def upload_ids(self) -> set[str]:
        async with self.engine.connect() as conn:
            return set((await conn.execute(sa.select(uploads.c.id))).scalars())

    # shared sign-in failures (PostgreSQL): see `filecask.auth`

    def failure_store(self) -> FailureStore | None:
        return self if self.shared else None

    def failures_stamp(self) -> int:
        return self.stamps.read(Topic.AUTH)

    async def record_failures(
        self, keys: Iterable[str], *, threshold: int, memory: float, floor: int = 0
    ) -> dict[str, int]:
        """Count one more failure for each key (from 1 again if the last was more than
        `memory` seconds ago, by the database's clock), each count becoming at least
        `floor`; the new counts. Moves AUTH (every instance refreshes its mirror) only when
        a key is, or stays, throttled."""
        now = sa.func.clock_timestamp()
        forgotten = auth_failures.c.last_at < now - _seconds(memory)
        insert = postgresql.insert(auth_failures).values(
            [{"key": key, "count": max(1, floor), "last_at": now} for key in sorted(set(keys))]
        )
        counted = sa.case((forgotten, 1), else_=auth_failures.c.count + 1)
        statement = insert.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "count": sa.func.greatest(counted, floor) if floor > 1 else counted,
                "last_at": now,
            },
        ).returning(auth_failures.c.key, auth_failures.c.count)
        changed: set[Topic] = set()
        async with self._write(changed) as conn:
            counts = {key: int(count) for key, count in await conn.execute(statement)}
            if any(count >= threshold for count in counts.values()):
                changed.add(Topic.AUTH)
            if random.randrange(FAILURE_PRUNE_ODDS) == 0:
                await conn.execute(
                    auth_failures.delete().where(auth_failures.c.last_at < now - _seconds(memory))
                )
        return counts

    async def clear_failures(self, keys: Iterable[str], *, threshold: int) -> None:
        """Forget the keys' failures (a right password); moves AUTH if one was throttled."""
        changed: set[Topic] = set()
        statement = (
            auth_failures.delete()
            .where(auth_failures.c.key.in_(sorted(set(keys))))
            .returning(auth_failures.c.count)
        )
        async with self._write(changed) as conn:
            if any(count >= threshold for count in (await conn.execute(statement)).scalars()):
                changed.add(Topic.AUTH)

    async def throttled_failures(
        self, *, threshold: int, memory: float, since: float | None
    ) -> tuple[float, list[tuple[str, int, float]]]:
        """The database's clock (epoch seconds) as the read began, and the keys with at
        least `threshold` failures, the last one less than `memory` seconds ago (and after
        `since`, by the same clock, if given): (key, count, seconds since the last)."""
        now = sa.func.clock_timestamp()
        query = (
            sa.select(
                auth_failures.c.key,
                auth_failures.c.count,
                sa.extract("epoch", now - auth_failures.c.last_at),
            )
            .where(
                auth_failures.c.count >= threshold,
                auth_failures.c.last_at > now - _seconds(memory),
            )
            .order_by(auth_failures.c.last_at.desc())
            .limit(FAILURE_ROWS_MAX)
        )
        if since is not None:
            query = query.where(auth_failures.c.last_at > sa.func.to_timestamp(since))
        async with self.engine.connect() as conn:
            started = float(await conn.scalar(sa.select(sa.extract("epoch", now))) or 0.0)
            rows = (await conn.execute(query)).all()
        return started, [(key, int(count), float(age)) for key, count, age in rows]

    async def announce(self, *topics: Topic) -> None:
        """Move the stamps of `topics` here and, with PostgreSQL, at every instance: for a
        change made outside the database (fsck quarantining a corrupt blob's bytes)."""
        if not self.shared:
            self.stamps.bump(*topics)
            return
        async with self._write(set(topics)):
            pass

    def _insert(self) -> Any:
        """The dialect's INSERT, which has ON CONFLICT (both sqlite and postgresql)."""
        return postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert

    @asynccontextmanager
    async def _write(self, changed: set[Topic] | None = None) -> AsyncIterator[AsyncConnection]:
        """A write transaction; once it has ended, the stamps of `changed` move (also on
        failure: a needless refresh is harmless, a missed one is not). The caller may add
        topics inside the transaction, when what changed depends on it."""
        try:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(**{_WRITE: True})
                async with conn.begin():
                    yield conn
                    if changed and self.shared:
                        await _publish(conn, changed)
        except OperationalError as exc:
            if _is_disk_full(exc):
                raise InsufficientStorage("The database's disk is full.") from exc
            raise
        finally:
            self.stamps.bump(*(changed or ()))


async def _publish(conn: AsyncConnection, changed: set[Topic]) -> None:
    """Increment the counters of `changed` and notify the change feed, in the writer's
    transaction (PostgreSQL delivers the notification at commit, and never on rollback).
    One statement, rows in topic order (no deadlock between two writers), run last so the
    counter rows stay locked only while the transaction commits."""
    topics = sorted(changed)
    values = sa.values(
        sa.column("topic", sa.Integer), sa.column("counter", sa.BigInteger), name="v"
    ).data([(int(topic), 1) for topic in topics])
    upsert = (
        postgresql.insert(change_counters)
        .from_select(["topic", "counter"], sa.select(values).order_by(values.c.topic))
        .on_conflict_do_update(
            index_elements=["topic"], set_={"counter": change_counters.c.counter + 1}
        )
        .returning(change_counters.c.topic, change_counters.c.counter)
        .cte("bumped")
    )
    item = sa.cast(upsert.c.topic, sa.Text) + ":" + sa.cast(upsert.c.counter, sa.Text)
    payload = sa.func.string_agg(item, ",")
    await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, payload)).select_from(upsert))


def _seconds(value: float) -> Any:
    """An interval of `value` seconds (PostgreSQL)."""
    return sa.func.make_interval(0, 0, 0, 0, 0, 0, value)


def _lock_blob(hex_hash: str, *, share: bool = False) -> sa.Select[Any]:
    """The blob's row, locked until the transaction ends: FOR UPDATE by those who may
    delete it, FOR SHARE by those adding a reference to it (PostgreSQL; SQLite's compiler
    drops the clause, BEGIN IMMEDIATE serialises writers instead)."""
    return sa.select(blobs.c.hash).where(blobs.c.hash == hex_hash).with_for_update(read=share)


def _is_disk_full(exc: OperationalError) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100): a 507, not a 500."""
    text = str(exc.orig).lower()
    return "database or disk is full" in text or getattr(exc.orig, "sqlstate", "") == "53100"


def _async_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the async driver."""
    for plain, driver in _ASYNC_DRIVERS:
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours (see module docstring).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class EmptyDatabase(Exception):
    """The database has never been set up, where one that has was expected."""


def _is_set_up(conn: sa.Connection) -> bool:
    return sa.inspect(conn).has_table("alembic_version")


def _upgrade_schema(conn: sa.Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(resources.files("filecask") / "migrations"))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def _lookup_user(name: str, *columns: Any) -> sa.Select[Any]:
    """`columns` of the user `name` means: exact name first, else by normalised name."""
    exact = users.c.name == name
    return (
        sa.select(*columns)
        .where(sa.or_(exact, users.c.name_key == user_name_key(name)))
        .order_by(sa.case((exact, 0), else_=1))
        .limit(1)
    )


async def _check_quota(
    conn: AsyncConnection, user_id: int, blob: BlobInfo, now: datetime, upload_id: str | None
) -> None:
    """QuotaExceeded if a new reference to `blob` would take the user past their quota.

    Runs first in `add_ref`'s write transaction, so the check and the insert are one atomic
    step: on SQLite, BEGIN IMMEDIATE already makes every writer of every process wait for
    the one before it; on PostgreSQL the user's row is locked (FOR UPDATE, which SQLite's
    compiler leaves out), so a second upload (or bundle, or resumable upload's creation) by
    the same user waits here and then, at READ COMMITTED, sums a usage that includes the
    first. Usage is summed from the tables, never from a cache: every distinct blob the user
    keeps, by file or by bundle, plus what their other open resumable uploads reserve. The
    lock is taken whether or not a quota is set: a quota set concurrently (an UPDATE of the
    same row) is then seen too, and a user removed meanwhile is NotFound, not a foreign key
    error."""
    row = (await conn.execute(_quota_for_update(user_id))).first()
    if row is None:
        raise NotFound("The user was removed meanwhile.")
    quota = row.quota
    if quota is None:
        return
    kept = _kept_hashes(user_id).subquery()
    keeps = sa.select(kept.c.hash).where(kept.c.hash == blob.hash).limit(1)
    if await conn.scalar(keeps) is not None:
        return  # content the user keeps already costs nothing more
    used = int(await conn.scalar(_kept_bytes(user_id)) or 0)
    _, reserved, _ = await _open_uploads(conn, user_id, now, excluding=upload_id)
    if used + reserved + blob.size > quota:
        raise QuotaExceeded(quota=int(quota), used=used, size=blob.size, reserved=reserved)


def _held_entries() -> sa.Join:
    """Bundle entries joined with their bundles' holders."""
    return bundle_entries.join(
        bundle_holders, bundle_holders.c.bundle_id == bundle_entries.c.bundle_id
    )


def _kept_hashes(user_id: int) -> sa.CompoundSelect[tuple[str]]:
    """Every distinct hash the user keeps alive: their file references' and the entries of
    the bundles they hold (UNION: each once)."""
    by_ref = sa.select(refs.c.hash.label("hash")).where(refs.c.user_id == user_id)
    by_bundle = (
        sa.select(bundle_entries.c.hash.label("hash"))
        .select_from(_held_entries())
        .where(bundle_holders.c.user_id == user_id)
    )
    return sa.union(by_ref, by_bundle)


def _kept_bytes(user_id: int) -> sa.Select[Any]:
    """The user's usage in bytes: the sizes of `_kept_hashes`, summed."""
    kept = _kept_hashes(user_id).subquery()
    return sa.select(sa.func.coalesce(sa.func.sum(blobs.c.size), 0)).select_from(
        blobs.join(kept, kept.c.hash == blobs.c.hash)
    )


def _count_by_user(column: sa.Column[Any]) -> sa.Subquery:
    """(user_id, n): rows per user of `column`'s table."""
    return (
        sa.select(column.label("user_id"), sa.func.count().label("n")).group_by(column).subquery()
    )


def _open_upload(now: datetime) -> sa.ColumnElement[bool]:
    """An upload still reserving its length: not complete, not expired."""
    return sa.and_(uploads.c.hash.is_(None), uploads.c.expires_at > now)


async def _open_uploads(
    conn: AsyncConnection, user_id: int, now: datetime, *, excluding: str | None = None
) -> tuple[int, int, datetime | None]:
    """The user's open uploads: how many, the bytes they reserve, the soonest expiry."""
    query = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(uploads.c.length), 0),
        sa.func.min(uploads.c.expires_at),
    ).where(uploads.c.user_id == user_id, _open_upload(now))
    if excluding is not None:
        query = query.where(uploads.c.id != excluding)
    count, reserved, soonest = (await conn.execute(query)).one()
    return int(count), int(reserved), soonest


async def _held_refs(conn: AsyncConnection, user_id: int, hashes: list[str]) -> set[str]:
    """Those of `hashes` the user holds a file reference to."""
    held: set[str] = set()
    for chunk in _chunks(hashes, 500):
        query = sa.select(refs.c.hash).where(refs.c.user_id == user_id, refs.c.hash.in_(chunk))
        held.update((await conn.execute(query)).scalars())
    return held


async def _check_bundle_count(
    conn: AsyncConnection, user_id: int, bundle_id: str, max_bundles: int
) -> None:
    """TooManyBundles if the user holds `max_bundles` bundles and not `bundle_id`."""
    mine = bundle_holders.c.user_id == user_id
    holds_it = sa.select(bundle_holders.c.id).where(mine, bundle_holders.c.bundle_id == bundle_id)
    if await conn.scalar(holds_it) is not None:
        return
    held = int(await conn.scalar(sa.select(sa.func.count()).where(mine)) or 0)
    if held >= max_bundles:
        raise TooManyBundles(
            f"You hold {held} bundles, the most allowed: delete one first.", limit=max_bundles
        )


def _quota_for_update(user_id: int) -> sa.Select[Any]:
    """The user's quota, locking their row until the transaction ends (FOR UPDATE on
    PostgreSQL; SQLite's compiler drops the clause, BEGIN IMMEDIATE serialises instead)."""
    return sa.select(users.c.quota).where(users.c.id == user_id).with_for_update()


def _is_held() -> sa.Exists:
    """Someone holds the bundle: one with no holder (left by a user removal before it was
    atomic) is garbage for fsck and gc to remove, and no link to it answers meanwhile."""
    return sa.select(bundle_holders.c.id).where(bundle_holders.c.bundle_id == bundles.c.id).exists()


async def _drop_if_holderless(conn: AsyncConnection, bundle_id: str) -> list[str] | None:
    """Delete the bundle and its entries if nobody holds it (its row locked FOR UPDATE
    first, as in `release_bundle`: an `add_bundle` of it, FOR SHARE, waits, then makes it
    afresh); the hashes its entries named, or None if it is held or gone."""
    locked = sa.select(bundles.c.id).where(bundles.c.id == bundle_id).with_for_update()
    if await conn.scalar(locked) is None:
        return None
    held = sa.select(bundle_holders.c.id).where(bundle_holders.c.bundle_id == bundle_id)
    if await conn.scalar(held.limit(1)) is not None:
        return None
    named = sa.select(bundle_entries.c.hash).where(bundle_entries.c.bundle_id == bundle_id)
    hashes = list((await conn.execute(named.distinct())).scalars())
    await conn.execute(bundle_entries.delete().where(bundle_entries.c.bundle_id == bundle_id))
    await conn.execute(bundles.delete().where(bundles.c.id == bundle_id))
    return hashes


async def _is_referenced(conn: AsyncConnection, hex_hash: str) -> bool:
    """A user's reference or a bundle entry keeps a blob."""
    by_ref = sa.select(refs.c.id).where(refs.c.hash == hex_hash).limit(1)
    if await conn.scalar(by_ref) is not None:
        return True
    by_bundle = sa.select(bundle_entries.c.position).where(bundle_entries.c.hash == hex_hash)
    return await conn.scalar(by_bundle.limit(1)) is not None


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    """SQLite limits bound parameters per statement; batch long IN lists and inserts."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _ref_query() -> sa.Select[Any]:
    return sa.select(
        refs.c.id,
        refs.c.hash,
        refs.c.name,
        blobs.c.size,
        blobs.c.content_type,
        refs.c.created_at,
    ).select_from(refs.join(blobs))


def _user(row: sa.Row[Any]) -> User:
    return User(
        row.id, row.name, row.password_hash, row.is_admin, _utc(row.created_at), _quota(row.quota)
    )


def _quota(value: Any) -> int | None:
    return None if value is None else int(value)


def _record(row: sa.Row[Any]) -> FileRecord:
    return FileRecord(row.id, row.hash, row.name, row.size, row.content_type, _utc(row.created_at))


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
