"""Shared fixtures: settings factory, an in-process app client, users, and a guard that
fails any test whose code blocks the event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import encode_basic_auth, web
from aiohttp.test_utils import TestClient
from blockbuster import BlockBuster, blockbuster_ctx

import filecask.handlers.pages
import filecask.metrics
from filecask.app import SERVICES, Services, close_services, create_app, open_services
from filecask.settings import Settings

ADMIN_PASSWORD = "admin-password"
Auth = dict[str, str]
"""Request headers that sign in; pass as `headers=`."""


# create_app imports the handler modules (they need the app's keys), and prometheus-client
# reads /proc and the pages their files when first imported: once, at start-up, never in a
# request. Import them here so that start-up cost is not charged to the first test's loop.
_IMPORTED_AT_STARTUP = (filecask.handlers.pages, filecask.metrics)


def basic(name: str, password: str) -> Auth:
    return {"Authorization": encode_basic_auth(name, password)}


ADMIN = basic("admin", ADMIN_PASSWORD)

CHEAP_ARGON2: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory": 1 << 20,
    "argon2_parallelism": 1,
}
"""Real argon2id at a cost that keeps hundreds of test sign-ins fast."""

AppClient = TestClient[web.Request, web.Application]
MakeSettings = Callable[..., Settings]
MakeUser = Callable[..., Awaitable[Auth]]


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[BlockBuster | None]:
    """Any blocking call made on the event loop thread by our code raises BlockingError.

    Two allowances, each explained below: the metadata store's start-up and zero-copy
    sends onto a non-blocking socket."""
    if request.node.get_closest_marker("e2e"):
        yield None
        return
    with blockbuster_ctx(["filecask"]) as bb:
        for function in bb.functions.values():
            # Start-up, before the first request: SQLAlchemy resolves the SQLite path and
            # Alembic reads its migration scripts.
            function.can_block_in("filecask/metastore/sql.py", {"open", "_upgrade_schema"})
        # os.sendfile onto a non-blocking socket, retried on writability: exactly what
        # asyncio's own loop.sendfile does on the loop thread.
        bb.functions["os.sendfile"].can_block_in("filecask/sendfile.py", "_sendfile_range")
        yield bb


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    def make(**overrides: Any) -> Settings:
        base = Settings(
            data_dir=tmp_path / "data",
            admin_password=ADMIN_PASSWORD,
            access_log=False,
            **CHEAP_ARGON2,
        )
        return base.replace(**overrides)

    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings()


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[AppClient]], settings: Settings
) -> AppClient:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def services(client: AppClient) -> Services:
    return client.app[SERVICES]


@pytest.fixture
async def other_process(client: AppClient, settings: Settings) -> AsyncIterator[Services]:
    """The stores opened a second time on the same data directory, with caches of their own:
    what another worker or the CLI sees. Writes made here must reach `client` at once."""
    other = await open_services(settings)
    try:
        yield other
    finally:
        await close_services(other)


@pytest.fixture
def make_user(client: AppClient) -> MakeUser:
    """Create a user through the admin API (our own API, not raw SQL)."""

    async def make(name: str, *, admin: bool = False, password: str | None = None) -> Auth:
        password = password or f"{name}-password"
        response = await client.post(
            "/users",
            json={"name": name, "password": password, "is_admin": admin},
            headers=ADMIN,
        )
        assert response.status == 201, await response.text()
        return basic(name, password)

    return make


def assert_problem(body: dict[str, Any], status: int, slug: str | None = None) -> None:
    """Every error has the RFC 9457 shape."""
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["type"].startswith("https://")
    if slug is not None:
        assert body["type"].endswith("/" + slug), body["type"]
