"""A 1 GiB upload streams through the server: its memory does not grow with the body."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests import backends
from tests.e2e.conftest import ADMIN_CREDENTIALS, HOST, Server, StartServer

pytestmark = pytest.mark.slow

MiB = 1 << 20
GiB = 1 << 30
UPLOAD_SIZE = GiB
CHUNK = MiB
RSS_GROWTH_LIMIT = 64 * MiB
SAMPLE_INTERVAL = 0.05
AUTHORIZATION = "Basic " + base64.b64encode(ADMIN_CREDENTIALS.encode()).decode()


class GeneratedBody:
    """`size` bytes made on the fly, one chunk at a time, never all in memory. Every chunk
    is a random block stamped with its index, so no two chunks are alike; the SHA-256 is
    computed as the bytes are handed out."""

    def __init__(self, size: int, chunk: int = CHUNK) -> None:
        assert size % chunk == 0
        self.size = size
        self.chunk = chunk
        self.sent = 0
        self._sha = hashlib.sha256()
        self._block = bytearray(os.urandom(chunk))

    def __iter__(self) -> Iterator[bytes]:
        for index in range(self.size // self.chunk):
            self._block[:8] = index.to_bytes(8, "big")
            data = bytes(self._block)
            self._sha.update(data)
            self.sent += len(data)
            yield data

    @property
    def hexdigest(self) -> str:
        assert self.sent == self.size, "the body has not been sent in full"
        return self._sha.hexdigest()


class RssSampler(threading.Thread):
    """Samples a process's resident set size every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        super().__init__(name=f"rss-sampler-{pid}", daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(self.rss())
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling; the peak seen."""
        self._stop_event.set()
        self.join()
        self.samples.append(self.rss())
        return max(self.samples)


def request(
    server: Server,
    method: str,
    path: str,
    body: GeneratedBody | bytes | None = None,
    timeout: float = 300,
) -> tuple[int, Any]:
    """One request with http.client; an iterable body goes out chunked, as it is made."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    try:
        headers = {"Authorization": AUTHORIZATION}
        if isinstance(body, GeneratedBody):
            headers["Content-Type"] = "application/octet-stream"
            conn.request(method, path, body=iter(body), headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        is_json = "json" in (response.getheader("Content-Type") or "")
        return response.status, json.loads(raw) if is_json and raw else raw
    finally:
        conn.close()


def test_one_gib_chunked_upload_keeps_server_rss_growth_under_64_mib(
    start_server: StartServer,
) -> None:
    server = start_server()
    # Warm up: the first upload starts the executor threads and imports lazily loaded code.
    warm = os.urandom(4 * MiB)
    status, body = request(server, "POST", "/files?name=warm.bin", warm)
    assert status == 201, body
    assert request(server, "DELETE", f"/files/{body['hash']}")[0] == 204

    sampler = RssSampler(server.pid)
    baseline = sampler.rss()
    generated = GeneratedBody(UPLOAD_SIZE)
    sampler.start()
    try:
        status, body = request(server, "POST", "/files?name=big.bin", generated)
    finally:
        peak = sampler.stop()

    assert status == 201, body
    assert body["hash"] == generated.hexdigest
    assert body["size"] == UPLOAD_SIZE
    blob = server.blob_path(generated.hexdigest)
    assert blob.stat().st_size == UPLOAD_SIZE
    growth = peak - baseline
    assert len(sampler.samples) > 10, "too few RSS samples to judge"
    assert growth < RSS_GROWTH_LIMIT, (
        f"server RSS grew by {growth / MiB:.1f} MiB during a 1 GiB upload "
        f"(baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB)"
    )

    assert request(server, "DELETE", f"/files/{generated.hexdigest}")[0] == 204
    assert not blob.exists()


S3_UPLOAD_SIZE = 256 * MiB
"""Enough for 32 parts of the default 8 MiB; moto keeps the object in its own memory."""


def test_s3_upload_and_download_stream_with_bounded_memory(
    start_server: StartServer, postgres_database: str, s3_server: backends.S3Server
) -> None:
    """Through PostgreSQL + S3: the upload goes out as a multipart upload one part at a
    time, and the download streams back in ranged pieces; neither grows the server."""
    bucket = s3_server.create_bucket()
    environment = {
        "FILECASK_DATABASE_URL": postgres_database,
        **backends.s3_environment(s3_server, bucket),
    }
    server = start_server(env=environment)
    warm = os.urandom(9 * MiB)  # two parts: the multipart path is warm too
    status, body = request(server, "POST", "/files?name=warm.bin", warm)
    assert status == 201, body
    assert request(server, "DELETE", f"/files/{body['hash']}")[0] == 204

    sampler = RssSampler(server.pid)
    baseline = sampler.rss()
    generated = GeneratedBody(S3_UPLOAD_SIZE)
    sampler.start()
    try:
        status, body = request(server, "POST", "/files?name=big.bin", generated)
        assert status == 201, body
        downloaded = hashlib.sha256()
        conn = http.client.HTTPConnection(HOST, server.port, timeout=300)
        try:
            conn.request("GET", f"/files/{body['hash']}")
            response = conn.getresponse()
            assert response.status == 200
            while chunk := response.read(MiB):
                downloaded.update(chunk)
        finally:
            conn.close()
    finally:
        peak = sampler.stop()

    assert body["hash"] == generated.hexdigest == downloaded.hexdigest()
    key = f"fc/store/{body['hash'][:2]}/{body['hash']}"
    assert s3_server.client().head_object(Bucket=bucket, Key=key)["ContentLength"] == (
        S3_UPLOAD_SIZE
    )
    growth = peak - baseline
    assert growth < RSS_GROWTH_LIMIT, (
        f"server RSS grew by {growth / MiB:.1f} MiB during a 256 MiB upload and download "
        f"through S3 (baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB)"
    )
