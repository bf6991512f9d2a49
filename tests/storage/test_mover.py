"""`filecask migrate` in-process: an old data directory filled through the real app is moved
into PostgreSQL (or SQLite) and the data directory or S3, and the new app must serve every
user, file and bundle exactly as the old one did."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from filecask.app import close_services, create_app, open_services
from filecask.cli import main
from filecask.hashes import fanout
from filecask.services import SERVICES
from filecask.settings import Settings
from filecask.storage.fsck import fsck
from filecask.storage.mover import Advance, MigrationError, migrate, source_settings
from tests import backends
from tests.conftest import ADMIN, ADMIN_PASSWORD, CHEAP_ARGON2, AppClient, basic

MakeClient = Callable[[web.Application], Awaitable[AppClient]]
TARGETS = ("sqlite-disk", "pg-disk", "pg-s3")
BIG = os.urandom(3 << 20)
"""Larger than the stores' 1 MiB chunks: streamed in several pieces."""
SHARED = b"the same report, uploaded by alice and by bob\n" * 100
PASSWORDS = {"admin": ADMIN_PASSWORD, "alice": "alice-password", "bob": "bob-password"}
PASSWORDS["carol"] = "carol-password"


@dataclass
class Old:
    """The old installation and what it served, to compare the new one with."""

    settings: Settings
    contents: dict[str, bytes] = field(default_factory=dict)
    deleted: str = ""
    me: dict[str, Any] = field(default_factory=dict)
    listings: dict[str, Any] = field(default_factory=dict)
    bundle_id: str = ""
    bundle: dict[str, bytes] = field(default_factory=dict)


