"""The file store's rules under concurrency and failure: disk and database always agree."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

import pytest

from filecask.errors import Forbidden, NotFound, PayloadTooLarge
from filecask.services import Services
from filecask.settings import Settings
from filecask.storage.meta import User
from tests.conftest import ADMIN, AppClient, MakeUser, StoreView

CONTENTS = [f"shared content {i}".encode() * (i + 1) * 300 for i in range(4)]
HASHES = [hashlib.sha256(c).hexdigest() for c in CONTENTS]


async def stream(data: bytes, piece: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        await asyncio.sleep(0)
        yield data[start : start + piece]


def blobs_on_disk(settings: Settings) -> set[str]:
    """The stored blobs, in the data directory or the bucket."""
    return set(StoreView(settings).hashes())


async def assert_consistent(services: Services) -> None:
    """Every blob row has its bytes, every stored blob has a row, nothing is left in tmp."""
    settings = services.settings
    view = StoreView(settings)
    assert blobs_on_disk(settings) == await services.meta.all_blob_hashes()
    assert view.scratch() == []
    for hex_hash in blobs_on_disk(settings):
        assert hashlib.sha256(view.read(hex_hash)).hexdigest() == hex_hash


async def test_concurrent_uploads_and_deletes_of_shared_content_keep_disk_and_db_in_step(
    client: AppClient, services: Services, make_user: MakeUser
) -> None:
    """Many users upload and delete the same few contents at once, through HTTP; afterwards
    each user's files are exactly what their last successful operation says, and the disk
    holds exactly the referenced blobs."""
    users = {"admin": ADMIN}
    for name in ("ann", "ben", "cat", "dan"):
        users[name] = await make_user(name)
    rng = random.Random(20261124)
    expected: dict[tuple[str, str], bool] = {}

    async def worker(name: str, ops: list[tuple[str, int]]) -> None:
        for op, index in ops:
            hex_hash = HASHES[index]
            if op == "up":
                response = await client.post("/files", data=CONTENTS[index], headers=users[name])
                assert response.status in (200, 201), await response.text()
                expected[(name, hex_hash)] = True
            else:
                response = await client.delete(f"/files/{hex_hash}", headers=users[name])
                assert response.status in (204, 403, 404), await response.text()
                expected[(name, hex_hash)] = False

    plans = {
        name: [(rng.choice(["up", "up", "del"]), rng.randrange(len(CONTENTS))) for _ in range(40)]
        for name in users
    }
    await asyncio.gather(*(worker(name, ops) for name, ops in plans.items()))

    await assert_consistent(services)
    for name, headers in users.items():
        listing = await (await client.get("/files?limit=1000", headers=headers)).json()
        held = {f["hash"] for f in listing["files"]}
        assert held == {h for (n, h), present in expected.items() if n == name and present}
    referenced = {h for (_, h), present in expected.items() if present}
    assert blobs_on_disk(services.settings) == referenced


async def test_racing_last_delete_and_new_upload_never_lose_the_upload(
    services: Services,
) -> None:
    """The classic race: one user drops the last reference while another uploads the same
    content. Whatever the interleaving, the uploader's file must stay downloadable."""
    meta = services.meta
    for round_ in range(30):
        ann = await _user(services, f"ann{round_}")
        ben = await _user(services, f"ben{round_}")
        content = f"race {round_}".encode() * 1000
        hex_hash = hashlib.sha256(content).hexdigest()
        await services.files.upload(ann, stream(content), name="a", max_size=1 << 20)
        await asyncio.gather(
            services.files.delete(ann, hex_hash),
            services.files.upload(ben, stream(content), name="b", max_size=1 << 20),
        )
        assert await meta.get_blob(hex_hash) is not None
        assert StoreView(services.settings).exists(hex_hash)
        await services.files.delete(ben, hex_hash)
    await assert_consistent(services)


async def test_failed_stream_leaves_nothing_behind(services: Services) -> None:
    admin = await services.meta.get_user("admin")
    assert admin is not None

    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * 100_000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await services.files.upload(admin, broken(), name="x", max_size=1 << 20)
    await assert_consistent(services)
    assert await services.meta.all_blob_hashes() == set()


async def test_oversized_stream_leaves_nothing_behind(services: Services) -> None:
    admin = await services.meta.get_user("admin")
    assert admin is not None
    with pytest.raises(PayloadTooLarge):
        await services.files.upload(admin, stream(b"x" * 10_000), name="x", max_size=9_999)
    await assert_consistent(services)


async def test_cancelled_upload_leaves_nothing_behind(services: Services) -> None:
    admin = await services.meta.get_user("admin")
    assert admin is not None
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            started.set()
            await asyncio.sleep(0.001)
            yield b"z" * 65536

    task = asyncio.create_task(services.files.upload(admin, endless(), name="x", max_size=1 << 40))
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_consistent(services)


async def test_delete_errors_distinguish_missing_from_not_owned(services: Services) -> None:
    ann = await _user(services, "ann")
    ben = await _user(services, "ben")
    await services.files.upload(ann, stream(b"mine"), name="m", max_size=100)
    hex_hash = hashlib.sha256(b"mine").hexdigest()
    with pytest.raises(Forbidden):
        await services.files.delete(ben, hex_hash)
    with pytest.raises(NotFound):
        await services.files.delete(ben, "f" * 64)


async def test_remove_user_drops_only_what_nobody_else_holds(services: Services) -> None:
    ann = await _user(services, "ann")
    ben = await _user(services, "ben")
    await services.files.upload(ann, stream(b"only ann"), name="a", max_size=100)
    await services.files.upload(ann, stream(b"both"), name="b", max_size=100)
    await services.files.upload(ben, stream(b"both"), name="b", max_size=100)
    assert await services.files.remove_user("ann") == 2
    assert blobs_on_disk(services.settings) == {hashlib.sha256(b"both").hexdigest()}
    assert await services.meta.get_user("ann") is None
    await assert_consistent(services)


async def _user(services: Services, name: str) -> User:
    return await services.meta.create_user(name, "not-a-real-hash", is_admin=False)


async def test_a_step_outlives_its_cancelled_caller_and_drain_waits_for_it(
    services: Services,
) -> None:
    """A client hanging up mid-commit cancels its handler, not the commit; at shutdown the
    stores are only closed once such steps are over (they hold locks and connections)."""
    finished: list[str] = []

    async def step() -> str:
        await asyncio.sleep(0.2)
        finished.append("step")
        return "done"

    caller = asyncio.create_task(services.files.finish(step()))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == []
    await services.files.drain(limit=5)
    assert finished == ["step"]
