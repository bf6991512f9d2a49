"""tus with a real client (`tuspy`) against `filecask serve`: a 20 MiB upload is cut
mid-way (the client stops, then a raw connection dies mid-body), resumed by a fresh client
from the stored URL, and the server stores exactly the file."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import ADMIN_CREDENTIALS, HOST, Server, StartServer

tusclient = pytest.importorskip("tusclient.client", reason="tuspy is a test dependency")

SIZE = 20 << 20
CHUNK = 2 << 20
AUTH = {"Authorization": "Basic " + base64.b64encode(ADMIN_CREDENTIALS.encode()).decode()}


def offset_of(server: Server, url: str) -> int:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request("HEAD", urlsplit(url).path, headers={**AUTH, "Tus-Resumable": "1.0.0"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return int(response.headers["Upload-Offset"])
    finally:
        conn.close()


def cut_patch(server: Server, url: str, offset: int, data: bytes, send: int) -> None:
    """A PATCH announcing `data` whose connection dies after `send` bytes of it."""
    head = (
        f"PATCH {urlsplit(url).path} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(head + data[:send])
        sock.shutdown(socket.SHUT_RDWR)


def download(server: Server, hex_hash: str) -> bytes:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request("GET", f"/files/{hex_hash}")
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


def wait_for_offset(server: Server, url: str, minimum: int) -> int:
    deadline = time.monotonic() + 10
    while (offset := offset_of(server, url)) < minimum:
        assert time.monotonic() < deadline, f"offset stuck at {offset}"
        time.sleep(0.05)
    return offset


def upload_cut_and_resume(server: Server) -> None:
    content = os.urandom(SIZE)
    digest = hashlib.sha256(content).hexdigest()
    first = tusclient.TusClient(server.url("/uploads/"), headers=AUTH)
    uploader = first.uploader(
        file_stream=io.BytesIO(content),
        chunk_size=CHUNK,
        metadata={"filename": "resumed.bin"},
        upload_checksum=True,
    )
    uploader.upload(stop_at=3 * CHUNK)  # the client stops after three chunks
    stored_url = uploader.url
    assert offset_of(server, stored_url) == 3 * CHUNK

    # Then a connection dies mid-body: what arrived is kept (no checksum was sent).
    cut_patch(server, stored_url, 3 * CHUNK, content[3 * CHUNK :], send=5 << 20)
    offset = wait_for_offset(server, stored_url, 3 * CHUNK + 1)
    assert 3 * CHUNK < offset <= 3 * CHUNK + (5 << 20)

    # A fresh client resumes from the stored URL (it asks the offset with HEAD).
    fresh = tusclient.TusClient(server.url("/uploads/"), headers=AUTH)
    resumed = fresh.uploader(
        file_stream=io.BytesIO(content), url=stored_url, chunk_size=CHUNK, upload_checksum=True
    )
    assert resumed.offset == offset
    resumed.upload()
    assert offset_of(server, stored_url) == SIZE
    assert download(server, digest) == content
    assert hashlib.sha256(server.blob_path(digest).read_bytes()).hexdigest() == digest
    assert not [n for n in os.listdir(server.data_dir / "tmp") if n.startswith("tus-")]


def test_tuspy_upload_cut_and_resumed(start_server: StartServer) -> None:
    upload_cut_and_resume(start_server("--access-log", "false"))


def test_tuspy_resume_across_two_workers(start_server: StartServer) -> None:
    """Every tuspy request opens a new connection, which SO_REUSEPORT spreads over both
    workers: consecutive PATCHes of one upload land on different processes."""
    upload_cut_and_resume(start_server("--workers", "2", "--access-log", "false"))
