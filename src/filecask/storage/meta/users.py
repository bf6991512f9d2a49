"""Users: their rows (`users`), looked up by exact or normalised name, created, listed with
their figures, re-keyed, given quotas and removed with everything they kept.

`get_user` answers from two caches that follow the USERS stamp: the users found and the
names asked for and not found (a made-up name's lookup costs what a real one's does, so its
time does not tell which names exist).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from filecask.errors import Conflict, NotFound
from filecask.names import user_name_key
from filecask.storage.changes import StampedCache, Topic
from filecask.storage.meta import RemovedUser, Usage, User, UserSummary
from filecask.storage.meta.engine import SqlEngine
from filecask.storage.meta.queries import (
    as_utc,
    count_by_user,
    drop_if_holderless,
    held_entries,
    lookup_user,
    open_upload,
    quota_of,
    utc_now,
)
from filecask.storage.meta.schema import blobs, bundle_entries, bundle_holders, refs, uploads, users

USER_CACHE_ITEMS = 10_000


class UserRecords(SqlEngine):
    """`users`: lookups by name (cached), creation, figures, password, quota, removal."""

    def _setup(self) -> None:
        super()._setup()
        self._users: StampedCache[str, User] = StampedCache(
            self.stamps, Topic.USERS, max_items=USER_CACHE_ITEMS
        )
        # Names asked for and not found (sign-ins with made-up names): answered from memory
        # like a known name's row, so the lookup's time does not tell which names exist.
        self._no_users: StampedCache[str, bool] = StampedCache(
            self.stamps, Topic.USERS, max_items=USER_CACHE_ITEMS
        )

    async def create_user(
        self, name: str, password_hash: str, *, is_admin: bool, quota: int | None = None
    ) -> User:
        """ON CONFLICT rather than look-then-insert: on PostgreSQL two instances creating
        the same name at once (two first starts, each bootstrapping `admin`) would otherwise
        both look, and the second insert would fail with an IntegrityError, not Conflict.
        A name whose normalised form is taken (`Admin` next to `admin`) conflicts too."""
        insert = self._insert()
        async with self._write({Topic.USERS}) as conn:
            created_at = utc_now()
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
                taken = await conn.scalar(lookup_user(name, users.c.name))
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
            row = (await conn.execute(lookup_user(name, users))).first()
        return None if row is None else _user(row)

    async def list_users(self) -> list[UserSummary]:
        """Every user with the figures of `usage` and `open_uploads`, in one query: each
        figure is grouped by user in a subquery, then joined (a plain join of refs and
        bundle entries would count a blob kept both ways twice)."""
        kept = sa.union(
            sa.select(refs.c.user_id, refs.c.hash),
            sa.select(bundle_holders.c.user_id, bundle_entries.c.hash).select_from(held_entries()),
        ).subquery()
        kept_bytes = (
            sa.select(kept.c.user_id, sa.func.sum(blobs.c.size).label("n"))
            .select_from(kept.join(blobs, blobs.c.hash == kept.c.hash))
            .group_by(kept.c.user_id)
            .subquery()
        )
        files = count_by_user(refs.c.user_id)
        held = count_by_user(bundle_holders.c.user_id)
        reserved = (
            sa.select(uploads.c.user_id, sa.func.sum(uploads.c.length).label("n"))
            .where(open_upload(utc_now()))
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
                as_utc(r[2]),
                Usage(int(r[4]), int(r[5]), int(r[6])),
                quota_of(r[3]),
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
            locked = lookup_user(name, users.c.id).with_for_update()
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
                hashes.update(await drop_if_holderless(conn, bundle_id) or ())
            await conn.execute(users.delete().where(users.c.id == user_id))
            return RemovedUser(upload_ids, dropped.rowcount, sorted(hashes))

    async def _update_user(self, name: str, **values: Any) -> None:
        async with self._write({Topic.USERS}) as conn:
            target = lookup_user(name, users.c.id).scalar_subquery()
            result = await conn.execute(users.update().where(users.c.id == target).values(values))
            if result.rowcount == 0:
                raise NotFound(f"No user named {name!r}.", user=name)


def _user(row: sa.Row[Any]) -> User:
    return User(
        row.id,
        row.name,
        row.password_hash,
        row.is_admin,
        as_utc(row.created_at),
        quota_of(row.quota),
    )
