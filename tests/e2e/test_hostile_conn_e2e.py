"""Issue 14 §4 (memory per connection) and two protocol rules, against a real
`filecask serve` over real sockets (the protocol's details: tests/http/test_protocol.py).

- A request head is capped as a whole (`--max-head-size`, 32 KiB): the issue's attack,
  120 header lines of 8,000 bytes and no final CRLF, is cut with a 431 as it passes the
  cap, not after the 60 s header timeout; 1,000 such connections cost under 100 MiB
  while a well-behaved client is served, and the memory goes back when they are gone.
- Connections are limited per client address and in all (503 past either, at once);
  a client from another address is still served while an attacker holds its maximum.
- 100 signed-in uploads that trickle their bodies and stall hold little memory each
  (what arrived is written before the server waits for more): raw bodies and tus.
- Request lines in versions other than 1.0 and 1.1 are 505, answered in HTTP/1.1.
- Every answer's `Server` header is `filecask` (or absent, `--server-header false`):
  handler answers, the small-download fast path, protocol errors, refusals.

The test process may hold over 1,000 sockets: it lifts its own open-file limit (the
server lifts its own at start, see `filecask.http.protocol.raise_open_file_limit`).
Attackers connect from other loopback addresses (127.0.0.0/8 is all this machine's), so
the per-address limit meets only the clients each test means it for.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from filecask.http.memory import RECLAIM_FREE
from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, ServerLauncher, StartServer
from tests.e2e.lag import HealthProbe

MiB = 1 << 20
AUTH = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
HEAD_CAP = 32 << 10
"""The default `--max-head-size`."""
PER_ADDRESS = 128
"""The default `--max-connections-per-address`."""
ATTACK_LINES = 120
ATTACK_LINE = 8000
HOSTILE = 1000
HEAD_MEMORY_LIMIT = 100 * MiB
"""The issue's bound for 1,000 hostile heads, over the idle server."""
UPLOADS = 100
UPLOAD_SENT = (1 << 20) - 1
STALLED_UPLOAD_BOUND = 64 << 10
"""What a stalled upload may hold of its body: it writes out what it gathered first."""
UPLOAD_MEMORY_LIMIT = UPLOADS * STALLED_UPLOAD_BOUND + RECLAIM_FREE
"""For 100 stalled uploads (the issue measured 134 MiB): their bodies, plus the free C
heap that `filecask.http.memory` leaves in place (up to RECLAIM_FREE) and that RSS still
shows, so the test measures the bound and not the allocator's timing."""
SETTLE = 8.0
"""Seconds the server's RSS may take to come down to what is held, once the attack
stands still: the free pages of its C heap go back every 2 s (`filecask.http.memory`)."""
RETURNED = 25 * MiB
"""What may stay over idle once the attackers are gone."""


@pytest.fixture(scope="module", autouse=True)
def open_files() -> Iterator[None]:
    """Room for the test's sockets, as the server makes room for its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def conn_server(module_launcher: ServerLauncher) -> Server:
    """Default limits and timeouts (a 60 s header timeout), no access log."""
    return module_launcher("--access-log", "false")


# -- helpers --------------------------------------------------------------------------


def attack_line(number: int) -> bytes:
    """One of the issue's header lines: 8,000 bytes of value."""
    return b"X-Pad-%03d: " % number + b"a" * ATTACK_LINE + b"\r\n"


def connect_from(source: str, port: int, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect((HOST, port))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after its answer ends it too)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def problem(raw: bytes, status: int, slug: str) -> dict[str, str]:
    """The answer is `status` in HTTP/1.1, problem+json of type `slug`; its headers."""
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:300]
    _, headers, body = parse(raw)
    assert headers["content-type"] == "application/problem+json"
    document = json.loads(body)
    assert document["status"] == status
    assert document["type"].endswith("/" + slug), document
    return headers


