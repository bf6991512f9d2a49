"""A real full filesystem: the data directory on a small tmpfs mounted for the test.

Uploads that do not fit answer 507 and leave nothing behind; the server keeps serving
downloads and accepts uploads again once space is freed; the free-space reserve refuses
uploads before the disk is completely full. Mounting needs root (CAP_SYS_ADMIN): where the
test runner cannot mount, these tests are skipped with that reason.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, ServerLauncher, run_filecask

AUTH = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'not root'}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def request(server: Server, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": AUTH})
        response = conn.getresponse()
        raw = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(raw) if "json" in kind else raw
    finally:
        conn.close()


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def nothing_left_behind(server: Server) -> None:
    assert os.listdir(server.data_dir / "tmp") == []


def test_a_full_disk_answers_507_keeps_serving_and_recovers_when_space_is_freed(
    start_server: ServerLauncher, small_disk: Path
) -> None:
    server = start_server("--min-free-space", "0", data_dir=small_disk / "data")
    stored: dict[str, bytes] = {}
    status = 201
    while status == 201:  # fill the disk with 4 MiB files until one does not fit
        data = os.urandom(4 * MIB)
        status, body = request(server, "POST", "/files", data)
        if status == 201:
            stored[body["hash"]] = data
    assert status == 507, body
    assert body["type"].endswith("/insufficient-storage")
    assert len(stored) >= 3
    nothing_left_behind(server)
    refused = hashlib.sha256(data).hexdigest()
    assert not (server.data_dir / "store" / refused[:2] / refused).exists()

    for hex_hash, content in stored.items():  # downloads go on
        assert request(server, "GET", f"/files/{hex_hash}") == (200, content)
    assert request(server, "GET", "/readyz")[0] == 200

    first, second = list(stored)[:2]  # deleting frees space: the upload now fits
    assert request(server, "DELETE", f"/files/{first}")[0] == 204
    assert request(server, "DELETE", f"/files/{second}")[0] == 204
    status, body = request(server, "POST", "/files", data)
    assert status == 201, body
    nothing_left_behind(server)
    server.stop()
    checked = run_filecask(["fsck", "--data-dir", str(server.data_dir)], cwd=small_disk)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_free_space_reserve_refuses_an_upload_before_the_disk_is_full(
    start_server: ServerLauncher, small_disk: Path
) -> None:
    server = start_server("--min-free-space", "12M", data_dir=small_disk / "data")
    status, body = request(server, "POST", "/files", os.urandom(6 * MIB))
    assert status == 201, body
    free_before = free_bytes(small_disk)
    too_much = os.urandom(free_before - 12 * MIB + MIB)  # fits the disk, not the reserve
    status, body = request(server, "POST", "/files", too_much)
    assert status == 507, body
    assert "reserve" in body["detail"]
    nothing_left_behind(server)
    assert free_bytes(small_disk) >= 12 * MIB  # the reserve was kept
    status, body = request(server, "POST", "/files", os.urandom(MIB))
    assert status == 201, body


def fill(path: Path) -> None:
    """Write until the filesystem has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * MIB
        while chunk:
            try:
                os.write(fd, chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


def test_a_disk_filled_by_something_else_gets_507s_never_500s(
    start_server: ServerLauncher, small_disk: Path
) -> None:
    """Even the database cannot grow: writes answer 507 (or succeed), reads go on, and
    everything works again once the space is back."""
    server = start_server("--min-free-space", "0", data_dir=small_disk / "data")
    kept = os.urandom(MIB)
    kept_hash = request(server, "POST", "/files", kept)[1]["hash"]
    doomed_hash = request(server, "POST", "/files", os.urandom(MIB))[1]["hash"]
    fill(small_disk / "filler")
    assert free_bytes(small_disk) < 64 << 10

    status, body = request(server, "POST", "/files", os.urandom(256 << 10))
    assert status == 507, body
    status, body = request(server, "DELETE", f"/files/{doomed_hash}")
    assert status in (204, 507), body
    assert request(server, "GET", f"/files/{kept_hash}") == (200, kept)
    assert request(server, "GET", "/me")[0] == 200
    assert request(server, "GET", "/files")[0] == 200
    nothing_left_behind(server)

    (small_disk / "filler").unlink()
    assert request(server, "DELETE", f"/files/{doomed_hash}")[0] in (204, 404)
    status, body = request(server, "POST", "/files", os.urandom(256 << 10))
    assert status == 201, body
    server.stop()
    checked = run_filecask(["fsck", "--data-dir", str(server.data_dir)], cwd=small_disk)
    assert checked.returncode == 0, checked.stdout + checked.stderr
