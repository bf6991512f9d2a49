"""The plumbing under every record type: the engine and its pool, the schema's migrations,
the write transaction with its change stamps, and the raw PostgreSQL connection.

It owns no table of its own: `SqlEngine` is the base each part of `SqlMetaStore` (users,
blobs and references, bundles, uploads, the CRC cache, sign-in failures) builds on, and
the only place that touches `change_counters` (`_publish`).

SQLite specifics, set on every connection: WAL (readers never wait for the writer), a busy
timeout (a brief lock waits instead of failing), foreign keys on, and write transactions
opened with BEGIN IMMEDIATE: a deferred transaction that later wants to write can fail with
"database is locked" at once, whatever the timeout, when another writer got there first.

PostgreSQL: every write that changes a topic also increments the topic's `change_counters`
row and `pg_notify`s the change feed, as the last statements of its transaction (so the
counter rows are locked only for the commit itself); `PostgresChangeFeed`, started by
`open`, carries other instances' writes to the local stamps within `change_poll`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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

from filecask.errors import InsufficientStorage
from filecask.storage.changes import CHANNEL, ChangeStamps, PostgresChangeFeed, Topic
from filecask.storage.meta.schema import change_counters

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE = "filecask_write"
_ASYNC_DRIVERS = (
    ("sqlite://", "sqlite+aiosqlite://"),
    ("postgresql://", "postgresql+asyncpg://"),
    ("postgres://", "postgresql+asyncpg://"),
)


CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a raw (asyncpg) connection."""


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


class SqlEngine:
    """The connection, the migrations and the write transaction every part writes in."""

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
        self._setup()

    def _setup(self) -> None:
        """Where each record type's part, after `super()._setup()`, makes its caches (on
        `self.stamps`, which `__init__` has set)."""

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