def get(port: int, path: str, source: str = HOST, **headers: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


class RssSampler(threading.Thread):
    """The server's resident set size every 20 ms, until stopped; the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.rss()
        self._stop_event = threading.Event()

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.rss())
        return self.peak


def settled_rss(process: psutil.Process, within: float = 10) -> int:
    """The resident size once it stops moving (two readings 0.2 s apart within 1 MiB):
    the server has taken in what was sent."""
    deadline = time.monotonic() + within
    last = int(process.memory_info().rss)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = int(process.memory_info().rss)
        if abs(now - last) < MiB:
            return now
        last = now
    return last


def warm(server: Server) -> None:
    """Start what the first requests start (executor threads, lazy imports, the
    credentials cache) so that it does not count as the attack's memory."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request(
            "POST", "/files?name=warm", body=os.urandom(3 * MiB), headers={"Authorization": AUTH}
        )
        response = conn.getresponse()
        assert response.status in (200, 201), response.read()
        response.read()
        for _ in range(20):
            conn.request("GET", "/me", headers={"Authorization": AUTH})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()


# -- the request head cap -------------------------------------------------------------


def test_a_huge_head_is_cut_at_the_cap_not_at_the_header_timeout(conn_server: Server) -> None:
    """The issue's head on one connection: 431 as it passes 32 KiB, within seconds of
    the start, where the header timeout is 60 s."""
    sock = connect_from(HOST, conn_server.port, timeout=5)
    started = time.monotonic()

    def attack() -> None:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for number in range(ATTACK_LINES):
                sock.sendall(attack_line(number))
        except OSError:
            pass  # closed by the server: the point

    sender = threading.Thread(target=attack, daemon=True)
    sender.start()
    answer = read_all(sock)  # a TimeoutError (5 s) if the server waits for its timer
    sender.join(10)
    sock.close()
    headers = problem(answer, 431, "request-header-fields-too-large")
    assert headers["connection"] == "close"
    assert headers["server"] == "filecask"
    assert time.monotonic() - started < 5


