"""The service container and the app's keys: the bottom of the HTTP side's import graph.

Handlers, middleware and the protocol reach the backends only through `SERVICES` and
`SETTINGS`, declared here rather than in `app` (which imports every handler) so that
importing them never pulls the app's wiring in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from filecask.archives.plans import BundlePlans, FolderPlans
from filecask.auth import Authenticator
from filecask.settings import Settings
from filecask.storage.blobs import BlobStore
from filecask.storage.changes import StampedCache
from filecask.storage.files import FileStore
from filecask.storage.meta import MetaStore

__all__ = ["JSON_BODY_MAX", "SERVICES", "SETTINGS", "USER", "CachedBody", "Services"]

JSON_BODY_MAX = 1 << 20
"""Largest JSON or form body read into memory (uploads stream and are not limited here)."""


@dataclass(frozen=True, slots=True)
class CachedBody:
    """A small blob's bytes, with the headers of a plain download of it (no `?name=`)."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]
    head: bytes
    """The same answer's status line and headers up to `Date` (filecask.http.fastpath)."""


@dataclass(frozen=True)
class Services:
    """Everything a handler may use; built once per app start."""

    settings: Settings
    meta: MetaStore
    blobs: BlobStore
    files: FileStore
    auth: Authenticator
    bodies: StampedCache[str, CachedBody]
    """Small blobs in memory: a plain download of one is a dict lookup and one write."""
    plans: FolderPlans
    bundle_plans: BundlePlans = field(default_factory=BundlePlans)
    """Bundles' ZIP plans, made off the event loop once per process (issue 14 §3)."""


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
USER = web.RequestKey("user", str)
"""The signed-in user's name, for the access log."""
