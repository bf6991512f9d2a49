"""Resumable (tus) uploads: the `uploads` rows, plain and uncached (every worker must see
every move) but for the per-user figure `open_uploads`. An open upload reserves its length
against its user's quota; `create_upload` checks the reservation and the per-user count
after locking the user's row, as `add_ref` does."""

from __future__ import annotations

import math
from datetime import datetime

import sqlalchemy as sa

from filecask.errors import NotFound, QuotaExceeded, TooManyUploads
from filecask.storage.changes import StampedCache, Topic
from filecask.storage.meta import Upload
from filecask.storage.meta.engine import SqlEngine
from filecask.storage.meta.queries import (
    as_utc,
    kept_bytes,
    open_uploads_of,
    quota_for_update,
    utc_now,
)
from filecask.storage.meta.schema import uploads

RESERVED_CACHE_ITEMS = 10_000


class UploadRecords(SqlEngine):
    """`uploads`: created under the quota and the per-user cap, advanced, finished, swept."""

    def _setup(self) -> None:
        super()._setup()
        # A user's open uploads (count, reserved bytes, soonest expiry): they change by a
        # write that moves REFS (created, completed, deleted) or when the soonest expires.
        self._reserved: StampedCache[int, tuple[int, int, datetime | None]] = StampedCache(
            self.stamps, Topic.REFS, max_items=RESERVED_CACHE_ITEMS
        )

    async def create_upload(self, upload: Upload, *, max_open: int | None = None) -> None:
        """The reservation and the count are read after locking the user's row (FOR
        UPDATE; SQLite: BEGIN IMMEDIATE), as `add_ref` does, so two creations, or a
        creation and an upload, by one user never both fit where only one does."""
        now = upload.created_at
        async with self._write({Topic.REFS}) as conn:
            quota_row = (await conn.execute(quota_for_update(upload.user_id))).first()
            if quota_row is None:
                raise NotFound("The user was removed meanwhile.")
            count, reserved, soonest = await open_uploads_of(conn, upload.user_id, now)
            if max_open is not None and count >= max_open:
                wait = 1
                if soonest is not None:
                    wait = max(1, math.ceil((as_utc(soonest) - now).total_seconds()))
                raise TooManyUploads(
                    f"You have {count} unfinished uploads, the most allowed: finish or"
                    " delete one, or wait for one to expire.",
                    headers={"Retry-After": str(wait)},
                    limit=max_open,
                    retry_after=wait,
                )
            quota = quota_row.quota
            if quota is not None:
                used = int(await conn.scalar(kept_bytes(upload.user_id)) or 0)
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
        now = utc_now()
        cached, stamp = self._reserved.get(user_id)
        if cached is None or (cached[2] is not None and as_utc(cached[2]) <= now):
            async with self.engine.connect() as conn:
                cached = await open_uploads_of(conn, user_id, now)
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
            as_utc(row.created_at),
            as_utc(row.expires_at),
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
                    uploads.c.expires_at > utc_now(),
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
