"""The disk blob store: staging, atomic commit, scratch recovery, containment."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filecask.errors import NotFound, PayloadTooLarge
from filecask.storage.blobs.disk import SCRATCH_PREFIX, DiskBlobStore


async def chunks(data: bytes, piece: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


@pytest.fixture
async def store(tmp_path: Path) -> DiskBlobStore:
    blobs = DiskBlobStore(tmp_path)
    await blobs.open()
    return blobs


async def test_stage_hashes_and_syncs_without_making_visible(store: DiskBlobStore) -> None:
    data = os.urandom(3_000_000)
    staged = await store.stage(chunks(data), max_size=len(data))
    assert staged.hash == hashlib.sha256(data).hexdigest()
    assert staged.crc32 == zlib.crc32(data)
    assert staged.size == len(data)
    assert staged.head == data[:8192]
    assert Path(staged.scratch).parent == store.tmp_dir
    assert not await store.exists(staged.hash)


async def test_commit_moves_into_fanout_path(store: DiskBlobStore) -> None:
    data = b"hello world"
    staged = await store.stage(chunks(data), max_size=100)
    assert await store.commit(staged) is True
    path = store.path_of(staged.hash)
    assert path == store.store_dir / staged.hash[:2] / staged.hash
    assert path.read_bytes() == data
    # Until settled, the commit leaves its record (same inode, still locked by us).
    assert os.listdir(store.tmp_dir) == [f"commit-{staged.hash}"]
    assert await store.interrupted_commits() == []
    await store.settle(staged)
    assert os.listdir(store.tmp_dir) == []
    assert path.read_bytes() == data


async def test_commit_of_existing_blob_drops_the_copy(store: DiskBlobStore) -> None:
    first = await store.stage(chunks(b"same"), max_size=100)
    second = await store.stage(chunks(b"same"), max_size=100)
    assert await store.commit(first) is True
    assert await store.commit(second) is False
    await store.settle(second)  # leaves the first commit's record alone
    assert os.listdir(store.tmp_dir) == [f"commit-{first.hash}"]
    await store.settle(first)
    assert os.listdir(store.tmp_dir) == []


async def test_a_commit_cut_by_a_dead_process_is_found(
    store: DiskBlobStore, tmp_path: Path
) -> None:
    staged = await store.stage(chunks(b"cut short"), max_size=100)
    assert await store.commit(staged) is True
    fd = store._staged.pop(str(staged.scratch))
    os.close(fd)  # what the kernel does for a killed process: the lock goes
    other = DiskBlobStore(tmp_path)
    await other.open()
    assert await other.interrupted_commits() == [staged.hash]
    await other.forget_commit(staged.hash)
    assert await other.interrupted_commits() == []
    assert os.listdir(store.tmp_dir) == []


async def test_stage_over_limit_raises_and_removes_scratch(store: DiskBlobStore) -> None:
    with pytest.raises(PayloadTooLarge):
        await store.stage(chunks(b"x" * 5000, piece=1000), max_size=4999)
    assert os.listdir(store.tmp_dir) == []


async def test_discard_and_delete_are_idempotent(store: DiskBlobStore) -> None:
    staged = await store.stage(chunks(b"bye"), max_size=100)
    await store.discard(staged)
    await store.discard(staged)
    await store.delete(staged.hash)
    assert os.listdir(store.tmp_dir) == []


async def test_open_blob_reports_size_and_missing_is_not_found(store: DiskBlobStore) -> None:
    staged = await store.stage(chunks(b"abc"), max_size=100)
    await store.commit(staged)
    opened = await store.open_blob(staged.hash)
    try:
        assert opened.size == 3
        assert opened.fd is not None
        assert os.pread(opened.fd, 3, 0) == b"abc"
    finally:
        if opened.fd is not None:
            os.close(opened.fd)
    with pytest.raises(NotFound):
        await store.open_blob("0" * 64)


async def test_iter_blobs_lists_what_is_stored(store: DiskBlobStore) -> None:
    hashes = set()
    for data in (b"a", b"b", b"c"):
        staged = await store.stage(chunks(data), max_size=10)
        await store.commit(staged)
        hashes.add(staged.hash)
    assert {blob.hash async for blob in store.iter_blobs()} == hashes


def test_open_reaps_scratch_of_dead_writers_but_not_live_ones(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    abandoned = tmp / f"{SCRATCH_PREFIX}dead"
    abandoned.write_bytes(b"partial")
    live = tmp / f"{SCRATCH_PREFIX}live"
    live.write_bytes(b"in flight")
    unrelated = tmp / "not-ours"
    unrelated.write_bytes(b"keep")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another writer, still uploading
    try:
        asyncio.run(DiskBlobStore(tmp_path).open())
        assert not abandoned.exists()
        assert live.exists()
        assert unrelated.exists()
    finally:
        os.close(holder)


def other_filesystem(than: Path) -> Path | None:
    """A writable directory on a filesystem other than `than`'s: memory (/dev/shm) when
    the tests' scratch is on the disk, the disk when it is in memory (scripts/test)."""
    for candidate in (Path("/dev/shm"), Path("/var/tmp"), Path(__file__).resolve().parent):
        if (
            candidate.is_dir()
            and os.access(candidate, os.W_OK)
            and os.stat(candidate).st_dev != os.stat(than).st_dev
        ):
            return candidate
    return None


