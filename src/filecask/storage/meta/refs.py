"""Blobs and references: the `blobs` rows (one per stored content, alive exactly while
something keeps it) and each user's `refs` to them, with the quota check that guards every
new reference and the figures derived from them (usage, totals, what fsck and gc compare).

Row locks (PostgreSQL; SQLite's compiler drops the FOR clauses, BEGIN IMMEDIATE serialises
writers): a transaction that may delete a blob row locks it FOR UPDATE first (`remove_ref`,
`drop_blob_if_unreferenced`), one that adds a reference to an existing blob locks it FOR
SHARE (`add_ref`), and the user's row is locked FOR UPDATE before the quota is summed.

`get_blob` and `usage` answer from caches that follow the BLOBS, NEW_BLOBS and REFS stamps;
hashes asked for and not found are remembered too (until NEW_BLOBS moves).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from filecask.errors import NotFound, QuotaExceeded
from filecask.storage.changes import StampedCache, Topic
from filecask.storage.meta import BlobInfo, FileRecord, RemoveOutcome, Usage
from filecask.storage.meta.engine import SqlEngine
from filecask.storage.meta.queries import (
    as_utc,
    chunks,
    held_refs,
    kept_bytes,
    kept_hashes,
    open_uploads_of,
    quota_for_update,
    utc_now,
)
from filecask.storage.meta.schema import blobs, bundle_entries, bundle_holders, refs

BLOB_CACHE_ITEMS = 100_000
USAGE_CACHE_ITEMS = 10_000


class RefRecords(SqlEngine):
    """`blobs` and `refs`: references added under the quota, removed with the last blob row."""

    def _setup(self) -> None:
        super()._setup()
        self._blobs: StampedCache[str, BlobInfo] = StampedCache(
            self.stamps, Topic.BLOBS, max_items=BLOB_CACHE_ITEMS
        )
        self._usage: StampedCache[int, Usage] = StampedCache(
            self.stamps, Topic.REFS, max_items=USAGE_CACHE_ITEMS
        )
        # Hashes asked for and not found: a flood of 404s (scanners, stale links) would
        # otherwise cost a database round trip each, ten times the cost of a hit.
        self._missing: StampedCache[str, bool] = StampedCache(
            self.stamps, Topic.NEW_BLOBS, max_items=BLOB_CACHE_ITEMS
        )

    async def add_ref(
        self, user_id: int, blob: BlobInfo, name: str, *, upload_id: str | None = None
    ) -> tuple[FileRecord, bool]:
        now = utc_now()
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
        kept = kept_hashes(user_id).subquery()
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
        kept = kept_hashes(user_id).subquery()
        query = sa.select(sa.func.coalesce(sa.func.max(blobs.c.size), 0)).select_from(
            blobs.join(kept, kept.c.hash == blobs.c.hash)
        )
        async with self.engine.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def unheld_hashes(self, user_id: int, hashes: list[str]) -> set[str]:
        wanted = set(hashes)
        async with self.engine.connect() as conn:
            held = await held_refs(conn, user_id, sorted(wanted))
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
            kept_bytes(user_id).scalar_subquery(),
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

    async def blob_totals(self) -> tuple[int, int]:
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(blobs.c.size), 0))
        async with self.engine.connect() as conn:
            count, size = (await conn.execute(query.select_from(blobs))).one()
        return int(count), int(size)

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

    # which of a bundle manifest's hashes are stored at all

    async def missing_blobs(self, hashes: list[str]) -> set[str]:
        wanted = set(hashes)
        found: set[str] = set()
        async with self.engine.connect() as conn:
            for chunk in chunks(sorted(wanted), 500):
                query = sa.select(blobs.c.hash).where(blobs.c.hash.in_(chunk))
                found.update((await conn.execute(query)).scalars())
        return wanted - found


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
    row = (await conn.execute(quota_for_update(user_id))).first()
    if row is None:
        raise NotFound("The user was removed meanwhile.")
    quota = row.quota
    if quota is None:
        return
    kept = kept_hashes(user_id).subquery()
    keeps = sa.select(kept.c.hash).where(kept.c.hash == blob.hash).limit(1)
    if await conn.scalar(keeps) is not None:
        return  # content the user keeps already costs nothing more
    used = int(await conn.scalar(kept_bytes(user_id)) or 0)
    _, reserved, _ = await open_uploads_of(conn, user_id, now, excluding=upload_id)
    if used + reserved + blob.size > quota:
        raise QuotaExceeded(quota=int(quota), used=used, size=blob.size, reserved=reserved)


def _lock_blob(hex_hash: str, *, share: bool = False) -> sa.Select[Any]:
    """The blob's row, locked until the transaction ends: FOR UPDATE by those who may
    delete it, FOR SHARE by those adding a reference to it (PostgreSQL; SQLite's compiler
    drops the clause, BEGIN IMMEDIATE serialises writers instead)."""
    return sa.select(blobs.c.hash).where(blobs.c.hash == hex_hash).with_for_update(read=share)


async def _is_referenced(conn: AsyncConnection, hex_hash: str) -> bool:
    """A user's reference or a bundle entry keeps a blob."""
    by_ref = sa.select(refs.c.id).where(refs.c.hash == hex_hash).limit(1)
    if await conn.scalar(by_ref) is not None:
        return True
    by_bundle = sa.select(bundle_entries.c.position).where(bundle_entries.c.hash == hex_hash)
    return await conn.scalar(by_bundle.limit(1)) is not None


def _ref_query() -> sa.Select[Any]:
    return sa.select(
        refs.c.id,
        refs.c.hash,
        refs.c.name,
        blobs.c.size,
        blobs.c.content_type,
        refs.c.created_at,
    ).select_from(refs.join(blobs))


def _record(row: sa.Row[Any]) -> FileRecord:
    return FileRecord(
        row.id, row.hash, row.name, row.size, row.content_type, as_utc(row.created_at)
    )
