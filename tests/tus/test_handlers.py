"""/uploads/: tus 1.0 resumable uploads through the in-process app (core, creation,
termination, checksum, expiration), and what a finished upload becomes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from filecask.errors import Locked
from filecask.services import Services
from filecask.settings import Settings
from filecask.tus.parts import TusFiles, sweep
from tests.conftest import ADMIN, AppClient, MakeSettings, MakeUser, StoreView, assert_problem

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}
BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(max_upload_size=1 << 20)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def create(
    client: AppClient,
    length: int = len(BODY),
    *,
    name: str | None = "big.bin",
    auth: dict[str, str] = ADMIN,
    extra: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    headers = {**auth, **TUS, "Upload-Length": str(length)}
    if name is not None:
        headers["Upload-Metadata"] = f"filename {b64(name.encode())},kind {b64(b'x')}"
    headers.update(extra or {})
    return await client.post("/uploads/", headers=headers)


async def new_upload(client: AppClient, **kwargs: Any) -> str:
    response = await create(client, **kwargs)
    assert response.status == 201, await response.text()
    location = response.headers["Location"]
    return location[location.index("/uploads/") :]


async def patch(
    client: AppClient,
    path: str,
    offset: int,
    data: bytes,
    *,
    auth: dict[str, str] = ADMIN,
    extra: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    headers = {**auth, **TUS, **OCTETS, "Upload-Offset": str(offset), **(extra or {})}
    return await client.patch(path, data=data, headers=headers)


async def head(
    client: AppClient, path: str, auth: dict[str, str] = ADMIN
) -> aiohttp.ClientResponse:
    return await client.head(path, headers={**auth, **TUS})


def tus_files(settings: Settings) -> list[str]:
    return sorted(n for n in os.listdir(settings.tmp_dir) if n.startswith("tus-"))


async def test_options_advertises_the_protocol(client: AppClient, settings: Settings) -> None:
    response = await client.options("/uploads/")
    assert response.status == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation",
        "termination",
        "checksum",
        "expiration",
    }
    assert response.headers["Tus-Max-Size"] == str(settings.max_upload_size)
    assert "sha1" in response.headers["Tus-Checksum-Algorithm"].split(",")


async def test_creation_answers_201_with_location_and_expiry(client: AppClient) -> None:
    response = await create(client)
    assert response.status == 201
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "/uploads/" in response.headers["Location"]
    assert response.headers["Upload-Expires"].endswith("GMT")
    path = response.headers["Location"][response.headers["Location"].index("/uploads/") :]
    status = await head(client, path)
    assert status.status == 200
    assert status.headers["Upload-Offset"] == "0"
    assert status.headers["Upload-Length"] == str(len(BODY))
    assert status.headers["Cache-Control"] == "no-store"
    assert status.headers["Upload-Metadata"].startswith("filename ")


async def test_pieces_resume_from_the_offset_and_become_a_stored_file(
    client: AppClient, settings: Settings
) -> None:
    path = await new_upload(client)
    first = await patch(client, path, 0, BODY[:100_000])
    assert first.status == 204
    assert first.headers["Upload-Offset"] == "100000"
    assert "Filecask-Hash" not in first.headers
    assert (await head(client, path)).headers["Upload-Offset"] == "100000"
    assert tus_files(settings)  # the partial bytes live in tmp/
    last = await patch(client, path, 100_000, BODY[100_000:])
    assert last.status == 204
    assert last.headers["Upload-Offset"] == str(len(BODY))
    assert last.headers["Filecask-Hash"] == SHA
    assert last.headers["Filecask-File"].endswith(f"/files/{SHA}")
    download = await client.get(f"/files/{SHA}")
    assert await download.read() == BODY
    listed = await (await client.get("/files", headers=ADMIN)).json()
    assert [(f["hash"], f["name"], f["size"]) for f in listed["files"]] == [
        (SHA, "big.bin", len(BODY))
    ]
    assert StoreView(settings).scratch() == []  # nothing left behind
    # A client that lost the last answer learns the outcome from HEAD.
    again = await head(client, path)
    assert again.headers["Upload-Offset"] == str(len(BODY))
    assert again.headers["Filecask-Hash"] == SHA


async def test_finished_upload_dedups_like_post_files(
    client: AppClient, make_user: MakeUser, services: Services
) -> None:
    await client.post("/files?name=first.bin", data=BODY, headers=ADMIN)
    bob = await make_user("bob")
    path = await new_upload(client, auth=bob, name="bobs.bin")
    response = await patch(client, path, 0, BODY, auth=bob)
    assert response.headers["Filecask-Hash"] == SHA
    me = await (await client.get("/me", headers=bob)).json()
    assert (me["files"], me["bytes"]) == (1, len(BODY))
    assert await services.meta.references_to(SHA) == 2  # one blob, two owners
    # Bob's reference is his own: deleting it keeps admin's file.
    assert (await client.delete(f"/files/{SHA}", headers=bob)).status == 204
    assert (await client.get(f"/files/{SHA}")).status == 200


async def test_wrong_offset_is_409_and_changes_nothing(client: AppClient) -> None:
    path = await new_upload(client)
    await patch(client, path, 0, BODY[:10])
    response = await patch(client, path, 5, BODY[5:20])
    assert response.status == 409
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.content_type == "application/problem+json"
    assert_problem(await response.json(), 409)
    assert (await head(client, path)).headers["Upload-Offset"] == "10"


async def test_checksum_mismatch_is_460_and_discards_the_bytes(client: AppClient) -> None:
    path = await new_upload(client)
    bad = {"Upload-Checksum": f"sha1 {b64(hashlib.sha1(b'other').digest())}"}
    response = await patch(client, path, 0, BODY[:1000], extra=bad)
    assert response.status == 460
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert_problem(await response.json(), 460, "checksum-mismatch")
    assert (await head(client, path)).headers["Upload-Offset"] == "0"
    good = {"Upload-Checksum": f"sha256 {b64(hashlib.sha256(BODY[:1000]).digest())}"}
    assert (await patch(client, path, 0, BODY[:1000], extra=good)).status == 204
    assert (await head(client, path)).headers["Upload-Offset"] == "1000"


async def test_unknown_checksum_algorithm_is_400(client: AppClient) -> None:
    path = await new_upload(client)
    response = await patch(client, path, 0, b"x", extra={"Upload-Checksum": "md5 eA=="})
    assert response.status == 400


async def test_too_large_is_413_at_creation(client: AppClient, settings: Settings) -> None:
    response = await create(client, settings.max_upload_size + 1)
    assert response.status == 413
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert_problem(await response.json(), 413, "payload-too-large")


async def test_body_past_upload_length_is_413(client: AppClient) -> None:
    path = await new_upload(client, length=10)
    response = await patch(client, path, 0, b"x" * 11)
    assert response.status == 413
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


async def test_quota_refuses_at_creation_and_at_completion(
    client: AppClient, make_user: MakeUser
) -> None:
    bob = await make_user("bob")
    assert (await client.patch("/users/bob", json={"quota": 200_000}, headers=ADMIN)).status == 200
    response = await create(client, auth=bob)
    assert response.status == 413
    assert_problem(await response.json(), 413, "quota-exceeded")
    # Two uploads that each fit but not together: the second is refused at creation, since
    # the first reserves its length (issue 14: they were checked one by one, and 30 such
    # uploads held 30 times the quota in tmp/).
    small = os.urandom(150_000)
    first = await new_upload(client, length=len(small), auth=bob)
    refused = await create(client, len(small), auth=bob)
    assert refused.status == 413
    problem = await refused.json()
    assert_problem(problem, 413, "quota-exceeded")
    assert (problem["used"], problem["reserved"], problem["size"]) == (0, 150_000, 150_000)
    # A quota lowered meanwhile still refuses on completion, and the upload goes.
    assert (await client.patch("/users/bob", json={"quota": 100_000}, headers=ADMIN)).status == 200
    refused = await patch(client, first, 0, small, auth=bob)
    assert refused.status == 413
    assert_problem(await refused.json(), 413, "quota-exceeded")
    assert (await head(client, first, auth=bob)).status == 404  # gone with its bytes


async def test_only_the_creator_may_use_an_upload(client: AppClient, make_user: MakeUser) -> None:
    path = await new_upload(client)
    bob = await make_user("bob")
    assert (await head(client, path, auth=bob)).status == 403
    assert (await patch(client, path, 0, b"x", auth=bob)).status == 403
    assert (await client.delete(path, headers={**bob, **TUS})).status == 403
    assert (await client.head(path, headers=TUS)).status == 401
    assert (await head(client, "/uploads/" + "0" * 32)).status == 404
    assert (await head(client, "/uploads/nope")).status == 404


async def test_wrong_version_is_412_and_wrong_type_415(client: AppClient) -> None:
    path = await new_upload(client)
    response = await client.head(path, headers={**ADMIN, "Tus-Resumable": "0.2.2"})
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    response = await client.patch(path, data=b"x", headers={**ADMIN, **TUS, "Upload-Offset": "0"})
    assert response.status == 415


async def test_delete_removes_the_upload_and_its_bytes(
    client: AppClient, settings: Settings
) -> None:
    path = await new_upload(client)
    await patch(client, path, 0, BODY[:5000])
    assert tus_files(settings)
    response = await client.delete(path, headers={**ADMIN, **TUS})
    assert response.status == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert tus_files(settings) == []
    assert (await head(client, path)).status == 404


async def test_concurrent_patch_of_one_upload_is_refused(
    client: AppClient, settings: Settings
) -> None:
    path = await new_upload(client)
    release = asyncio.Event()

    async def slow_body() -> Any:
        yield BODY[:1000]
        await release.wait()
        yield BODY[1000:2000]

    first = asyncio.ensure_future(
        client.patch(
            path,
            data=slow_body(),
            headers={**ADMIN, **TUS, **OCTETS, "Upload-Offset": "0"},
        )
    )
    for _ in range(200):
        if tus_files(settings):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    second = await patch(client, path, 0, b"y" * 10)
    assert second.status in (409, 423)
    assert second.headers["Tus-Resumable"] == "1.0.0"
    release.set()
    done = await first
    assert done.status == 204
    assert done.headers["Upload-Offset"] == "2000"


async def test_expired_upload_is_410_and_swept(
    client: AppClient, settings: Settings, services: Services
) -> None:
    path = await new_upload(client)
    await patch(client, path, 0, BODY[:5000])
    later = datetime.now(UTC) + timedelta(seconds=settings.upload_expiry + 1)
    files = TusFiles(settings.tmp_dir)
    removed = await sweep(services.meta, files, stray_grace=3600, dry_run=True, now=later)
    assert [r.expired for r in removed] == [True]
    assert tus_files(settings)  # a dry run removes nothing
    removed = await sweep(services.meta, files, stray_grace=3600, now=later)
    assert [(r.expired, r.size) for r in removed] == [(True, 5000)]
    assert tus_files(settings) == []
    assert (await head(client, path)).status == 404


async def test_expired_upload_answers_410(aiohttp_client: Any, make_settings: MakeSettings) -> None:
    from filecask.app import create_app

    client = await aiohttp_client(create_app(make_settings(upload_expiry=0.2)))
    path = await new_upload(client)
    await asyncio.sleep(0.3)
    response = await head(client, path)
    assert response.status == 410
    assert response.headers["Tus-Resumable"] == "1.0.0"


async def test_stray_tus_file_without_row_is_swept(
    client: AppClient, settings: Settings, services: Services
) -> None:
    stray = settings.tmp_dir / ("tus-" + "a" * 32)
    stray.write_bytes(b"left over")
    files = TusFiles(settings.tmp_dir)
    assert await sweep(services.meta, files, stray_grace=3600) == []  # too young
    old = datetime.now(UTC).timestamp() - 7200
    os.utime(stray, (old, old))
    (removed,) = await sweep(services.meta, files, stray_grace=3600)
    assert (removed.name, removed.expired) == (stray.name, False)
    assert not stray.exists()


async def test_zero_length_upload_is_complete_on_creation(client: AppClient) -> None:
    response = await create(client, 0, name="empty.txt")
    assert response.status == 201
    assert response.headers["Filecask-Hash"] == hashlib.sha256(b"").hexdigest()


# issue 14: unfinished uploads are not free disk


def upload_id(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def test_only_a_patch_that_adds_bytes_moves_the_expiry(
    client: AppClient, services: Services
) -> None:
    path = await new_upload(client)
    await patch(client, path, 0, BODY[:100])
    before = await services.meta.get_upload(upload_id(path))
    assert before is not None
    empty = await patch(client, path, 100, b"")
    assert empty.status == 204
    assert empty.headers["Upload-Offset"] == "100"
    after = await services.meta.get_upload(upload_id(path))
    assert after is not None
    assert after.expires_at == before.expires_at  # an empty PATCH used to push it forward
    more = await patch(client, path, 100, BODY[100:200])
    moved = await services.meta.get_upload(upload_id(path))
    assert moved is not None
    assert moved.expires_at > before.expires_at
    assert more.headers["Upload-Expires"] != ""


async def test_open_uploads_are_capped_and_reserve_their_length(
    aiohttp_client: Any, make_settings: MakeSettings
) -> None:
    from filecask.app import create_app

    client = await aiohttp_client(create_app(make_settings(max_open_uploads=2)))
    for _ in range(2):
        await new_upload(client, length=10)
    refused = await create(client, 10)
    assert refused.status == 429
    assert_problem(await refused.json(), 429, "too-many-uploads")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["Tus-Resumable"] == "1.0.0"
    me = await (await client.get("/me", headers=ADMIN)).json()
    assert me["reserved"] == 20


async def test_removing_a_user_removes_their_partial_files(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    bob = await make_user("bob")
    paths = [await new_upload(client, auth=bob) for _ in range(2)]
    for path in paths:
        assert (await patch(client, path, 0, BODY[:1000], auth=bob)).status == 204
    assert len(tus_files(settings)) == 2
    assert (await client.delete("/users/bob", headers=ADMIN)).status == 204
    assert tus_files(settings) == []


async def test_a_stray_tus_file_goes_whatever_its_age_by_default(
    client: AppClient, settings: Settings, services: Services
) -> None:
    """The row is made before the file, so a file without one can never be owned again."""
    stray = settings.tmp_dir / ("tus-" + "b" * 32)
    stray.write_bytes(b"left by a removed user")
    files = TusFiles(settings.tmp_dir)
    (listed,) = await sweep(services.meta, files, dry_run=True)
    assert (listed.name, listed.size, listed.expired) == (stray.name, 22, False)
    assert stray.exists()
    (removed,) = await sweep(services.meta, files)
    assert removed.name == stray.name
    assert not stray.exists()


async def test_a_lock_whose_caller_was_cancelled_is_released(
    client: AppClient, settings: Settings
) -> None:
    """A request cut while its upload's lock is being taken (in a thread) must not leave the
    fd, and its lock, open: the next request would get 423 for ever."""
    files = TusFiles(settings.tmp_dir)
    upload_id = "c" * 32
    taking = asyncio.create_task(files.lock(upload_id, create=True))
    await asyncio.sleep(0)  # the thread has the call; cancel before its result is taken
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    deadline = time.monotonic() + 10
    while True:  # None: the cancelled call's thread has not created the file yet
        with contextlib.suppress(Locked):
            fd = await files.lock(upload_id, create=False)
            if fd is not None:
                await files.remove(upload_id, fd)
                return
        assert time.monotonic() < deadline, "the cancelled caller's lock was kept"
        await asyncio.sleep(0.01)
