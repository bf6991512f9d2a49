"""A real server process killed with SIGKILL, mid-upload and at every step between disk and
database: afterwards nothing partial is visible, leftovers are cleaned, every acknowledged
file is present and byte-exact, and `filecask fsck` (after `--repair` where a step was cut)
reports a consistent store."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from filecask.faults import ENV_VAR, POINTS
from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, ServerLauncher, run_filecask

AUTH = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()


def request(
    server: Server, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": AUTH, **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def upload(server: Server, data: bytes) -> str:
    status, body = request(server, "POST", "/files", data)
    assert status in (200, 201), body
    hex_hash: str = json.loads(body)["hash"]
    assert hex_hash == hashlib.sha256(data).hexdigest()
    return hex_hash


def fsck(server_or_dir: Server | Path, *flags: str) -> tuple[int, dict[str, Any]]:
    data_dir = server_or_dir.data_dir if isinstance(server_or_dir, Server) else server_or_dir
    done = run_filecask(
        ["fsck", "--json", "--data-dir", str(data_dir), *flags], cwd=data_dir.parent, timeout=60
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


def kill_hard(server: Server) -> None:
    os.kill(server.pid, signal.SIGKILL)
    assert server.process.wait(10) == -signal.SIGKILL
    server.stop()


def start_streaming_upload(server: Server, declared: int, sent: bytes) -> socket.socket:
    """An upload that has sent `sent` of `declared` bytes and is still going."""
    sock = socket.create_connection((HOST, server.port))
    head = (
        f"POST /files HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {AUTH}\r\n"
        f"Content-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_mid_upload_loses_nothing_acknowledged_and_shows_nothing_partial(
    start_server: ServerLauncher,
) -> None:
    server = start_server()
    data_dir = server.data_dir
    acknowledged = {upload(server, os.urandom(200_000 + i)): b"" for i in range(3)}
    for hex_hash in list(acknowledged):
        acknowledged[hex_hash] = Path(server.blob_path(hex_hash)).read_bytes()
    partial = os.urandom(3 << 20)
    in_flight = [start_streaming_upload(server, 8 << 20, partial) for _ in range(4)]
    wait_for(lambda: len(os.listdir(data_dir / "tmp")) >= 4)

    # A client uploading as fast as it can while the server is killed: every upload it saw
    # acknowledged must survive.
    stop = threading.Event()
    racing: dict[str, bytes] = {}

    def race() -> None:
        index = 0
        while not stop.is_set():
            data = f"racing upload {index} ".encode() * 5000
            index += 1
            try:
                racing[upload(server, data)] = data
            except (OSError, http.client.HTTPException):
                return

    racer = threading.Thread(target=race)
    racer.start()
    wait_for(lambda: len(racing) >= 3)
    kill_hard(server)
    stop.set()
    racer.join(10)
    for sock in in_flight:
        sock.close()
    assert len(os.listdir(data_dir / "tmp")) >= 4  # the crash really left scratch behind

    restarted = start_server(data_dir=data_dir)
    assert os.listdir(data_dir / "tmp") == []  # dead uploads' scratch reaped at start
    for hex_hash, data in {**acknowledged, **racing}.items():
        status, body = request(restarted, "GET", f"/files/{hex_hash}")
        assert (status, body) == (200, data)
    stored = {p.name for p in (data_dir / "store").glob("*/*")}
    assert hashlib.sha256(partial).hexdigest() not in stored
    code, report = fsck(restarted)  # while the restarted server serves
    assert (code, report["findings"]) == (0, []), report
    assert report["blobs"] == len(stored)


LEFT_BEHIND = {
    "upload.staged": ["leftover"],  # the body in tmp/ only
    "upload.blob-committed": ["interrupted"],  # bytes stored, the reference never was
    "upload.ref-committed": [],  # complete, only the answer was lost
    "delete.ref-removed": ["orphan"],  # the last reference gone, the bytes not yet
    "delete.blob-deleted": [],  # complete, only the answer was lost
    "bundle.released": ["unreferenced"],  # the bundle gone, not yet the blob it kept
}


def test_every_crash_point_is_exercised() -> None:
    assert set(LEFT_BEHIND) == POINTS


@pytest.mark.parametrize("point", sorted(POINTS))
def test_a_crash_at_any_step_is_consistent_or_repaired_without_losing_acknowledged_files(
    start_server: ServerLauncher, point: str
) -> None:
    setup = start_server()
    data_dir = setup.data_dir
    kept = os.urandom(100_000)
    kept_hash = upload(setup, kept)
    victim = os.urandom(50_000)
    victim_hash = upload(setup, victim)
    bundle_id = ""
    if point.startswith("bundle."):
        manifest = {"name": "b.zip", "files": [{"hash": victim_hash, "path": "v.bin"}]}
        json_type = {"Content-Type": "application/json"}
        status, body = request(
            setup, "POST", "/archives", json.dumps(manifest).encode(), **json_type
        )
        assert status == 201, body
        bundle_id = json.loads(body)["id"]
        # The bundle keeps it, and the answer says so (200 with held_by_bundles).
        assert request(setup, "DELETE", f"/files/{victim_hash}")[0] == 200
    setup.stop()

    doomed = start_server(data_dir=data_dir, env={ENV_VAR: point})
    if point.startswith("upload."):
        method, path, body = "POST", "/files", os.urandom(70_000)
    elif point.startswith("delete."):
        method, path, body = "DELETE", f"/files/{victim_hash}", b""
    else:
        method, path, body = "DELETE", f"/archives/{bundle_id}", b""
    with pytest.raises((OSError, http.client.HTTPException)):
        request(doomed, method, path, body)
    assert doomed.process.wait(10) == -signal.SIGKILL
    doomed.stop()

    code, report = fsck(data_dir)
    assert sorted(f["kind"] for f in report["findings"]) == LEFT_BEHIND[point], report
    if code:
        code, report = fsck(data_dir, "--repair")
        assert code == 0, report
    code, report = fsck(data_dir)
    assert (code, report["findings"]) == (0, [])

    after = start_server(data_dir=data_dir)
    assert request(after, "GET", f"/files/{kept_hash}") == (200, kept)
    listing = json.loads(request(after, "GET", "/files")[1])
    listed = {f["hash"] for f in listing["files"]}
    assert kept_hash in listed
    for hex_hash in listed:  # whatever is listed can be downloaded, byte-exact
        status, body = request(after, "GET", f"/files/{hex_hash}")
        assert (status, hashlib.sha256(body).hexdigest()) == (200, hex_hash)


def test_a_restart_undoes_a_commit_cut_before_its_reference(start_server: ServerLauncher) -> None:
    """No fsck needed: the next start finds the cut commit's record and removes the blob
    nobody was told about, so the store is clean again at once."""
    doomed = start_server(env={ENV_VAR: "upload.blob-committed"})
    data_dir = doomed.data_dir
    content = os.urandom(60_000)
    with pytest.raises((OSError, http.client.HTTPException)):
        request(doomed, "POST", "/files", content)
    assert doomed.process.wait(10) == -signal.SIGKILL
    doomed.stop()
    blob = Path(doomed.blob_path(hashlib.sha256(content).hexdigest()))
    assert blob.exists()
    assert [n for n in os.listdir(data_dir / "tmp") if n.startswith("commit-")]

    restarted = start_server(data_dir=data_dir)
    assert not blob.exists()
    assert os.listdir(data_dir / "tmp") == []
    code, report = fsck(restarted)
    assert (code, report["findings"]) == (0, [])
