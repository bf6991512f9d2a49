"""Failed sign-ins shared by every instance (`auth_failures`, PostgreSQL only): the
`FailureStore` the authenticator counts and mirrors throttled keys through (see
`filecask.auth`). With SQLite there is one machine, and failures stay in each process."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from filecask.storage.changes import Topic
from filecask.storage.meta import FailureStore
from filecask.storage.meta.engine import SqlEngine
from filecask.storage.meta.schema import auth_failures

FAILURE_ROWS_MAX = 100_000
"""Most throttled keys one mirror refresh reads (the newest first)."""
FAILURE_PRUNE_ODDS = 64
"""One recorded failure in this many also deletes the rows that have been forgotten."""


class FailureRecords(SqlEngine):
    """`auth_failures`: the `FailureStore` of a shared (PostgreSQL) database."""

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


def _seconds(value: float) -> Any:
    """An interval of `value` seconds (PostgreSQL)."""
    return sa.func.make_interval(0, 0, 0, 0, 0, 0, value)
