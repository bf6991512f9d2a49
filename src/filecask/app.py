"""The application factory: wires settings, storage backends, middleware and routes.

`create_app` does no I/O itself; the backends are opened in a `cleanup_ctx` when the app
starts and closed when it stops, so tests and `serve` build the app the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from aiohttp import web

from filecask.archives import FolderPlans
from filecask.auth import Authenticator, generate_password
from filecask.blobstore.disk import DiskBlobStore
from filecask.changes import ChangeStamps, StampedCache, Topic
from filecask.errors import Conflict
from filecask.faults import CrashPoints
from filecask.filestore import FileStore
from filecask.locks import HashLocks
from filecask.metastore.sql import SqlMetaStore
from filecask.problem import problem_middleware
from filecask.settings import Settings

log = logging.getLogger("filecask")

BODY_CACHE_ITEMS = 100_000
JSON_BODY_MAX = 1 << 20
"""Largest JSON or form body read into memory (uploads stream and are not limited here)."""


@dataclass(frozen=True, slots=True)
class CachedBody:
    """A small blob's bytes, with the headers of a plain download of it (no `?name=`)."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Services:
    """Everything a handler may use; built once per app start."""

    settings: Settings
    meta: SqlMetaStore
    blobs: DiskBlobStore
    files: FileStore
    auth: Authenticator
    bodies: StampedCache[str, CachedBody]
    """Small blobs in memory: a plain download of one is a dict lookup and one write."""
    plans: FolderPlans


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)


def create_app(settings: Settings) -> web.Application:
    # The handlers import this module's keys, so they are imported here.
    from filecask.handlers import archives, files, ops, users

    # Order matters: problem_middleware is outermost so every error, including those of
    # later middleware, leaves as application/problem+json.
    app = web.Application(middlewares=[problem_middleware], client_max_size=JSON_BODY_MAX)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_services)
    app.router.add_routes(ops.routes)
    app.router.add_routes(archives.archive_routes)
    if settings.file_api:
        app.router.add_routes(files.routes)
        app.router.add_routes(users.routes)
        app.router.add_routes(archives.bundle_routes)
    return app


async def open_services(settings: Settings, *, reap: bool = True) -> Services:
    """Open every backend; if one fails, close those already open before re-raising.
    `reap`: remove dead uploads' scratch on the way (not for fsck/gc, which report it)."""
    stamps = ChangeStamps(settings.locks_dir / "changes")
    meta = SqlMetaStore(settings.effective_database_url, stamps)
    blobs = DiskBlobStore(settings.data_dir, reap_on_open=reap)
    locks = HashLocks(settings.locks_dir)
    async with contextlib.AsyncExitStack() as opened:
        await stamps.open()
        opened.push_async_callback(stamps.close)
        await blobs.open()
        opened.push_async_callback(blobs.close)
        await locks.open()
        opened.push_async_callback(locks.close)
        await meta.open()
        opened.push_async_callback(meta.close)
        auth = Authenticator(meta, settings)
        opened.pop_all()
    bodies: StampedCache[str, CachedBody] = StampedCache(
        stamps, Topic.BLOBS, max_items=BODY_CACHE_ITEMS, max_cost=settings.cache_size
    )
    files = FileStore(meta, blobs, locks, CrashPoints.from_environ(os.environ))
    return Services(settings, meta, blobs, files, auth, bodies, FolderPlans())


async def close_services(services: Services) -> None:
    await services.meta.close()
    await services.meta.stamps.close()
    await services.files.locks.close()
    await services.blobs.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    services = await open_services(app[SETTINGS])
    app[SERVICES] = services
    try:
        await bootstrap_admin(services)
        yield
    finally:
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
