"""Bundles: `bundles` (an immutable list of (path, blob) entries, `bundle_entries`) and who
holds them (`bundle_holders`). A bundle lives while someone holds it, and keeps the blobs
it names alive meanwhile; the last holder's release removes it and hands back the hashes
for the caller to drop those nothing else keeps.

Row locks (PostgreSQL): `add_bundle` locks the user's row FOR UPDATE (the bundle count is
checked by one transaction at a time), the named blob rows FOR SHARE and the bundle's row
FOR SHARE; `release_bundle` and a holderless bundle's removal lock the bundle's row FOR
UPDATE, so a twin add and a last release wait for each other.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from filecask.errors import NotFound, TooManyBundles
from filecask.storage.changes import Topic
from filecask.storage.meta import (
    BlobInfo,
    Bundle,
    BundleEntry,
    BundleSummary,
    MissingBlobs,
    RemoveOutcome,
)
from filecask.storage.meta.engine import SqlEngine
from filecask.storage.meta.queries import (
    as_utc,
    chunks,
    drop_if_holderless,
    held_refs,
    is_held,
    quota_for_update,
    utc_now,
)
from filecask.storage.meta.schema import blobs, bundle_entries, bundle_holders, bundles

BUNDLE_PAGE = 500
"""Bundle entries read per query (`get_bundle`): a few ms of rows to objects at a time."""


class BundleRecords(SqlEngine):
    """`bundles`, `bundle_entries`, `bundle_holders`: made, read in pages, held, released."""

    async def holderless_bundles(self) -> list[tuple[str, int]]:
        query = (
            sa.select(bundles.c.id, sa.func.count(bundle_entries.c.position))
            .select_from(bundles.outerjoin(bundle_entries))
            .where(~is_held())
            .group_by(bundles.c.id)
            .order_by(bundles.c.id)
        )
        async with self.engine.connect() as conn:
            return [(r[0], int(r[1])) for r in (await conn.execute(query)).all()]

    async def drop_holderless_bundle(self, bundle_id: str) -> list[str] | None:
        async with self._write({Topic.REFS}) as conn:
            return await drop_if_holderless(conn, bundle_id)

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
            if (await conn.execute(quota_for_update(user_id))).first() is None:
                raise NotFound("The user was removed meanwhile.")
            for chunk in chunks(wanted, 500):
                query = (
                    sa.select(blobs.c.hash)
                    .where(blobs.c.hash.in_(chunk))
                    .order_by(blobs.c.hash)
                    .with_for_update(read=True)
                )
                await conn.execute(query)
            held = await held_refs(conn, user_id, wanted)
            if len(held) < len(wanted):
                raise MissingBlobs(set(wanted) - held)
            if max_bundles is not None:
                await _check_bundle_count(conn, user_id, bundle_id, max_bundles)
            while True:
                created = await conn.execute(
                    insert(bundles)
                    .values(id=bundle_id, name=name, created_at=utc_now())
                    .on_conflict_do_nothing(index_elements=["id"])
                )
                if created.rowcount:
                    rows = [
                        {"bundle_id": bundle_id, "position": i, "path": path, "hash": hex_hash}
                        for i, (path, hex_hash) in enumerate(entries)
                    ]
                    for chunk in chunks(rows, 500):
                        await conn.execute(bundle_entries.insert(), chunk)
                    break
                kept = sa.select(bundles.c.id).where(bundles.c.id == bundle_id)
                if await conn.scalar(kept.with_for_update(read=True)) is not None:
                    break
            result = await conn.execute(
                insert(bundle_holders)
                .values(bundle_id=bundle_id, user_id=user_id, created_at=utc_now())
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
        head = sa.select(bundles).where(bundles.c.id == bundle_id, is_held())
        for _attempt in range(3):
            async with self.engine.connect() as conn:
                row = (await conn.execute(head)).first()
                if row is None:
                    return None
                entries = await self._bundle_entries(conn, bundle_id)
                again = (await conn.execute(head)).first()
            if again is not None and again.created_at == row.created_at:
                return Bundle(row.id, row.name, as_utc(row.created_at), entries)
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
        query = sa.select(bundles.c.created_at).where(bundles.c.id == bundle_id, is_held())
        async with self.engine.connect() as conn:
            created = await conn.scalar(query)
        return None if created is None else as_utc(created)

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
        return [BundleSummary(r[0], r[1], int(r[3]), int(r[4]), as_utc(r[2])) for r in rows]

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