@pytest.mark.alone  # HealthProbe: p99 < 50 ms
def test_1000_hostile_heads_cost_under_100_mib_and_the_memory_comes_back(
    start_server: StartServer,
) -> None:
    """1,000 connections (100 from each of 10 addresses) send the issue's head a line at
    a time, round after round: each holds just under the cap after 4 lines, and is cut
    at the 5th. Meanwhile `/healthz` from another client stays fast, the server's RSS
    stays under 100 MiB over idle, and once they are gone it falls back near idle."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"1,000 connections need more open files than the hard limit ({hard})")
    server = start_server("--access-log", "false")
    warm(server)
    process = psutil.Process(server.pid)
    idle = settled_rss(process)
    sampler = RssSampler(server.pid)
    sampler.start()
    answers: dict[socket.socket, bytes] = {}
    with HealthProbe(server.port) as probe:
        socks = [connect_from(f"127.0.0.{10 + n // 100}", server.port) for n in range(HOSTILE)]
        selector = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            answers[sock] = b""
        live = set(socks)

        def collect(timeout: float) -> None:
            for key, _ in selector.select(timeout):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                answers[sock] += chunk
                if not chunk:
                    selector.unregister(sock)
                    live.discard(sock)

        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        for number in range(-1, ATTACK_LINES):
            data = start if number < 0 else attack_line(number)
            for index, sock in enumerate(list(live)):
                try:
                    sock.send(data)  # never more than the socket's buffer takes: 8 KB
                except BlockingIOError:
                    pass
                except OSError:
                    selector.unregister(sock)
                    live.discard(sock)
                if index % 100 == 99:  # a trickle: each round spread over 0.1 s
                    collect(0)
                    time.sleep(0.01)
            collect(0)
            if number == 3:  # the most the cap lets them hold: held a while, measured
                held = settled_rss(process) - idle
                time.sleep(1.0)
            if sampler.peak - idle > 2 * HEAD_MEMORY_LIMIT or not live:
                break  # lost already (or all cut): no need to send the rest
        deadline = time.monotonic() + 20
        while live and time.monotonic() < deadline:
            collect(0.2)
        for index, sock in enumerate(socks):  # they leave as they came, over 0.1 s
            sock.close()
            if index % 100 == 99:
                time.sleep(0.01)
        selector.close()
    peak = sampler.stop() - idle
    figures = f"{held / MiB:.0f} MiB over idle when held, {peak / MiB:.0f} MiB at the peak"
    assert peak < HEAD_MEMORY_LIMIT, figures
    assert held < HEAD_MEMORY_LIMIT, figures
    refused = [raw for raw in answers.values() if raw.startswith(b"HTTP/1.1 431 ")]
    assert len(refused) == HOSTILE, {raw[:40] for raw in answers.values()}
    probe.assert_responsive()
    deadline = time.monotonic() + 15
    while process.memory_info().rss - idle > RETURNED and time.monotonic() < deadline:
        time.sleep(0.2)
    left = process.memory_info().rss - idle
    assert left < RETURNED, f"{left / MiB:.0f} MiB still held after they are gone"


# -- connection limits ----------------------------------------------------------------


@pytest.mark.alone  # HealthProbe: p99 < 50 ms
def test_an_address_at_its_limit_is_refused_while_others_are_served(conn_server: Server) -> None:
    """An attacker holds its 128 connections (each with a head under way); its next
    one gets 503 at once; a client from another address is served, and `/healthz` from
    a third stays fast throughout."""
    port = conn_server.port
    with HealthProbe(port) as probe:
        held = [connect_from("127.0.0.3", port) for _ in range(PER_ADDRESS)]
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        extra = connect_from("127.0.0.3", port, timeout=5)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(extra)
        extra.close()
        # Another address is served, again and again, for a second of the siege.
        until = time.monotonic() + 1.0
        statuses = set()
        while time.monotonic() < until:
            statuses.add(get(port, "/healthz", source="127.0.0.2")[0])
        for sock in held:
            sock.close()
    assert statuses == {200}
    headers = problem(answer, 503, "too-many-connections")
    assert headers["retry-after"].isdigit()
    assert headers["connection"] == "close"
    probe.assert_responsive()


def test_past_the_total_limit_new_connections_get_503(start_server: StartServer) -> None:
    server = start_server("--max-connections", "40", "--access-log", "false")
    held = [connect_from(f"127.0.1.{n + 1}", server.port) for n in range(40)]
    try:
        for sock in held:  # each accepted and waiting for its request
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        extra = connect_from("127.0.2.1", server.port, timeout=5)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(extra)
        extra.close()
        problem(answer, 503, "too-many-connections")
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # their slots are given back as they close
        try:
            if get(server.port, "/healthz")[0] == 200:
                break
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    assert get(server.port, "/healthz")[0] == 200


# -- trickled uploads -----------------------------------------------------------------


def tus_location(server: Server) -> str:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/uploads/",
            headers={
                "Authorization": AUTH,
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(8 * MiB),
            },
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 201
        return "/uploads/" + response.getheader("Location", "").rsplit("/", 1)[1]
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["raw", "tus"])
def test_100_trickled_uploads_hold_little_memory(start_server: StartServer, kind: str) -> None:
    """100 signed-in uploads (raw `POST /files`, or tus `PATCH`) each trickle 1 MiB - 1
    of an 8 MiB body in 8 KiB pieces, then stall. What arrived is written before the
    server waits for more, so each holds under 64 KiB of its body: all 100 hold under
    16 MiB (the issue measured 134 MiB: a 1 MiB write buffer each, and aiohttp's). The
    open-upload cap is raised so that one user may have all 100 open."""
    server = start_server("--access-log", "false", "--max-open-uploads", str(UPLOADS))
    warm(server)
    process = psutil.Process(server.pid)
    idle = settled_rss(process)
    socks = []
    for _ in range(UPLOADS):
        sock = connect_from("127.0.0.5", server.port)
        if kind == "raw":
            head = f"POST /files?name=t HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
        else:
            head = (
                f"PATCH {tus_location(server)} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                "Content-Type: application/offset+octet-stream\r\n"
            )
        sock.sendall(f"{head}Content-Length: {8 * MiB}\r\n\r\n".encode())
        socks.append(sock)
    data = os.urandom(UPLOAD_SENT)
    try:
        for at in range(0, UPLOAD_SENT, 8192):
            for sock in socks:
                sock.sendall(data[at : at + 8192])
            time.sleep(0.002)  # a trickle: the server keeps up with it
        # What they hold, once buffers that filled while the server lagged are given back.
        deadline = time.monotonic() + SETTLE
        held = settled_rss(process) - idle
        while held >= UPLOAD_MEMORY_LIMIT and time.monotonic() < deadline:
            time.sleep(0.2)
            held = process.memory_info().rss - idle
        assert get(server.port, "/healthz")[0] == 200
    finally:
        for sock in socks:
            sock.close()
    assert held < UPLOAD_MEMORY_LIMIT, f"{held / MiB:.1f} MiB held by {UPLOADS} stalled uploads"


# -- HTTP versions --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n",
    ],
    ids=["0.9", "0.9-bare", "2.0", "1.2"],
)
def test_versions_other_than_1_0_and_1_1_are_505_in_http_1_1(
    conn_server: Server, raw: bytes
) -> None:
    sock = connect_from(HOST, conn_server.port, timeout=5)
    sock.sendall(raw)
    answer = read_all(sock)
    sock.close()
    headers = problem(answer, 505, "http-version-not-supported")
    assert headers["connection"] == "close"


# -- the Server header ----------------------------------------------------------------


def every_kind_of_answer(server: Server) -> list[bytes]:
    """Raw answers of each origin: handler (200, 401, 404, page), the small-download
    fast path, protocol errors (400, 431, 505) and a refused connection (503)."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    small = os.urandom(2000)
    conn.request("POST", "/files?name=s", body=small, headers={"Authorization": AUTH})
    response = conn.getresponse()
    digest = json.loads(response.read())["hash"]
    conn.close()
    plain = f"GET /files/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        plain + plain + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"BL\x01AH / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
    ]
    answers = []
    for raw in requests:
        sock = connect_from(HOST, server.port, timeout=5)
        sock.sendall(raw)
        answers.append(read_all(sock))
        sock.close()
    held = [connect_from("127.0.0.6", server.port) for _ in range(2)]
    for sock in held:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    extra = connect_from("127.0.0.6", server.port, timeout=5)
    answers.append(read_all(extra))
    for sock in [*held, extra]:
        sock.close()
    return answers


