"""Shared fixtures: settings factory, an in-process app client, users, and a guard that
fails any test whose code blocks the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import encode_basic_auth, web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from blockbuster import BlockBuster, blockbuster_ctx

import filecask.api.pages
import filecask.http.metrics
from filecask.app import close_services, create_app, open_services
from filecask.hashes import fanout
from filecask.http.accesslog import AccessLogger
from filecask.http.protocol import make_runner
from filecask.services import SERVICES, Services
from filecask.settings import Settings
from tests import backends

ADMIN_PASSWORD = "admin-password"
Auth = dict[str, str]
"""Request headers that sign in; pass as `headers=`."""


# create_app imports the handler modules (they need the app's keys), and prometheus-client
# reads /proc and the pages their files when first imported: once, at start-up, never in a
# request. Import them here so that start-up cost is not charged to the first test's loop.
_IMPORTED_AT_STARTUP = (filecask.api.pages, filecask.http.metrics)


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
            function.can_block_in("filecask/storage/meta/engine.py", {"open", "_upgrade_schema"})
            # Start-up too: botocore reads ~/.aws/config and its JSON service models when
            # the S3 client is created.
            function.can_block_in("filecask/storage/blobs/s3.py", "open")
            # asyncpg looks for ~/.pgpass (a few stats, microseconds) when it opens a new
            # pool connection without a password.
            function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        # os.sendfile onto a non-blocking socket, retried on writability: exactly what
        # asyncio's own loop.sendfile does on the loop thread.
        bb.functions["os.sendfile"].can_block_in("filecask/http/sendfile.py", "_sendfile_range")
        yield bb


API_SUITE = {
    "tests.api.test_archives",
    "tests.api.test_files",
    "tests.api.test_openapi",
    "tests.api.test_ops",
    "tests.api.test_pages",
    "tests.api.test_users",
    "tests.storage.test_files",
    "tests.storage.test_fsck",
    "tests.storage.test_meta_quota",
    "tests.tus.test_handlers",
}
"""Modules run against every storage configuration (`backends.BACKENDS`), by full name
(`test_api_suite_names_real_modules` keeps the list true); the rest use SQLite and the
data directory."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("filecask")
    group.addoption(
        "--quick",
        action="store_true",
        help="the edit-test loop: no e2e or slow test, SQLite and the data directory only",
    )
    group.addoption(
        "--alone",
        choices=("include", "skip", "only"),
        default="include",
        help="tests marked `alone` (they time the server): run them too (default), "
        "leave them out (the parallel pass of scripts/test), or run only them",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ not in API_SUITE:
        return
    if "backend" not in metafunc.fixturenames:
        return
    local_only = metafunc.definition.get_closest_marker("local_only") is not None
    quick = metafunc.config.getoption("quick")
    metafunc.parametrize(
        "backend",
        backends.BACKENDS[:1] if local_only or quick else backends.BACKENDS,
        indirect=True,
    )


SERVICE_FIXTURES = frozenset({"postgres", "s3_server"})
"""The real PostgreSQL and S3 servers: what `--quick` leaves out."""


@pytest.hookimpl(trylast=True)  # after tests/e2e/conftest.py has marked its tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    quick: bool = config.getoption("quick")
    alone: str = config.getoption("alone")

    def kept(item: pytest.Item) -> bool:
        if quick and (
            item.get_closest_marker("e2e")
            or item.get_closest_marker("slow")
            or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        ):
            return False
        if alone == "include":
            return True
        marked = item.get_closest_marker("alone") is not None
        return marked == (alone == "only")

    deselected = [item for item in items if not kept(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if kept(item)]
    # The slow tests first (a stable sort: the rest keep their order). On parallel workers
    # they then start at once, each on its own, instead of one of them ending the run.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def postgres() -> Iterator[backends.Postgres | None]:
    """A migrated template database on the machine's PostgreSQL, or None if unreachable."""
    if backends.postgres_unavailable() is not None:
        yield None
        return
    server = backends.start_postgres_template()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[backends.S3Server]:
    server = backends.start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_database(postgres: backends.Postgres | None) -> Iterator[str]:
    """The URL of a migrated database of its own, empty (new, or emptied for this test)."""
    server = backends.require(postgres)
    name = server.create()
    try:
        yield backends.database_url(name)
    finally:
        server.release(name)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for one storage configuration: `sqlite-disk` unless the test is part of
    the API suite, which runs under all three."""
    kind = getattr(request, "param", "sqlite-disk")
    overrides: dict[str, Any] = {}
    if kind.startswith("pg-"):
        overrides["database_url"] = request.getfixturevalue("postgres_database")
    if kind.endswith("-s3"):
        server: backends.S3Server = request.getfixturevalue("s3_server")
        overrides.update(server.area())
    return overrides


@pytest.fixture
def make_settings(tmp_path: Path, backend: dict[str, Any]) -> MakeSettings:
    def make(**overrides: Any) -> Settings:
        base = Settings(
            data_dir=tmp_path / "data",
            admin_password=ADMIN_PASSWORD,
            access_log=False,
            **CHEAP_ARGON2,
            **backend,
        )
        return base.replace(**overrides)

    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings()


class StoreView:
    """The blob store as seen from outside filecask, whatever the backend: the data
    directory's store/ and tmp/, or the bucket through a plain boto3 client. Lets a test
    look at (and damage) what is stored with the same assertions under every backend.
    Keys are store-relative (`ab/<hash>`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.s3: Any = None
        if settings.storage is not None:
            self.s3 = backends.s3_client(
                str(settings.s3_endpoint_url),
                str(settings.s3_region),
                str(settings.s3_access_key_id),
                str(settings.s3_secret_access_key),
            )
            self.bucket = settings.s3_bucket
            self.prefix = settings.s3_prefix

    def _objects(self, prefix: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        ):
            for item in page.get("Contents", []):
                found[item["Key"].removeprefix(self.prefix + prefix)] = item
        return found

    def listing(self) -> list[str]:
        """Every entry of the store."""
        if self.s3 is not None:
            return sorted(self._objects("store/"))
        store = self.settings.store_dir
        if not store.is_dir():
            return []
        return sorted(str(p.relative_to(store)) for p in store.rglob("*") if not p.is_dir())

    def top(self) -> list[str]:
        """The store's top level: its fan-out directories on disk, every key in S3."""
        if self.s3 is not None:
            return self.listing()
        store = self.settings.store_dir
        return sorted(os.listdir(store)) if store.is_dir() else []

    def hashes(self) -> list[str]:
        return [key.rpartition("/")[2] for key in self.listing()]

    def exists(self, hex_hash: str) -> bool:
        return fanout(hex_hash) in self.listing()

    def read(self, key_or_hash: str) -> bytes:
        """FileNotFoundError if it is not there."""
        key = _store_key(key_or_hash)
        if self.s3 is None:
            return (self.settings.store_dir / key).read_bytes()
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}store/{key}")
        except self.s3.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        data: bytes = response["Body"].read()
        return data

    def write(self, key_or_hash: str, data: bytes) -> None:
        """Put (or overwrite) an entry behind filecask's back."""
        key = _store_key(key_or_hash)
        if self.s3 is None:
            path = self.settings.store_dir / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}store/{key}", Body=data)

    def remove(self, key_or_hash: str) -> None:
        key = _store_key(key_or_hash)
        if self.s3 is None:
            (self.settings.store_dir / key).unlink()
            return
        self.s3.delete_object(Bucket=self.bucket, Key=f"{self.prefix}store/{key}")

    def scratch(self) -> list[str]:
        """Everything uploads leave in scratch space: the local tmp/ (resumable uploads
        live there whatever the store), plus, with S3, objects under tmp/ and multipart
        uploads not completed or aborted anywhere under the prefix."""
        tmp = self.settings.tmp_dir
        found = sorted(os.listdir(tmp)) if tmp.is_dir() else []
        if self.s3 is not None:
            found += [f"s3:tmp/{key}" for key in sorted(self._objects("tmp/"))]
            uploads = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
            found += [f"s3-multipart:{u['Key']}" for u in uploads.get("Uploads", [])]
        return found

    def read_quarantined(self, name: str) -> bytes:
        """An entry fsck moved to quarantine under `name` (FileNotFoundError if none)."""
        if self.s3 is None:
            return (self.settings.data_dir / "quarantine" / name).read_bytes()
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}quarantine/{name}")
        except self.s3.exceptions.NoSuchKey:
            raise FileNotFoundError(name) from None
        data: bytes = response["Body"].read()
        return data

    def quarantined(self) -> list[bytes]:
        """The contents moved to quarantine, sorted."""
        if self.s3 is None:
            where = self.settings.data_dir / "quarantine"
            return sorted(p.read_bytes() for p in where.iterdir()) if where.is_dir() else []
        return sorted(
            self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
            for item in self._objects("quarantine/").values()
        )