def test_open_refuses_store_and_tmp_on_different_filesystems(tmp_path: Path) -> None:
    elsewhere = other_filesystem(tmp_path)
    if elsewhere is None:
        pytest.skip("needs a writable directory on a filesystem other than the test's tmp dir")
    other = elsewhere / f"filecask-test-{os.getpid()}"
    other.mkdir()
    try:
        (tmp_path / "tmp").symlink_to(other)
        with pytest.raises(RuntimeError, match="one filesystem"):
            asyncio.run(DiskBlobStore(tmp_path).open())
    finally:
        other.rmdir()


async def test_a_staged_blob_stays_locked_until_commit_so_no_reaper_takes_it(
    store: DiskBlobStore, tmp_path: Path
) -> None:
    """Between stage and commit the upload waits for its hash's lock; a process starting
    meanwhile (another worker, fsck, gc) must not take its scratch for a dead upload's."""
    staged = await store.stage(chunks(b"waiting for the lock"), max_size=100)
    other = DiskBlobStore(tmp_path)
    await other.open()  # reaps on open
    assert await other.leftovers() == []
    assert Path(staged.scratch).exists()
    assert await store.commit(staged) is True
    assert store.path_of(staged.hash).read_bytes() == b"waiting for the lock"


async def test_scratch_is_locked_from_the_moment_it_has_a_name(store: DiskBlobStore) -> None:
    """Seen from outside, every scratch name already carries its writer's lock."""
    fd, name = await asyncio.to_thread(store._create_scratch)
    try:
        probe = os.open(name, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
    finally:
        os.close(fd)
        os.unlink(name)


async def test_a_failed_commit_leaves_no_scratch(store: DiskBlobStore) -> None:
    staged = await store.stage(chunks(b"doomed"), max_size=100)
    prefix_dir = store.path_of(staged.hash).parent
    prefix_dir.parent.mkdir(exist_ok=True)
    prefix_dir.write_bytes(b"a file where the prefix directory should be")
    with pytest.raises(FileExistsError):
        await store.commit(staged)
    assert os.listdir(store.tmp_dir) == []


async def test_a_symlink_in_the_store_is_never_followed(
    store: DiskBlobStore, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside")
    hex_hash = hashlib.sha256(b"outside").hexdigest()
    store.path_of(hex_hash).parent.mkdir(parents=True, exist_ok=True)
    store.path_of(hex_hash).symlink_to(secret)
    with pytest.raises(NotFound):
        await store.open_blob(hex_hash)
    with pytest.raises(NotFound):
        await store.read_blob(hex_hash)
    listed = [blob async for blob in store.iter_blobs()]
    assert [(b.key, b.regular) for b in listed] == [(f"{hex_hash[:2]}/{hex_hash}", False)]
