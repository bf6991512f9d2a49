"""Hostile and broken clients against a real `filecask serve`, over raw sockets.

Two things are proven here on the real process (the protocol's details are in
tests/http/test_protocol.py):

- every malformed request of the table gets its 4xx (problem+json) or, where the client
  cut its own body short so no answer can reach it, a closed connection; afterwards
  nothing is stored (no blob, nothing in data/tmp, `GET /me` unchanged) and the server
  still answers;
- hundreds of clients that ask for a large file or an archive and then read nothing are
  all dropped after `--send-timeout`, the server's memory stays bounded meanwhile, and
  their fds are given back.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, ServerLauncher

AUTH = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
TIMEOUT_FLAGS = (
    *("--header-timeout", "1", "--body-timeout", "1", "--send-timeout", "1"),
    *("--max-header-size", "4096", "--access-log", "false"),
)


@pytest.fixture(scope="module")
def hostile_server(module_launcher: ServerLauncher) -> Server:
    return module_launcher(*TIMEOUT_FLAGS)


# -- helpers --------------------------------------------------------------------------


def request(
    server: Server, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": AUTH, **headers})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def usage(server: Server) -> dict[str, Any]:
    status, _, body = request(server, "GET", "/me")
    assert status == 200
    me: dict[str, Any] = json.loads(body)
    return {k: me[k] for k in ("files", "bytes")}


def stored(server: Server) -> set[str]:
    """Every file under store/ and tmp/: a new one is a leak."""
    return {
        str(p.relative_to(server.data_dir))
        for d in ("store", "tmp")
        for p in (server.data_dir / d).rglob("*")
        if p.is_file()
    }


def exchange(server: Server, data: bytes, *, then_close: bool = False) -> bytes:
    """Send `data` on a fresh connection (half-closing it after, if told: a client that
    gives up) and return everything the server sends until it closes or goes quiet
    for a second after a complete answer."""
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(data)
        if then_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            if _complete(received):
                sock.settimeout(1.0)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                assert _complete(received), f"no complete answer, only {received[:200]!r}"
                return received
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def first_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return int(lines[0].split()[1]), headers, rest[:length]


def http_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: {AUTH}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def multipart(parts: list[tuple[str, bytes]], boundary: str = "XyZ") -> bytes:
    body = b""
    for headers, content in parts:
        body += f"--{boundary}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def with_length(body: bytes, **headers: str) -> dict[str, str]:
    return {"Content-Length": str(len(body)), **headers}


# -- the malformed input table --------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    status: int | None
    """The answer expected; None: the client cut its own request, the connection closes."""
    slug: str | None = None
    then_close: bool = False


CONTENT = os.urandom(50_000)
CONTENT_HASH = hashlib.sha256(CONTENT).hexdigest()
FORM = "multipart/form-data; boundary=XyZ"
FILE_PART = 'Content-Disposition: form-data; name="file"; filename="a.bin"'
BIG_JSON = json.dumps({"name": "x" * (1 << 20), "files": []}).encode()


def _raw_post(body: bytes, **headers: str) -> bytes:
    return http_request("POST", "/files", with_length(body, **headers), body)


CASES = [
    Case(
        "multipart-without-boundary",
        lambda: _raw_post(
            multipart([(FILE_PART, CONTENT)]), **{"Content-Type": "multipart/form-data"}
        ),
        400,
    ),
    Case(
        "multipart-broken-boundary",
        lambda: _raw_post(multipart([(FILE_PART, CONTENT)], "Other"), **{"Content-Type": FORM}),
        400,
    ),
    Case(
        "multipart-without-file-field",
        lambda: _raw_post(
            multipart([('Content-Disposition: form-data; name="other"', CONTENT)]),
            **{"Content-Type": FORM},
        ),
        400,
    ),
    Case(
        "multipart-part-headers-too-large",
        lambda: _raw_post(
            multipart([(FILE_PART + "\r\nX-Pad: " + "p" * 10_000, CONTENT)]),
            **{"Content-Type": FORM},
        ),
        400,
    ),
    Case(
        "content-length-larger-than-body-then-close",
        lambda: http_request("POST", "/files", {"Content-Length": "100000"}, CONTENT[:1000]),
        None,
        then_close=True,
    ),
    Case(
        # The server cannot tell a short Content-Length from a short file, so the case
        # uses the hash-checked upload: the first half does not have the full content's
        # hash, and the rest is no request either. aiohttp parses both at once and
        # answers 400 to the garbage (or hash-mismatch first, if they arrive apart).
        "content-length-smaller-than-body",
        lambda: http_request(
            "PUT", f"/files/{CONTENT_HASH}", {"Content-Length": str(len(CONTENT) // 2)}, CONTENT
        ),
        400,
    ),
    Case(
        "truncated-chunked-body",
        lambda: http_request(
            "POST", "/files", {"Transfer-Encoding": "chunked"}, b"4000\r\n" + CONTENT[:100]
        ),
        None,
        then_close=True,
    ),
    Case(
        "invalid-chunk-size",
        lambda: http_request(
            "POST", "/files", {"Transfer-Encoding": "chunked"}, b"zz\r\n" + CONTENT[:100]
        ),
        400,
    ),
    Case(
        "archives-json-over-limit",
        lambda: http_request(
            "POST", "/archives", with_length(BIG_JSON, **{"Content-Type": "application/json"}),
            BIG_JSON,
        ),
        413,
    ),
    Case(
        "users-json-over-limit",
        lambda: http_request(
            "POST", "/users", with_length(BIG_JSON, **{"Content-Type": "application/json"}),
            BIG_JSON,
        ),
        413,
    ),
    Case(
        "archives-invalid-json",
        lambda: http_request(
            "POST", "/archives", with_length(b"{nope", **{"Content-Type": "application/json"}),
            b"{nope",
        ),
        400,
    ),
    Case(
        "users-invalid-json",
        lambda: http_request(
            "POST", "/users", with_length(b"[1,", **{"Content-Type": "application/json"}), b"[1,"
        ),
        400,
    ),
    Case(
        "hash-mismatch",
        lambda: http_request("PUT", f"/files/{'0' * 64}", with_length(CONTENT), CONTENT),
        400,
        "hash-mismatch",
    ),
]  # fmt: skip


def settles_to(look: Callable[[], object], expected: object, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if look() == expected:
            time.sleep(0.5)
            if look() == expected:
                return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[c.name for c in CASES],
)
def test_malformed_input_is_refused_and_stores_nothing(hostile_server: Server, case: Case) -> None:
    server = hostile_server
    before_usage, before_files = usage(server), stored(server)
    raw = exchange(server, case.build(), then_close=case.then_close)
    if case.status is None:
        assert not raw.startswith(b"HTTP/1.1 2"), raw[:200]
        assert raw == b"", f"a cut request got an answer: {raw[:200]!r}"
    else:
        status, headers, body = first_response(raw)
        assert status == case.status, body
        assert headers["content-type"] == "application/problem+json"
        problem = json.loads(body)
        assert problem["status"] == case.status
        assert {"type", "title", "status", "detail"} <= problem.keys()
        if case.slug is not None:
            assert problem["type"].endswith("/" + case.slug)
    # Nothing stored, no staging file left behind, the server's accounting unchanged, and
    # it still answers. The handler may still be running when the connection is gone (it
    # can even create its scratch file after the client hung up, and then clean it up), so
    # wait until the store has stayed as it was for half a second.
    assert settles_to(lambda: stored(server), before_files, within=5.0)
    assert usage(server) == before_usage
    assert request(server, "GET", "/healthz")[0] == 200


def test_a_stalled_upload_and_a_trickled_head_are_timed_out_by_the_real_server(
    hostile_server: Server,
) -> None:
    """The timeouts reach `filecask serve` from its flags."""
    server = hostile_server
    before_usage, before_files = usage(server), stored(server)
    started = time.monotonic()
    raw = exchange(server, http_request("POST", "/files", {"Content-Length": "9999"}, b"abc"))
    status, headers, body = first_response(raw)
    assert (status, headers["connection"]) == (408, "close")
    assert json.loads(body)["type"].endswith("/request-timeout")
    assert 0.9 < time.monotonic() - started < 3
    started = time.monotonic()
    raw = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
    assert first_response(raw)[0] == 408
    assert 0.9 < time.monotonic() - started < 3
    assert stored(server) == before_files
    assert usage(server) == before_usage


# -- non-reading clients --------------------------------------------------------------

CLIENTS = 100
"""Per kind (a large file, a folder archive): 200 connections in all."""
BIG_FILE = 32 << 20
RSS_BOUND = 100 << 20
"""Growth allowed while 200 clients read nothing. Zero-copy file sends hold no user-space
buffer; an archive client holds at most its current batch (~128 KiB) plus the transport's
buffer: about 256 KiB each, 25 MiB for 100, so 100 MiB is a bound with room, and far
below what unbounded buffering (32 MiB per file client) would take."""


@pytest.fixture
def stalling_server(start_server: ServerLauncher) -> Server:
    return start_server(*TIMEOUT_FLAGS)


def _stalled_client(server: Server, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    return sock


def _client_connections(process: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in process.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.raddr and c.status == psutil.CONN_ESTABLISHED
    )


def test_clients_that_read_nothing_are_dropped_and_memory_stays_bounded(
    stalling_server: Server,
) -> None:
    server = stalling_server
    content = os.urandom(BIG_FILE)
    status, _, body = request(server, "POST", "/files", content)
    assert status == 201, body
    file_path = f"/files/{hashlib.sha256(content).hexdigest()}"
    folder = server.data_dir / "archives" / "photos-of-many-small-files"
    folder.mkdir(parents=True)
    for n in range(600):  # 600 x 16 KiB: the batched (`_flush`) path, ~9.4 MiB of ZIP
        (folder / f"{n:04}.bin").write_bytes(os.urandom(16 << 10))
    archive_path = f"/archive/{folder.name}/"
    # Warm up: the archive's plan and CRCs are computed once; both download fine.
    assert request(server, "GET", archive_path)[0] == 200
    assert len(request(server, "GET", file_path)[2]) == BIG_FILE

    process = psutil.Process(server.pid)
    baseline_rss, baseline_fds = process.memory_info().rss, process.num_fds()
    clients = [_stalled_client(server, file_path) for _ in range(CLIENTS)]
    clients += [_stalled_client(server, archive_path) for _ in range(CLIENTS)]
    try:
        started, peak, most = time.monotonic(), baseline_rss, 0
        while time.monotonic() - started < 10:
            peak = max(peak, process.memory_info().rss)
            now = _client_connections(process, server.port)
            most = max(most, now)
            if most >= CLIENTS and now == 0:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert most >= CLIENTS, f"only {most} stalled clients were ever connected at once"
        assert _client_connections(process, server.port) == 0, "stalled clients still held"
        assert elapsed < 6, f"took {elapsed:.1f} s to drop clients with a 1 s send timeout"
        growth = peak - baseline_rss
        assert growth < RSS_BOUND, f"RSS grew by {growth >> 20} MiB"
        deadline = time.monotonic() + 3
        while process.num_fds() > baseline_fds + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.num_fds() <= baseline_fds + 2
    finally:
        for sock in clients:
            sock.close()
    assert request(server, "GET", "/healthz")[0] == 200
    assert len(request(server, "GET", file_path)[2]) == BIG_FILE
