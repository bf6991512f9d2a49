"""The application factory: wires settings, storage backends, middleware and routes.

`create_app` does no I/O itself; the backends are opened in a `cleanup_ctx` when the app
starts and closed when it stops, so tests and `serve` build the app the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from filecask.api import metrics
from filecask.api.openapi import route_tables
from filecask.archives.plans import FolderPlans
from filecask.auth import Authenticator, generate_password
from filecask.errors import Conflict
from filecask.faults import CrashPoints
from filecask.http import aiohttp_internals, prometheus_internals
from filecask.http.accesslog import log_client_gone
from filecask.http.metrics import install_metrics, metrics_middleware
from filecask.http.problem import problem_middleware
from filecask.services import JSON_BODY_MAX, SERVICES, SETTINGS, CachedBody, Services
from filecask.settings import Settings
from filecask.storage.blobs import BlobStore, make_blob_store
from filecask.storage.changes import ChangeStamps, StampedCache, Topic
from filecask.storage.files import FileStore
from filecask.storage.locks import hash_locks_for
from filecask.storage.meta.sql import EmptyDatabase, SqlMetaStore
from filecask.tus import handlers as uploads

log = logging.getLogger("filecask")

BODY_CACHE_ITEMS = 100_000


def create_app(settings: Settings) -> web.Application:
    # aiohttp's and prometheus-client's internals that filecask builds on are there.
    aiohttp_internals.check()
    prometheus_internals.check()
    # Order matters: problem_middleware is outermost but for metrics_middleware (which
    # raises nothing and must see the status the client gets) and the access line of a
    # client that left, so every error, including those of later middleware, leaves as
    # application/problem+json.
    first = [log_client_gone] if settings.access_log else []
    app = web.Application(
        middlewares=[*first, metrics_middleware, problem_middleware],
        client_max_size=JSON_BODY_MAX,
    )
    app[SETTINGS] = settings
    install_metrics(app)
    metrics.install(app)
    app.cleanup_ctx.append(_services)
    for _, table in route_tables(file_api=settings.file_api):
        app.router.add_routes(table)
    if settings.file_api:
        app.cleanup_ctx.append(uploads.sweeper)
    return app


async def open_services(settings: Settings, *, reap: bool = True) -> Services:
    """Open every backend; if one fails, close those already open before re-raising.
    `reap`: remove dead uploads' scratch on the way (not for fsck/gc, which report it)."""
    stamps = ChangeStamps(settings.locks_dir / "changes")
    meta = SqlMetaStore(
        settings.effective_database_url,
        stamps,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        change_poll=settings.change_poll,
    )
    blobs = make_blob_store(settings, reap_on_open=reap)
    locks = hash_locks_for(settings.effective_database_url, settings.locks_dir)
    async with contextlib.AsyncExitStack() as opened:
        await stamps.open()
        opened.push_async_callback(stamps.close)
        await blobs.open()
        opened.push_async_callback(blobs.close)
        # The database first: an unreachable or unusable one is reported by
        # `_open_metastore` in one line, before anything else (the locks) connects to it.
        await _open_metastore(meta, settings, blobs)
        opened.push_async_callback(meta.close)
        await locks.open()
        opened.push_async_callback(locks.close)
        auth = Authenticator(meta, settings)
        opened.pop_all()
    bodies: StampedCache[str, CachedBody] = StampedCache(
        stamps, Topic.BLOBS, max_items=BODY_CACHE_ITEMS, max_cost=settings.cache_size
    )
    files = FileStore(meta, blobs, locks, CrashPoints.from_environ(os.environ))
    return Services(settings, meta, blobs, files, auth, bodies, FolderPlans())


class StartupError(RuntimeError):
    """The database cannot be used as it is; the message says why and what to do."""


async def _open_metastore(meta: SqlMetaStore, settings: Settings, blobs: BlobStore) -> None:
    url = make_url(settings.effective_database_url)
    shown = url.render_as_string(hide_password=True)
    loop = asyncio.get_running_loop()
    holds_files = await blobs.holds_blobs()
    if holds_files:
        await loop.run_in_executor(None, _refuse_a_lost_database, settings)
    try:
        # A store with files and a database never set up (emptied, replaced, a fresh
        # PostgreSQL database): initialising it would make every file an orphan for the
        # next gc to delete.
        await meta.open(create=not holds_files)
    except EmptyDatabase as exc:
        await meta.close()
        raise StartupError(
            f"the database {shown} is empty but {_store_name(settings)} holds files. Restore"
            " the database from a backup; starting with an empty one would orphan every file."
        ) from exc
    except DBAPIError as exc:
        await meta.close()
        raise StartupError(
            f"cannot use the database {shown}: {exc.orig}. If it is damaged, stop every"
            " filecask process and restore it from a backup."
        ) from exc
    except OSError as exc:
        await meta.close()
        raise StartupError(f"cannot reach the database {shown}: {exc}") from exc


def _refuse_a_lost_database(settings: Settings) -> None:
    """Called when the store holds files: a SQLite file that is gone is refused before
    connecting, so not even an empty file is created in its place."""
    url = make_url(settings.effective_database_url)
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if os.path.exists(path):
        return
    raise StartupError(
        f"the database {path} is missing but {_store_name(settings)} holds files. Restore the"
        " database from a backup; starting with a new, empty one would orphan every file."
    )


def _store_name(settings: Settings) -> str:
    """Where the blobs are, for messages: the store directory or the s3:// URL."""
    return settings.storage or str(settings.store_dir)


async def close_services(services: Services) -> None:
    await services.meta.close()
    await services.meta.stamps.close()
    await services.files.locks.close()
    await services.blobs.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    services = await open_services(app[SETTINGS])
    app[SERVICES] = services
    try:
        await services.files.recover()
        await bootstrap_admin(services)
        yield
    finally:
        await services.files.drain()
        await close_services(services)


async def bootstrap_admin(services: Services) -> None:
    """On first start with no users, create `admin` so the store is usable at once."""
    if await services.meta.count_users():
        return
    password = services.settings.admin_password or generate_password()
    try:
        await services.meta.create_user(
            "admin", await services.auth.hash_password_async(password), is_admin=True
        )
    except Conflict:  # another worker got there first
        return
    if services.settings.admin_password:
        log.info("created user 'admin' with the password from FILECASK_ADMIN_PASSWORD")
        return
    banner = "=" * 64
    print(
        f"\n{banner}\n filecask: created the first user\n\n"
        f"   user:     admin\n   password: {password}\n\n"
        f" This password is shown only once. Change it with:\n"
        f"   filecask user passwd admin\n{banner}\n",
        file=sys.stderr,
        flush=True,
    )
