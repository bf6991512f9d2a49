"""The S3 blob store against moto's server (real HTTP, the S3 wire protocol): staging in
parts, commits, nothing left behind on failure, ranged reads, fsck's operations, leftovers
judged by age, presigned downloads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from filecask.app import create_app
from filecask.errors import NotFound, PayloadTooLarge, ServiceUnavailable
from filecask.settings import Settings
from filecask.storage.blobs import make_blob_store
from filecask.storage.blobs.s3 import S3BlobStore
from tests import backends
from tests.conftest import ADMIN, AppClient, MakeSettings

MIB = 1 << 20
PART = 5 * MIB
DATA = os.urandom(11 * MIB + 12_345)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def s3_overrides(s3_server: backends.S3Server) -> dict[str, Any]:
    return backends.s3_settings(s3_server, s3_server.create_bucket())


@pytest.fixture
async def store(tmp_path: Path, s3_overrides: dict[str, Any]) -> AsyncIterator[S3BlobStore]:
    settings = Settings(data_dir=tmp_path / "data", s3_part_size=PART, **s3_overrides)
    blobs = make_blob_store(settings, reap_on_open=True)
    assert isinstance(blobs, S3BlobStore)
    await blobs.open()
    try:
        yield blobs
    finally:
        await blobs.close()


@pytest.fixture
def s3(s3_server: backends.S3Server) -> Any:
    return s3_server.client()


def tmp_objects(s3: Any, store: S3BlobStore) -> list[str]:
    listed = s3.list_objects_v2(Bucket=store.bucket, Prefix=store.tmp_prefix)
    return [item["Key"].removeprefix(store.prefix) for item in listed.get("Contents", [])]


def multipart_uploads(s3: Any, store: S3BlobStore) -> list[str]:
    listed = s3.list_multipart_uploads(Bucket=store.bucket)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


async def test_stage_commit_dedup_discard_delete(store: S3BlobStore, s3: Any) -> None:
    data = b"hello s3" * 1000
    staged = await store.stage(chunked(data, 1000), max_size=len(data))
    assert staged.hash == hashlib.sha256(data).hexdigest()
    assert (staged.size, staged.crc32, staged.head) == (len(data), zlib.crc32(data), data[:8192])
    assert not await store.exists(staged.hash)  # staged is invisible
    assert await store.commit(staged) is True
    assert tmp_objects(s3, store) == [f"tmp/commit-{staged.hash}"]  # the intent, until settle
    await store.settle(staged)
    assert tmp_objects(s3, store) == []
    assert await store.exists(staged.hash)
    assert await store.read_blob(staged.hash) == data
    key = f"{store.prefix}store/{staged.hash[:2]}/{staged.hash}"
    assert s3.get_object(Bucket=store.bucket, Key=key)["Body"].read() == data

    again = await store.stage(chunked(data, 3000), max_size=len(data))
    assert await store.commit(again) is False  # same hash: the staged copy is dropped
    await store.settle(again)
    assert tmp_objects(s3, store) == []

    dropped = await store.stage(chunked(b"never mind", 4), max_size=100)
    await store.discard(dropped)
    assert tmp_objects(s3, store) == []

    opened = await store.open_blob(staged.hash)
    assert (opened.fd, opened.size) == (None, len(data))
    await store.delete(staged.hash)
    await store.delete(staged.hash)  # deleting a missing blob is not an error
    assert not await store.exists(staged.hash)
    with pytest.raises(NotFound):
        await store.open_blob(staged.hash)
    with pytest.raises(NotFound):
        await store.read_blob(staged.hash)
    assert multipart_uploads(s3, store) == []


@pytest.mark.slow
async def test_over_the_limit_aborts_and_leaves_nothing(store: S3BlobStore, s3: Any) -> None:
    with pytest.raises(PayloadTooLarge):
        await store.stage(chunked(DATA, MIB), max_size=11 * MIB)  # after two parts went
    assert tmp_objects(s3, store) == []
    assert multipart_uploads(s3, store) == []


@pytest.mark.slow
async def test_a_cancelled_upload_leaves_nothing(store: S3BlobStore, s3: Any) -> None:
    reached = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in chunked(DATA[: 6 * MIB], MIB):
            yield chunk
        reached.set()  # one part is uploaded by now
        await asyncio.Event().wait()
        yield b""

    task = asyncio.ensure_future(store.stage(stalls(), max_size=len(DATA)))
    await reached.wait()
    await asyncio.sleep(0.2)
    assert multipart_uploads(s3, store) != []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tmp_objects(s3, store) == []
    assert multipart_uploads(s3, store) == []


@pytest.mark.slow
@hsettings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.sampled_from([0, 1, PART - 1, PART, PART + 1, 2 * PART, len(DATA)])
    | st.integers(0, len(DATA)),
    chunk=st.integers(1 << 10, 3 * MIB),
)
async def test_any_size_and_chunking_stages_the_exact_bytes(
    store: S3BlobStore, s3: Any, size: int, chunk: int
) -> None:
    data = DATA[:size]
    staged = await store.stage(chunked(data, chunk), max_size=len(DATA))
    assert staged.hash == hashlib.sha256(data).hexdigest()
    assert (staged.size, staged.crc32, staged.head) == (size, zlib.crc32(data), data[:8192])
    await store.commit(staged)
    await store.settle(staged)
    assert await store.read_blob(staged.hash) == data
    assert tmp_objects(s3, store) == []
    assert multipart_uploads(s3, store) == []
    await store.delete(staged.hash)


RANGED = os.urandom(700_000)


@hsettings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_read_range_returns_exactly_the_slice(
    store: S3BlobStore, data: st.DataObject
) -> None:
    hex_hash = hashlib.sha256(RANGED).hexdigest()
    if not await store.exists(hex_hash):
        staged = await store.stage(chunked(RANGED, 65536), max_size=len(RANGED))
        await store.commit(staged)
        await store.settle(staged)
    offset = data.draw(st.integers(0, len(RANGED)), label="offset")
    length = data.draw(st.integers(0, len(RANGED) - offset), label="length")
    pieces = [piece async for piece in store.read_range(hex_hash, offset, length)]
    assert all(0 < len(piece) <= 256 << 10 for piece in pieces)
    assert b"".join(pieces) == RANGED[offset : offset + length]


async def test_read_range_of_a_missing_blob_is_not_found(store: S3BlobStore) -> None:
    with pytest.raises(NotFound):
        async for _ in store.read_range("0" * 64, 0, 10):
            pass


@pytest.mark.slow
async def test_large_blobs_are_copied_in_parts_and_adopted_from_a_file(
    store: S3BlobStore, s3: Any
) -> None:
    store.copy_limit = PART  # take the UploadPartCopy path without 5 GiB of test data
    store.copy_part = PART
    data = DATA[: 2 * PART + 1000]
    tus = store.tmp_dir / ("tus-" + "b" * 32)
    tus.write_bytes(data)
    fd = os.open(tus, os.O_RDONLY)
    staged = await store.adopt(fd, tus)
    assert not tus.exists()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # taken over and closed
    assert staged.hash == hashlib.sha256(data).hexdigest()
    assert await store.commit(staged) is True
    await store.settle(staged)
    assert await store.read_blob(staged.hash) == data
    assert tmp_objects(s3, store) == []
    assert multipart_uploads(s3, store) == []


async def test_interrupted_commits_are_listed_until_forgotten(store: S3BlobStore, s3: Any) -> None:
    staged = await store.stage(chunked(b"cut short", 4), max_size=100)
    assert await store.commit(staged) is True  # and the process "dies" before settle
    assert await store.interrupted_commits() == [staged.hash]
    await store.forget_commit(staged.hash)
    assert await store.interrupted_commits() == []
    assert tmp_objects(s3, store) == []


async def test_iter_blobs_digest_and_quarantine_never_overwrites(
    store: S3BlobStore, s3: Any
) -> None:
    staged = await store.stage(chunked(b"good", 2), max_size=100)
    await store.commit(staged)
    await store.settle(staged)
    for round_ in range(2):
        s3.put_object(Bucket=store.bucket, Key=f"{store.prefix}store/README", Body=f"{round_}")
        listed = [(b.key, b.size) async for b in store.iter_blobs()]
        expected = [("README", 1), (f"{staged.hash[:2]}/{staged.hash}", 4)]
        assert listed == sorted(expected)  # key order
        assert await store.digest("README") == (hashlib.sha256(b"%d" % round_).hexdigest(), 1)
        where = await store.quarantine("README")
        assert where.startswith(f"s3://{store.bucket}/{store.prefix}quarantine/README")
    listed = s3.list_objects_v2(Bucket=store.bucket, Prefix=f"{store.prefix}quarantine/")
    kept = {
        item["Key"]: s3.get_object(Bucket=store.bucket, Key=item["Key"])["Body"].read()
        for item in listed["Contents"]
    }
    assert sorted(kept.values()) == [b"0", b"1"]
    assert [b.key async for b in store.iter_blobs()] == [f"{staged.hash[:2]}/{staged.hash}"]
    with pytest.raises(FileNotFoundError):
        await store.digest("README")


async def test_leftovers_are_judged_by_age(store: S3BlobStore, s3: Any) -> None:
    bucket, tmp = store.bucket, store.tmp_prefix
    s3.put_object(Bucket=bucket, Key=f"{tmp}upload-dead", Body=b"x" * 300)
    s3.put_object(Bucket=bucket, Key=f"{tmp}commit-{'c' * 64}", Body=b"")  # not scratch
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=f"{tmp}upload-cut")["UploadId"]
    s3.upload_part(
        Bucket=bucket, Key=f"{tmp}upload-cut", UploadId=upload_id, PartNumber=1, Body=b"y" * 100
    )
    # Young: perhaps an upload still running elsewhere. (moto reports every multipart
    # upload as initiated on 2010-11-10, so only the scratch object's age is tested here.)
    young = await store.leftovers()
    assert [f.name for f in young if "?uploadId=" not in f.name] == []
    store.leftover_grace = 0
    found = await store.leftovers()
    assert sorted((f.name, f.size) for f in found) == [
        ("tmp/upload-cut?uploadId=" + upload_id, 100),
        ("tmp/upload-dead", 300),
    ]
    for leftover in found:
        assert await store.remove_leftover(leftover) is True
        assert await store.remove_leftover(leftover) is False  # gone already
    assert tmp_objects(s3, store) == [f"tmp/commit-{'c' * 64}"]
    assert multipart_uploads(s3, store) == []


async def test_ready_holds_blobs_and_unreachable_store(
    store: S3BlobStore, s3: Any, tmp_path: Path, s3_overrides: dict[str, Any]
) -> None:
    assert await store.ready()
    assert not await store.holds_blobs()
    staged = await store.stage(chunked(b"one", 1), max_size=10)
    await store.commit(staged)
    await store.settle(staged)
    assert await store.holds_blobs()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path / "elsewhere",
        **{**s3_overrides, "s3_endpoint_url": f"http://127.0.0.1:{closed_port}"},
    )
    unreachable = S3BlobStore(settings)
    await unreachable.open()
    try:
        assert not await unreachable.ready()
        with pytest.raises(ServiceUnavailable) as caught:
            await unreachable.exists(staged.hash)
        assert backends.S3_SECRET_KEY not in str(caught.value)
        assert caught.value.status == 503
    finally:
        await unreachable.close()


async def test_presigned_download_redirects_to_the_bytes(
    aiohttp_client: Any, make_settings: MakeSettings, s3_overrides: dict[str, Any]
) -> None:
    from filecask.app import create_app

    settings = make_settings(**s3_overrides, s3_presign=60.0)
    client: AppClient = await aiohttp_client(create_app(settings))
    body = b"presigned content " * 100
    response = await client.post("/files?name=a.txt", data=body, headers=ADMIN)
    assert response.status == 201
    hex_hash = (await response.json())["hash"]
    redirect = await client.get(f"/files/{hex_hash}?name=holiday photo.txt", allow_redirects=False)
    assert redirect.status == 307
    assert redirect.headers["Cache-Control"] == "no-store"
    location = redirect.headers["Location"]
    assert "Expires=60" in location or "X-Amz-Expires=60" in location
    async with aiohttp.ClientSession() as plain, plain.get(location) as fetched:
        assert fetched.status == 200
        assert await fetched.read() == body
        assert fetched.headers["Content-Type"].startswith("text/plain")
        assert fetched.headers["Content-Disposition"] == 'inline; filename="holiday photo.txt"'
    # Not stored: 404 as ever, never a redirect.
    assert (await client.get(f"/files/{'0' * 64}", allow_redirects=False)).status == 404
    # A matching If-None-Match is still a 304 from filecask.
    cached = await client.get(
        f"/files/{hex_hash}", headers={"If-None-Match": f'"{hex_hash}"'}, allow_redirects=False
    )
    assert cached.status == 304


async def test_clients_that_read_nothing_hold_no_s3_connection(
    aiohttp_client: Callable[[web.Application], Awaitable[AppClient]],
    make_settings: MakeSettings,
    s3_server: backends.S3Server,
) -> None:
    """Downloads read S3 in windows and never keep a response open while their client
    dawdles: 20 clients that read nothing (more than botocore's default pool of 10) leave
    other downloads, uploads and /readyz working at once."""
    settings = make_settings(
        cache_size=0, send_timeout=600, **backends.s3_settings(s3_server, s3_server.create_bucket())
    )
    client = await aiohttp_client(create_app(settings))
    response = await client.put("/files", data=io.BytesIO(os.urandom(8 << 20)), headers=ADMIN)
    assert response.status == 201, await response.text()
    big = (await response.json())["hash"]
    response = await client.put("/files", data=b"small" * 1000, headers=ADMIN)
    small = (await response.json())["hash"]
    stalled = []
    for _ in range(20):
        _reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(f"GET /files/{big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        stalled.append(writer)
    await asyncio.sleep(1.0)
    try:
        async with asyncio.timeout(10):
            assert (await client.get(f"/files/{small}")).status == 200
            assert (await client.get("/readyz")).status == 200
            response = await client.put("/files", data=b"new content", headers=ADMIN)
            assert response.status == 201
    finally:
        for writer in stalled:
            writer.transport.abort()


async def test_a_bundle_archive_reads_each_member_without_asking_its_size_first(
    aiohttp_client: Callable[[web.Application], Awaitable[AppClient]],
    make_settings: MakeSettings,
    s3_server: backends.S3Server,
) -> None:
    """The bundle's sizes are in the database: an archive of 20 small stored files makes
    one ranged GetObject per member and no HeadObject (was one of each per member)."""
    import zipfile

    from filecask.services import SERVICES

    settings = make_settings(**backends.s3_settings(s3_server, s3_server.create_bucket()))
    client = await aiohttp_client(create_app(settings))
    members = {f"m{i:02}.txt": f"member {i}\n".encode() * (i + 1) for i in range(20)}
    files = []
    for path, data in members.items():
        response = await client.post("/files", data=data, headers=ADMIN)
        files.append({"hash": (await response.json())["hash"], "path": path})
    created = await client.post("/archives", json={"name": "b.zip", "files": files}, headers=ADMIN)
    assert created.status == 201, await created.text()
    calls: list[str] = []
    blobs = client.app[SERVICES].blobs
    assert isinstance(blobs, S3BlobStore)
    blobs.client.meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.append(model.name)
    )
    response = await client.get(f"/archive/{(await created.json())['id']}/")
    assert response.status == 200
    archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    assert {name: archive.read(name) for name in archive.namelist()} == members
    assert calls.count("HeadObject") == 0
    assert calls.count("GetObject") == len(members)
