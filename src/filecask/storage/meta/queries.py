"""SQL pieces several record types share: a user looked up by name, what a user keeps alive
(the quota's figure), their open uploads' reservations, a holderless bundle's removal, and
the small conversions every part uses. No class and no transaction of its own: each
function is an expression, or runs in the caller's connection."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from filecask.names import user_name_key
from filecask.storage.meta.schema import (
    blobs,
    bundle_entries,
    bundle_holders,
    bundles,
    refs,
    uploads,
    users,
)


def lookup_user(name: str, *columns: Any) -> sa.Select[Any]:
    """`columns` of the user `name` means: exact name first, else by normalised name."""
    exact = users.c.name == name
    return (
        sa.select(*columns)
        .where(sa.or_(exact, users.c.name_key == user_name_key(name)))
        .order_by(sa.case((exact, 0), else_=1))
        .limit(1)
    )


def held_entries() -> sa.Join:
    """Bundle entries joined with their bundles' holders."""
    return bundle_entries.join(
        bundle_holders, bundle_holders.c.bundle_id == bundle_entries.c.bundle_id
    )


def kept_hashes(user_id: int) -> sa.CompoundSelect[tuple[str]]:
    """Every distinct hash the user keeps alive: their file references' and the entries of
    the bundles they hold (UNION: each once)."""
    by_ref = sa.select(refs.c.hash.label("hash")).where(refs.c.user_id == user_id)
    by_bundle = (
        sa.select(bundle_entries.c.hash.label("hash"))
        .select_from(held_entries())
        .where(bundle_holders.c.user_id == user_id)
    )
    return sa.union(by_ref, by_bundle)


def kept_bytes(user_id: int) -> sa.Select[Any]:
    """The user's usage in bytes: the sizes of `kept_hashes`, summed."""
    kept = kept_hashes(user_id).subquery()
    return sa.select(sa.func.coalesce(sa.func.sum(blobs.c.size), 0)).select_from(
        blobs.join(kept, kept.c.hash == blobs.c.hash)
    )


def count_by_user(column: sa.Column[Any]) -> sa.Subquery:
    """(user_id, n): rows per user of `column`'s table."""
    return (
        sa.select(column.label("user_id"), sa.func.count().label("n")).group_by(column).subquery()
    )


def open_upload(now: datetime) -> sa.ColumnElement[bool]:
    """An upload still reserving its length: not complete, not expired."""
    return sa.and_(uploads.c.hash.is_(None), uploads.c.expires_at > now)


async def open_uploads_of(
    conn: AsyncConnection, user_id: int, now: datetime, *, excluding: str | None = None
) -> tuple[int, int, datetime | None]:
    """The user's open uploads: how many, the bytes they reserve, the soonest expiry."""
    query = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(uploads.c.length), 0),
        sa.func.min(uploads.c.expires_at),
    ).where(uploads.c.user_id == user_id, open_upload(now))
    if excluding is not None:
        query = query.where(uploads.c.id != excluding)
    count, reserved, soonest = (await conn.execute(query)).one()
    return int(count), int(reserved), soonest


async def held_refs(conn: AsyncConnection, user_id: int, hashes: list[str]) -> set[str]:
    """Those of `hashes` the user holds a file reference to."""
    held: set[str] = set()
    for chunk in chunks(hashes, 500):
        query = sa.select(refs.c.hash).where(refs.c.user_id == user_id, refs.c.hash.in_(chunk))
        held.update((await conn.execute(query)).scalars())
    return held


def quota_for_update(user_id: int) -> sa.Select[Any]:
    """The user's quota, locking their row until the transaction ends (FOR UPDATE on
    PostgreSQL; SQLite's compiler drops the clause, BEGIN IMMEDIATE serialises instead)."""
    return sa.select(users.c.quota).where(users.c.id == user_id).with_for_update()


def is_held() -> sa.Exists:
    """Someone holds the bundle: one with no holder (left by a user removal before it was
    atomic) is garbage for fsck and gc to remove, and no link to it answers meanwhile."""
    return sa.select(bundle_holders.c.id).where(bundle_holders.c.bundle_id == bundles.c.id).exists()


async def drop_if_holderless(conn: AsyncConnection, bundle_id: str) -> list[str] | None:
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


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """SQLite limits bound parameters per statement; batch long IN lists and inserts."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def quota_of(value: Any) -> int | None:
    return None if value is None else int(value)


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