def old_settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir, admin_password=ADMIN_PASSWORD, access_log=False, **CHEAP_ARGON2
    )


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The new configuration; `pg-disk` unless a test is parametrized with `indirect`."""
    kind = getattr(request, "param", "pg-disk")
    overrides: dict[str, Any] = {}
    if kind.startswith("pg-"):
        overrides["database_url"] = request.getfixturevalue("postgres_database")
    if kind.endswith("-s3"):
        server: backends.S3Server = request.getfixturevalue("s3_server")
        overrides.update(backends.s3_settings(server, server.create_bucket()))
    return Settings(data_dir=tmp_path / "new", access_log=False, **CHEAP_ARGON2, **overrides)


@pytest.fixture
async def old(aiohttp_client: MakeClient, tmp_path: Path) -> Old:
    """An old data directory filled through the real app, which is then stopped."""
    filled = Old(old_settings(tmp_path / "old"))
    client = await aiohttp_client(create_app(filled.settings))
    await fill(client, filled)
    await client.close()
    return filled


async def fill(client: AppClient, old: Old) -> None:
    await add_user(client, "alice", quota="10M")
    await add_user(client, "bob")
    await add_user(client, "carol", admin=True)
    for name, data in [("alice", SHARED), ("bob", SHARED), ("alice", BIG), ("bob", b"bob\n")]:
        old.contents[await upload(client, name, data, f"{name}-{len(data)}.bin")] = data
    old.deleted = await upload(client, "carol", b"gone again\n", "gone.txt")
    response = await client.delete(f"/files/{old.deleted}", headers=auth("carol"))
    assert response.status == 204
    await make_bundle(client, old)
    tus = {"Tus-Resumable": "1.0.0", "Upload-Length": "100"}
    assert (await client.post("/uploads/", headers={**auth("bob"), **tus})).status == 201
    old.me = {name: await get_json(client, "/me", name) for name in PASSWORDS}
    old.listings = {name: await get_json(client, "/files", name) for name in PASSWORDS}


async def add_user(client: AppClient, name: str, *, admin: bool = False, quota: Any = None) -> None:
    body = {"name": name, "password": PASSWORDS[name], "is_admin": admin, "quota": quota}
    response = await client.post("/users", json=body, headers=ADMIN)
    assert response.status == 201, await response.text()


async def upload(client: AppClient, user: str, data: bytes, name: str) -> str:
    response = await client.post(f"/files?name={name}", data=io.BytesIO(data), headers=auth(user))
    assert response.status in (200, 201), await response.text()
    return str((await response.json())["hash"])


async def make_bundle(client: AppClient, old: Old) -> None:
    by_size = {len(data): h for h, data in old.contents.items()}
    files = [
        {"hash": by_size[len(BIG)], "path": "big/big.bin"},
        {"hash": by_size[len(SHARED)], "path": "shared.txt"},
    ]
    response = await client.post(
        "/archives", json={"name": "trip.zip", "files": files}, headers=auth("alice")
    )
    assert response.status == 201, await response.text()
    old.bundle_id = (await response.json())["id"]
    old.bundle = {"big/big.bin": BIG, "shared.txt": SHARED}


def auth(user: str) -> dict[str, str]:
    return basic(user, PASSWORDS[user])


async def get_json(client: AppClient, path: str, user: str) -> Any:
    response = await client.get(path, headers=auth(user))
    assert response.status == 200, await response.text()
    return await response.json()


def without_urls(listing: Any) -> Any:
    """A file listing with the host-dependent `url`s left out (ids, cursors stay)."""
    files = [{k: v for k, v in f.items() if k != "url"} for f in listing["files"]]
    return {**listing, "files": files}


async def check_served(client: AppClient, old: Old) -> None:
    """The new app serves what the old one did: same bytes, users, usage and bundle."""
    for hex_hash, data in old.contents.items():
        response = await client.get(f"/files/{hex_hash}")
        assert response.status == 200
        assert await response.read() == data
    assert (await client.get(f"/files/{old.deleted}")).status == 404
    for name in PASSWORDS:
        # Unfinished resumable uploads are not migrated: what they reserved is free again.
        me = await get_json(client, "/me", name)
        assert me["reserved"] == 0
        assert me == {**old.me[name], "reserved": 0}
        new_listing = await get_json(client, "/files", name)
        assert without_urls(new_listing) == without_urls(old.listings[name])
    response = await client.get(f"/archive/{old.bundle_id}/")
    assert response.status == 200
    with zipfile.ZipFile(io.BytesIO(await response.read())) as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == old.bundle


async def check_new_rows_get_new_ids(client: AppClient) -> None:
    """PostgreSQL's sequences were moved past the copied ids: new rows insert."""
    response = await client.post(
        "/users", json={"name": "dave", "password": "dave-password"}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    fresh = await upload(client, "alice", b"after the move\n", "new.txt")
    listing = await get_json(client, "/files", "alice")
    assert listing["files"][0]["hash"] == fresh


@pytest.mark.parametrize("target", TARGETS, indirect=True)
async def test_migrated_store_serves_everything_the_old_one_did(
    old: Old, target: Settings, aiohttp_client: MakeClient
) -> None:
    summary = await migrate(old.settings, target)
    assert summary.problems == []
    assert (summary.users, summary.files, summary.references, summary.bundles) == (4, 3, 4, 1)
    assert (summary.blobs_copied, summary.blobs_skipped, summary.uploads_left) == (3, 0, 1)
    assert summary.bytes_copied == sum(len(d) for d in old.contents.values())
    client = await aiohttp_client(create_app(target))
    await check_served(client, old)
    report = await fsck(client.app[SERVICES], repair=False)
    assert report.findings == []
    assert report.blobs == len(old.contents)
    await check_new_rows_get_new_ids(client)


async def test_quota_is_still_enforced_after_the_move(
    old: Old, target: Settings, aiohttp_client: MakeClient
) -> None:
    await migrate(old.settings, target)
    client = await aiohttp_client(create_app(target))
    response = await client.post(
        "/files", data=io.BytesIO(os.urandom(8 << 20)), headers=auth("alice")
    )
    assert response.status == 413


async def test_second_run_into_the_migrated_target_is_refused(old: Old, target: Settings) -> None:
    await migrate(old.settings, target)
    with pytest.raises(MigrationError, match=r"^the target is not empty \("):
        await migrate(old.settings, target)


@pytest.mark.parametrize("target", ["pg-disk", "pg-s3"], indirect=True)
async def test_interrupted_run_resumes_with_the_blobs_already_copied(
    old: Old, target: Settings, aiohttp_client: MakeClient
) -> None:
    class Interrupted(Exception):
        pass

    @contextmanager
    def stop_after_two(total: int) -> Iterator[Advance]:
        done = []

        def advance(size: int) -> None:
            done.append(size)
            if len(done) == 2:
                raise Interrupted

        yield advance

    with pytest.raises(Interrupted):
        await migrate(old.settings, target, progress=stop_after_two)
    summary = await migrate(old.settings, target)
    assert (summary.blobs_skipped, summary.blobs_copied, summary.problems) == (2, 1, [])
    assert summary.bytes_skipped + summary.bytes_copied == sum(map(len, old.contents.values()))
    client = await aiohttp_client(create_app(target))
    await check_served(client, old)


@pytest.mark.parametrize("damage", ["changed", "appended", "truncated", "removed"])
async def test_damaged_source_blob_stops_the_run_naming_it(
    old: Old, target: Settings, damage: str
) -> None:
    victim = next(h for h, data in old.contents.items() if data == BIG)
    path = old.settings.store_dir / fanout(victim)
    if damage == "removed":
        path.unlink()
    else:
        data = {"changed": b"X" + BIG[1:], "appended": BIG + b"!", "truncated": BIG[:-1]}[damage]
        path.write_bytes(data)
    with pytest.raises(MigrationError, match=f"source blob {victim} is damaged") as caught:
        await migrate(old.settings, target)
    assert "filecask fsck" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not await target_has_blob(target, victim)
    assert await target_users(target) == []


async def target_has_blob(target: Settings, hex_hash: str) -> bool:
    services = await open_services(target, reap=False)
    try:
        return await services.blobs.exists(hex_hash)
    finally:
        await close_services(services)


async def target_users(target: Settings) -> list[str]:
    services = await open_services(target, reap=False)
    try:
        return [user.name for user in await services.meta.list_users()]
    finally:
        await close_services(services)


async def test_target_started_once_loses_only_its_bootstrap_admin(
    old: Old, target: Settings, aiohttp_client: MakeClient
) -> None:
    first = await aiohttp_client(create_app(target.replace(admin_password="first-start")))
    assert (await first.get("/me", headers=basic("admin", "first-start"))).status == 200
    await first.close()
    summary = await migrate(old.settings, target)
    assert summary.bootstrap_admin_dropped
    client = await aiohttp_client(create_app(target))
    assert (await client.get("/me", headers=basic("admin", "first-start"))).status == 401
    await check_served(client, old)


async def test_target_with_another_user_is_refused(
    old: Old, target: Settings, aiohttp_client: MakeClient
) -> None:
    first = await aiohttp_client(create_app(target.replace(admin_password="first-start")))
    body = {"name": "erin", "password": "erin-password"}
    assert (await first.post("/users", json=body, headers=basic("admin", "first-start"))).ok
    await first.close()
    with pytest.raises(MigrationError, match=r"not empty \(2 users rows\)"):
        await migrate(old.settings, target)


@pytest.fixture
def empty_database(postgres: backends.Postgres | None) -> Iterator[str]:
    """The URL of a PostgreSQL database with no tables at all (`createdb`)."""
    server = backends.require(postgres)
    name = server.create_empty()
    try:
        yield backends.database_url(name)
    finally:
        server.drop(name)


async def test_database_with_no_tables_yet_is_set_up(
    old: Old, empty_database: str, tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    target = Settings(data_dir=tmp_path / "new", database_url=empty_database, **CHEAP_ARGON2)
    assert (await migrate(old.settings, target)).problems == []
    client = await aiohttp_client(create_app(target))
    await check_served(client, old)


async def test_missing_source_is_refused(tmp_path: Path, target: Settings) -> None:
    with pytest.raises(MigrationError, match="is not a directory"):
        await migrate(source_settings(tmp_path / "nowhere"), target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MigrationError, match=r"holds no filecask\.db"):
        await migrate(source_settings(tmp_path / "empty"), target)
    assert not (tmp_path / "empty" / "filecask.db").exists()


async def test_target_that_is_the_source_is_refused(old: Old, tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="target database is the source's"):
        await migrate(old.settings, old.settings)
    same_db = Settings(
        data_dir=tmp_path / "new", database_url=f"sqlite:///{old.settings.data_dir}/filecask.db"
    )
    with pytest.raises(MigrationError, match="target database is the source's"):
        await migrate(old.settings, same_db)


async def test_target_store_that_is_the_source_store_is_refused(
    old: Old, postgres_database: str
) -> None:
    same_store = old.settings.replace(database_url=postgres_database)
    with pytest.raises(MigrationError, match="target store is the source's"):
        await migrate(old.settings, same_store)


def test_cli_refusal_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["migrate", "--from", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "new")],
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [
        f"Error: the source {tmp_path / 'nowhere'} is not a directory"
    ]


def test_cli_reports_and_verifies(old: Old, tmp_path: Path) -> None:
    """SQLite to SQLite in another directory (moving a data directory) through the CLI."""
    new = tmp_path / "new"
    result = CliRunner().invoke(
        main, ["migrate", "--from", str(old.settings.data_dir), "--data-dir", str(new)]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "migrated 4 user(s), 3 file(s), 4 reference(s), 1 bundle(s)" in result.output
    assert "not migrated: 1 unfinished resumable upload(s)" in result.output
    assert "verified: every blob" in result.output
