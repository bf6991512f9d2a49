"""fsck and gc find each kind of damage, repair what can be repaired, say what cannot, and
are safe to run while the server serves."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from filecask.services import Services
from filecask.storage.fsck import Report, fsck, gc
from filecask.storage.meta import BlobInfo, RemoveOutcome
from filecask.storage.meta.schema import blobs, bundle_holders, bundles
from tests.conftest import ADMIN, AppClient, MakeUser, StoreView
from tests.storage.sql_rows import sql_store
from tests.storage.test_files import assert_consistent

CONTENT = b"the real content " * 1000
HASH = hashlib.sha256(CONTENT).hexdigest()


async def upload(client: AppClient, data: bytes, headers: dict[str, str] = ADMIN) -> str:
    response = await client.post("/files", data=data, headers=headers)
    assert response.status in (200, 201), await response.text()
    return str((await response.json())["hash"])


def blob_path(services: Services, hex_hash: str) -> Path:
    return services.settings.store_dir / hex_hash[:2] / hex_hash


def view(services: Services) -> StoreView:
    """The store from outside, in the data directory or the bucket."""
    return StoreView(services.settings)


def kinds(report: Report) -> list[tuple[str, str, bool]]:
    return sorted((f.kind, f.key, f.fixed) for f in report.findings)


def plant_orphan(services: Services, data: bytes) -> str:
    """Bytes under their hash with no row: what a crash before the reference commit leaves."""
    hex_hash = hashlib.sha256(data).hexdigest()
    view(services).write(hex_hash, data)
    return hex_hash


async def test_a_clean_store_is_consistent_and_every_byte_is_rehashed(
    client: AppClient, services: Services, make_user: MakeUser
) -> None:
    ann = await make_user("ann")
    await upload(client, CONTENT)
    await upload(client, CONTENT, ann)
    await upload(client, b"other")
    progressed: list[int] = []
    report = await fsck(services, repair=False, progress=progressed.append)
    assert report.findings == []
    assert (report.blobs, report.bytes) == (2, len(CONTENT) + 5)
    assert sum(progressed) == len(CONTENT) + 5


async def test_an_orphan_blob_is_reported_then_removed_by_repair(
    client: AppClient, services: Services
) -> None:
    kept = await upload(client, CONTENT)
    orphan = plant_orphan(services, b"never acknowledged")
    report = await fsck(services, repair=False)
    assert kinds(report) == [("orphan", orphan, False)]
    assert view(services).exists(orphan)
    repaired = await fsck(services, repair=True)
    assert kinds(repaired) == [("orphan", orphan, True)]
    assert repaired.unresolved == []
    assert repaired.freed == len(b"never acknowledged")
    assert not view(services).exists(orphan)
    assert (await fsck(services, repair=False)).findings == []
    assert (await client.get(f"/files/{kept}")).status == 200
    await assert_consistent(services)


async def test_corrupt_content_is_quarantined_and_reported_as_unrepairable(
    client: AppClient, services: Services, make_user: MakeUser
) -> None:
    ann = await make_user("ann")
    await upload(client, CONTENT)
    await upload(client, CONTENT, ann)
    assert (await client.get(f"/files/{HASH}")).status == 200  # now in the server's cache
    damaged = bytearray(CONTENT)
    damaged[100] ^= 0xFF
    view(services).write(HASH, bytes(damaged))
    report = await fsck(services, repair=False)
    assert kinds(report) == [("corrupt", HASH, False)]
    assert "2 reference(s)" in report.findings[0].detail
    repaired = await fsck(services, repair=True)
    assert kinds(repaired) == [("corrupt", HASH, False)]
    assert "cannot be restored" in repaired.findings[0].action
    assert not view(services).exists(HASH)
    # Kept for a person to look at.
    assert view(services).read_quarantined(f"{HASH[:2]}_{HASH}") == bytes(damaged)
    # Nobody is served the bad bytes, not even from the small-file cache.
    assert (await client.get(f"/files/{HASH}")).status == 404
    after = await fsck(services, repair=True)
    assert kinds(after) == [("missing", HASH, False)]


async def test_a_truncated_blob_is_corrupt(client: AppClient, services: Services) -> None:
    await upload(client, CONTENT)
    view(services).write(HASH, CONTENT[:10])
    report = await fsck(services, repair=False)
    assert kinds(report) == [("corrupt", HASH, False)]
    assert "10 bytes" in report.findings[0].detail


async def test_missing_bytes_cannot_be_repaired_and_the_rows_are_kept(
    client: AppClient, services: Services
) -> None:
    await upload(client, CONTENT)
    view(services).remove(HASH)
    for repair in (False, True):
        report = await fsck(services, repair=repair)
        assert kinds(report) == [("missing", HASH, False)]
        assert report.unresolved
    listing = await (await client.get("/files", headers=ADMIN)).json()
    assert [f["hash"] for f in listing["files"]] == [HASH]  # the owner still sees what was lost


async def test_a_row_nothing_references_is_dropped_with_its_bytes(
    client: AppClient, services: Services
) -> None:
    hex_hash = plant_orphan(services, b"row without reference")
    async with sql_store(services.meta).engine.begin() as conn:
        await conn.execute(
            blobs.insert().values(
                hash=hex_hash, size=21, crc32=0, content_type="x/y", created_at=datetime.now(UTC)
            )
        )
    report = await fsck(services, repair=False)
    assert kinds(report) == [("unreferenced", hex_hash, False)]
    repaired = await fsck(services, repair=True)
    assert kinds(repaired) == [("unreferenced", hex_hash, True)]
    assert not view(services).exists(hex_hash)
    assert (await services.meta.census()).counts[blobs.name] == 0


async def test_a_bundle_nobody_holds_is_garbage_with_what_only_it_named(
    client: AppClient, services: Services
) -> None:
    """What a user removal left before it was atomic: a bundle whose holder rows went by
    cascade. Its link stops at once; fsck and gc report it and remove it, then the blob
    only it kept."""
    hex_hash = await upload(client, b"kept only by a forgotten bundle")
    manifest = {"name": "old.zip", "files": [{"path": "a.txt", "hash": hex_hash}]}
    made = await client.post("/archives", json=manifest, headers=ADMIN)
    assert made.status == 201, await made.text()
    bundle_id = (await made.json())["id"]
    assert (await client.delete(f"/files/{hex_hash}", headers=ADMIN)).status == 200
    async with sql_store(services.meta).engine.begin() as conn:
        await conn.execute(bundle_holders.delete())
    assert (await client.get(f"/archive/{bundle_id}/")).status == 404
    dry = await gc(services, grace=0, dry_run=True)
    assert kinds(dry) == sorted(
        [("holderless", bundle_id, False), ("unreferenced", hex_hash, False)]
    )
    assert view(services).exists(hex_hash)
    report = await fsck(services, repair=True)
    assert kinds(report) == sorted(
        [("holderless", bundle_id, True), ("unreferenced", hex_hash, True)]
    )
    assert not view(services).exists(hex_hash)
    assert (await services.meta.census()).counts[bundles.name] == 0
    assert kinds(await gc(services, grace=0)) == []


@pytest.mark.local_only  # liveness by flock; S3 judges by age (test_blobstore_s3)
async def test_only_dead_uploads_scratch_is_a_leftover(services: Services) -> None:
    tmp = services.settings.tmp_dir
    (tmp / "upload-dead").write_bytes(b"x" * 300)
    live = tmp / "upload-live"
    live.write_bytes(b"y" * 10)
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running upload holds
    try:
        report = await fsck(services, repair=False)
        assert kinds(report) == [("leftover", "upload-dead", False)]
        repaired = await fsck(services, repair=True)
        assert kinds(repaired) == [("leftover", "upload-dead", True)]
        assert sorted(os.listdir(tmp)) == ["upload-live"]
    finally:
        os.close(fd)


async def test_strays_are_moved_out_of_the_store(client: AppClient, services: Services) -> None:
    await upload(client, CONTENT)
    store = view(services)
    store.write("README", b"not a blob")
    store.write("ab/not-a-hash", b"x")
    misplaced = hashlib.sha256(b"misplaced").hexdigest()
    store.write(f"ab/{misplaced}", b"misplaced")
    report = await fsck(services, repair=False)
    expected = {"README", "ab/not-a-hash", f"ab/{misplaced}"}
    assert {f.key for f in report.findings} == expected
    assert {f.kind for f in report.findings} == {"stray"}
    repaired = await fsck(services, repair=True)
    assert all(f.fixed for f in repaired.findings)
    assert (await fsck(services, repair=False)).findings == []
    assert store.listing() == [f"{HASH[:2]}/{HASH}"]
    assert store.quarantined() == [b"misplaced", b"not a blob", b"x"]


@pytest.mark.local_only  # symlinks exist only in a directory
async def test_strays_are_moved_out_and_a_symlink_is_never_followed(
    client: AppClient, services: Services, tmp_path: Path
) -> None:
    await upload(client, CONTENT)
    store = services.settings.store_dir
    secret = tmp_path / "outside-secret"
    secret.write_bytes(b"outside the data directory")
    (store / "README").write_bytes(b"not a blob")
    (store / "ab").mkdir(exist_ok=True)
    (store / "ab" / "not-a-hash").write_bytes(b"x")
    misplaced = hashlib.sha256(b"misplaced").hexdigest()
    (store / "ab" / misplaced).write_bytes(b"misplaced")
    linked = hashlib.sha256(b"outside the data directory").hexdigest()
    (store / linked[:2]).mkdir(exist_ok=True)
    (store / linked[:2] / linked).symlink_to(secret)
    report = await fsck(services, repair=False)
    expected = {"README", "ab/not-a-hash", f"ab/{misplaced}", f"{linked[:2]}/{linked}"}
    assert {f.key for f in report.findings} == expected
    assert {f.kind for f in report.findings} == {"stray"}
    assert (await client.get(f"/files/{linked}")).status == 404  # never served through it
    repaired = await fsck(services, repair=True)
    assert all(f.fixed for f in repaired.findings)
    assert secret.read_bytes() == b"outside the data directory"
    assert (await fsck(services, repair=False)).findings == []
    assert len(os.listdir(services.settings.data_dir / "quarantine")) == 4


@pytest.mark.local_only  # ages a blob by utime; S3's LastModified cannot be set
async def test_gc_removes_only_what_is_older_than_the_grace_period(
    client: AppClient, services: Services
) -> None:
    kept = await upload(client, CONTENT)
    old = plant_orphan(services, b"old orphan")
    young = plant_orphan(services, b"young orphan")
    an_hour_ago = time.time() - 3600
    os.utime(blob_path(services, old), (an_hour_ago, an_hour_ago))
    dry = await gc(services, grace=600, dry_run=True)
    assert kinds(dry) == [("orphan", old, False)]
    assert blob_path(services, old).exists()
    report = await gc(services, grace=600)
    assert kinds(report) == [("orphan", old, True)]
    assert not blob_path(services, old).exists()
    assert blob_path(services, young).exists()
    assert kinds(await gc(services, grace=0)) == [("orphan", young, True)]
    assert (await client.get(f"/files/{kept}")).status == 200
    await assert_consistent(services)


async def test_fsck_and_gc_running_beside_uploads_and_deletes_remove_nothing_acknowledged(
    client: AppClient, services: Services, other_process: Services, make_user: MakeUser
) -> None:
    """Another process repairs and collects while this one uploads and deletes the same few
    contents: no acknowledged file goes missing and no in-flight commit is taken for an
    orphan; afterwards the store is consistent."""
    users = [ADMIN, await make_user("ann"), await make_user("ben")]
    contents = [bytes([i]) * (20_000 + i) for i in range(6)]
    held: dict[tuple[int, int], bool] = {}
    stop = asyncio.Event()

    async def churn(who: int) -> None:
        for round_ in range(12):
            index = (who + round_) % len(contents)
            await upload(client, contents[index], users[who])
            held[(who, index)] = True
            if round_ % 3 == 2:
                hex_hash = hashlib.sha256(contents[index]).hexdigest()
                response = await client.delete(f"/files/{hex_hash}", headers=users[who])
                assert response.status == 204
                held[(who, index)] = False

    async def maintain() -> None:
        while not stop.is_set():
            report = await fsck(other_process, repair=True)
            assert report.unresolved == [], report.findings
            assert [f for f in report.findings if f.kind != "leftover"] == []
            assert (await gc(other_process, grace=0)).findings == []

    maintenance = asyncio.create_task(maintain())
    await asyncio.gather(*(churn(who) for who in range(len(users))))
    stop.set()
    await maintenance
    for (who, index), holds in held.items():
        hex_hash = hashlib.sha256(contents[index]).hexdigest()
        listing = await (await client.get("/files", headers=users[who])).json()
        assert (hex_hash in {f["hash"] for f in listing["files"]}) == holds
        if holds:
            assert await (await client.get(f"/files/{hex_hash}")).read() == contents[index]
    assert (await fsck(services, repair=False)).findings == []
    await assert_consistent(services)


async def test_quarantine_never_replaces_an_earlier_find(
    client: AppClient, services: Services
) -> None:
    for round_ in range(2):
        view(services).write("README", f"stray {round_}".encode())
        repaired = await fsck(services, repair=True)
        assert kinds(repaired) == [("stray", "README", True)]
    assert view(services).quarantined() == [b"stray 0", b"stray 1"]


async def test_recover_skips_a_commit_its_writer_settled_while_recover_waited_for_the_lock(
    services: Services, other_process: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recover` lists a live upload's commit record, then waits for the hash lock. The
    upload stores its reference and settles, and the file is deleted, before the lock is
    free: nothing was interrupted, so nothing is reported (it was, under load, as a false
    `interrupted` finding while uploads and deletes ran beside gc)."""
    data = b"settled while recover waited" * 100
    hex_hash = hashlib.sha256(data).hexdigest()
    admin = await services.meta.get_user("admin")
    assert admin is not None
    listed = asyncio.Event()
    list_commits = other_process.blobs.interrupted_commits

    async def list_then_tell() -> list[str]:
        found = await list_commits()
        listed.set()
        return found

    monkeypatch.setattr(other_process.blobs, "interrupted_commits", list_then_tell)

    async def one_piece() -> AsyncIterator[bytes]:
        yield data

    staged = await services.blobs.stage(one_piece(), max_size=len(data))
    async with services.files.locks.hold(hex_hash):
        assert await services.blobs.commit(staged)
        recovering = asyncio.create_task(other_process.files.recover())
        await listed.wait()
        blob = BlobInfo(hex_hash, staged.size, staged.crc32, "application/octet-stream")
        await services.meta.add_ref(admin.id, blob, "f")
        await services.blobs.settle(staged)
        assert await services.meta.remove_ref(admin.id, hex_hash) is RemoveOutcome.REMOVED_LAST
        await services.blobs.delete(hex_hash)
    assert await recovering == []