def _store_key(key_or_hash: str) -> str:
    """A bare hash means its fan-out key; anything else is a store-relative key already."""
    if len(key_or_hash) == 64 and "/" not in key_or_hash:
        return fanout(key_or_hash)
    return key_or_hash


@pytest.fixture
def store_view(settings: Settings) -> StoreView:
    return StoreView(settings)


class ServeTestServer(TestServer):
    """aiohttp's test server on the protocol `filecask serve` runs (filecask.http.protocol:
    its timeouts, problem+json protocol errors and the small-download fast path), so the
    in-process tests go through what clients really meet."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app)
        self.settings = settings

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        # Access logging as `filecask serve` sets it up (`start_server` may override it).
        kwargs.setdefault("access_log_class", AccessLogger)
        enabled = self.settings.access_log
        kwargs.setdefault("access_log", logging.getLogger("filecask.access") if enabled else None)
        return make_runner(self.app, self.settings, **kwargs)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite metadata store with every migration run, and nothing else in it."""
    from filecask.storage.changes import ChangeStamps
    from filecask.storage.meta.sql import SqlMetaStore

    path = tmp_path_factory.mktemp("sqlite-template") / "filecask.db"

    async def migrate() -> None:
        meta = SqlMetaStore(f"sqlite+aiosqlite:///{path}", ChangeStamps(None))
        await meta.open(create=True)
        await meta.close()

    asyncio.run(migrate())
    return path


@pytest.fixture
async def client(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]],
    settings: Settings,
    sqlite_template: Path,
) -> AppClient:
    """The app on a new data directory. Its SQLite file starts as a copy of the migrated
    template: the app opens it as it opens any store at the current schema (running every
    migration for each of a thousand tests took a tenth of their set-up time)."""
    if settings.database_url is None:
        database = settings.data_dir / "filecask.db"
        if not database.exists():
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sqlite_template, database)
    return await aiohttp_client(ServeTestServer(create_app(settings), settings))


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