def heads_of(answer: bytes) -> list[dict[str, str]]:
    """The headers of each response in `answer` (pipelined ones too)."""
    heads = []
    while answer:
        _, headers, rest = parse(answer)
        heads.append(headers)
        answer = rest[int(headers.get("content-length", len(rest))) :]
    return heads


@pytest.mark.parametrize("enabled", [True, False])
def test_every_answer_names_filecask_without_versions_or_nothing(
    start_server: StartServer, enabled: bool
) -> None:
    flags = ("--max-connections-per-address", "2", "--server-header", str(enabled).lower())
    server = start_server(*flags)
    answers = every_kind_of_answer(server)
    assert [parse(a)[0] for a in answers] == [200, 401, 404, 200, 200, 400, 431, 505, 503]
    assert len(heads_of(answers[4])) == 3  # two downloads (the second from the fast path)
    for answer in answers:
        assert b"aiohttp" not in answer.lower()
        assert b"python" not in answer.lower()
        for headers in heads_of(answer):
            assert headers.get("server") == ("filecask" if enabled else None), answer[:300]


def test_a_request_with_no_reply_returns_its_slot(conn_server: Server) -> None:
    """A client that connects and leaves (a browser's speculative connection) gives its
    place back: a burst of them never locks its address out."""
    for _ in range(PER_ADDRESS + 10):
        connect_from("127.0.0.7", conn_server.port).close()
    deadline = time.monotonic() + 5
    status: Any = None
    while time.monotonic() < deadline:
        status = get(conn_server.port, "/healthz", source="127.0.0.7")[0]
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200
