"""The connection defences of `filecask.http.protocol`, over real sockets.

The app runs in-process behind `make_runner` (our protocol, exactly as `filecask serve`
uses it) on 127.0.0.1; the clients are hand-rolled on raw sockets, because the point is
what a misbehaving client does: trickle, stall, send garbage, stop reading. Timeouts are
a fraction of a second so the suite stays fast; each assertion also bounds *when* the
server acted, so a missing timeout fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from filecask.app import create_app
from filecask.http.protocol import FilecaskAppRunner, address_key, make_runner
from filecask.settings import Settings, parse_networks
from tests.conftest import ADMIN, MakeSettings, assert_problem

HOST = "127.0.0.1"
AUTH = f"Authorization: {ADMIN['Authorization']}\r\n".encode()


@contextlib.asynccontextmanager
async def running(app: web.Application, settings: Settings) -> AsyncIterator[FilecaskAppRunner]:
    """`app` served on a free port through the runner `filecask serve` uses."""
    runner = make_runner(app, settings, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        yield runner
    finally:
        await runner.cleanup()


def port_of(runner: FilecaskAppRunner) -> int:
    port: int = runner.addresses[0][1]
    return port


async def connect(
    port: int, *, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf is not None:  # before connect, so the advertised window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


async def read_to_eof(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything until the server closes; fails if it has not closed within `within`."""
    return await asyncio.wait_for(reader.read(), within)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 5)
    return status, headers, body


def parse_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def stored_files(settings: Settings) -> list[Path]:
    """Every file under the store and the staging directory."""
    return [p for d in (settings.store_dir, settings.tmp_dir) for p in d.rglob("*") if p.is_file()]


# -- header timeout -------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed_silently_after_header_timeout(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(header_timeout=0.5)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        started = time.monotonic()
        assert await read_to_eof(reader, 3) == b""
        assert 0.4 < time.monotonic() - started < 2
        await close(writer)


async def test_a_trickled_request_head_gets_408_problem_and_is_closed(
    make_settings: MakeSettings,
) -> None:
    """Slowloris: each header line arrives well within any per-read timeout, but the head
    as a whole never completes. The clock counts from the connection's start, not from
    the last byte: the trickle runs until just before the timeout, and a server timing
    the silence after it would close much later than this test allows."""
    settings = make_settings(header_timeout=0.8)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for n in range(6):
            await asyncio.sleep(0.1)
            writer.write(f"X-Slow-{n}: drip\r\n".encode())
        raw = await read_to_eof(reader, 3)
        elapsed = time.monotonic() - started
        assert 0.75 < elapsed < 1.3
        status, headers, body = parse_response(raw)
        assert status == 408
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert_problem(body, 408, "request-timeout")
        await close(writer)


async def test_on_a_kept_alive_connection_the_header_clock_starts_with_the_next_request(
    make_settings: MakeSettings,
) -> None:
    """Idle between requests is the keep-alive timeout's business (as in nginx); once the
    next request starts, its head must arrive within header_timeout."""
    settings = make_settings(header_timeout=0.5, keepalive_timeout=5)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(1.0)  # idle for twice the header timeout: still open
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # then a head that never ends
        started = time.monotonic()
        status, _, body = parse_response(await read_to_eof(reader, 3))
        assert status == 408
        assert_problem(body, 408, "request-timeout")
        assert 0.4 < time.monotonic() - started < 2
        await close(writer)


async def test_body_bytes_after_an_early_answer_do_not_start_a_header_clock(
    make_settings: MakeSettings,
) -> None:
    """A 401 sent before the body was read, then the body arrives: those bytes are no new
    request head, so the idle connection gets no unsolicited 408 (found in review)."""
    settings = make_settings(header_timeout=0.5, keepalive_timeout=30)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(b"POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 401
        await asyncio.sleep(0.1)
        writer.write(b"0123456789")
        with pytest.raises(TimeoutError):  # nothing: no 408, no close
            await asyncio.wait_for(reader.read(1), 1.5)
        await close(writer)


async def test_a_head_arriving_when_keepalive_runs_out_is_not_cut(
    make_settings: MakeSettings,
) -> None:
    """Once the next request has begun, the header timeout governs, not the keep-alive
    timeout (found in review)."""
    settings = make_settings(header_timeout=5, keepalive_timeout=1)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # begun well before keep-alive runs out
        await asyncio.sleep(1.2)  # and finished after: the answer was sent over 1.2 s ago
        writer.write(b"Host: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await close(writer)


async def test_keepalive_timeout_closes_an_idle_connection(make_settings: MakeSettings) -> None:
    settings = make_settings(keepalive_timeout=0.5, header_timeout=30)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        started = time.monotonic()
        assert await read_to_eof(reader, 3) == b""
        assert 0.3 < time.monotonic() - started < 2
        await close(writer)


# -- protocol errors as problem+json --------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nX-Long: " + b"a" * 2000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nX-" + b"n" * 2000 + b": v\r\n\r\n", 431),
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"BL\x01AH / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n", 400),
        (b"POST /files HTTP/1.1\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ],
    ids=["long-header-value", "long-header-name", "long-request-line", "bad-method",
         "bad-header", "bad-chunk-size"],
)  # fmt: skip
async def test_protocol_errors_are_problem_json(
    make_settings: MakeSettings, request_bytes: bytes, status: int
) -> None:
    settings = make_settings(max_header_size=1024)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(request_bytes)
        got, headers, body = parse_response(await read_to_eof(reader, 5))
        assert got == status
        assert headers["content-type"] == "application/problem+json"
        assert_problem(body, status)
        await close(writer)


async def test_header_of_max_header_size_is_accepted(make_settings: MakeSettings) -> None:
    settings = make_settings(max_header_size=1024)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        value = b"a" * (1024 - len("X-Long") - 2)  # aiohttp counts the name and value
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + value + b"\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await close(writer)


# -- body timeout ---------------------------------------------------------------------

MULTIPART_HEAD = (
    b"--XyZ\r\n"
    b'Content-Disposition: form-data; name="file"; filename="slow.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


@pytest.mark.parametrize(
    ("headers", "first_bytes"),
    [
        (b"Content-Length: 100000\r\n", b"x" * 5000),
        (b"Transfer-Encoding: chunked\r\n", b"1388\r\n" + b"x" * 5000 + b"\r\n"),
        (
            b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000\r\n",
            MULTIPART_HEAD + b"x" * 5000,
        ),
        (b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000\r\n", b"--X"),
    ],
    ids=["raw", "chunked", "multipart-data", "multipart-preamble"],
)
async def test_a_stalled_upload_is_408_and_stores_nothing(
    make_settings: MakeSettings, headers: bytes, first_bytes: bytes
) -> None:
    settings = make_settings(body_timeout=0.5)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(b"POST /files?name=slow.bin HTTP/1.1\r\nHost: x\r\n" + AUTH + headers)
        writer.write(b"\r\n" + first_bytes)
        started = time.monotonic()
        # Closed right after the answer: no lingering to read the rest of a stalled body.
        status, headers_got, body = parse_response(await read_to_eof(reader, 3))
        assert 0.4 < time.monotonic() - started < 2
        assert status == 408
        assert headers_got["connection"] == "close"
        assert_problem(body, 408, "request-timeout")
        await close(writer)
        assert stored_files(settings) == []


@pytest.mark.parametrize("path", ["/archives", "/users"])
async def test_a_trickled_json_body_is_408(make_settings: MakeSettings, path: str) -> None:
    """JSON bodies are small, but a client that stops sending one must not hold the
    request open for ever either."""
    settings = make_settings(body_timeout=0.5)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + AUTH)
        writer.write(b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
        started = time.monotonic()
        status, _, body = parse_response(await read_to_eof(reader, 3))
        assert 0.4 < time.monotonic() - started < 2
        assert status == 408
        assert_problem(body, 408, "request-timeout")
        await close(writer)


async def test_a_json_body_trickled_steadily_is_not_cut(make_settings: MakeSettings) -> None:
    """As for uploads, the limit is on a stall, not on the whole body."""
    settings = make_settings(body_timeout=0.5)
    body = json.dumps({"name": "trickle", "password": "p" * 300}).encode()
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(b"POST /users HTTP/1.1\r\nHost: x\r\n" + AUTH)
        writer.write(
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        started = time.monotonic()
        for start in range(0, len(body), 40):
            await asyncio.sleep(0.2)
            writer.write(body[start : start + 40])
        status, _, answer = await read_response(reader)
        assert time.monotonic() - started > 1.0  # far longer than the stall limit
        assert status == 201, answer
        await close(writer)


async def test_a_slow_upload_that_keeps_sending_is_not_cut(make_settings: MakeSettings) -> None:
    """The body timeout is per read: 10 pieces 0.2 s apart take far longer than it."""
    settings = make_settings(body_timeout=0.5)
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(
            b"POST /files HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 10000\r\n\r\n"
        )
        for _ in range(10):
            await asyncio.sleep(0.2)
            writer.write(b"y" * 1000)
        status, _, body = await read_response(reader)
        assert status == 201, body
        assert json.loads(body)["size"] == 10000
        await close(writer)


# -- send timeout backstop ------------------------------------------------------------

BIG = 8 << 20


async def big_response(request: web.Request) -> web.Response:
    """A body aiohttp writes itself after the handler returns (as for cached files or
    long JSON lists): only the protocol can bound it. A small, fixed send buffer keeps
    almost all of it in the transport, whatever the kernel's autotuning would do."""
    assert request.transport is not None
    sock = request.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    return web.Response(body=b"z" * BIG)


async def test_a_client_that_reads_nothing_is_dropped_after_send_timeout(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(send_timeout=0.5)
    app = web.Application()
    app.router.add_get("/big", big_response)
    async with running(app, settings) as runner:
        reader, writer = await connect(port_of(runner), rcvbuf=64 << 10)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert runner.server is not None
        started = time.monotonic()
        await asyncio.sleep(0.2)
        assert len(runner.server.connections) == 1
        while runner.server.connections and time.monotonic() < started + 5:
            await asyncio.sleep(0.05)
        assert runner.server.connections == [], "the non-reading client was never dropped"
        assert 0.4 < time.monotonic() - started < 2
        # What reaches the client is a cut response: it never sees all of it.
        received = await asyncio.wait_for(_drain(reader), 10)
        assert received < BIG
        await close(writer)


async def test_a_slow_reader_that_keeps_reading_is_not_dropped(
    make_settings: MakeSettings,
) -> None:
    """1 MiB every 0.25 s: each stretch is shorter than the send timeout, the whole
    transfer several times longer, and it completes."""
    settings = make_settings(send_timeout=0.5)
    app = web.Application()
    app.router.add_get("/big", big_response)
    async with running(app, settings) as runner:
        reader, writer = await connect(port_of(runner), rcvbuf=64 << 10)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        total = 0
        while total < BIG:
            await asyncio.sleep(0.25)
            total += len(await asyncio.wait_for(reader.readexactly(min(1 << 20, BIG - total)), 5))
        assert time.monotonic() - started > 1.5
        await close(writer)


async def _drain(reader: asyncio.StreamReader) -> int:
    total = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(1 << 20):
            total += len(chunk)
    return total


# -- the request head limit -----------------------------------------------------------

HEAD_LIMIT = 2048


async def echo_length(request: web.Request) -> web.Response:
    """Reads the whole body and answers its length: the parser has framed it right."""
    return web.Response(text=str(len(await request.read())))


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def small_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_post("/", echo_length)
    return app


@pytest.fixture
async def head_limited(make_settings: MakeSettings) -> AsyncIterator[int]:
    """The port of a small app behind our protocol, with a request head limit of 2 KiB
    (and a long header timeout, so only the head limit can cut a connection)."""
    settings = make_settings(max_head_size=HEAD_LIMIT, header_timeout=30)
    async with running(small_app(), settings) as runner:
        yield port_of(runner)


def line(number: int, size: int) -> bytes:
    """A header field of exactly `size` bytes with its CRLF."""
    name = f"X-{number}: ".encode()
    return name + b"v" * (size - len(name) - 2) + b"\r\n"


async def test_a_head_trickled_past_the_limit_is_431_at_once(head_limited: int) -> None:
    """The issue's attack, scaled down: header lines of 400 bytes, no final CRLF. The
    answer comes as the head passes the limit, not after the header timeout (30 s)."""
    reader, writer = await connect(head_limited)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    sent = 0
    answer = b""
    for number in range(120):
        writer.write(line(number, 400))
        sent += 400
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 0.05)
            break
        except TimeoutError:
            continue
    assert answer, "the head was never cut"
    assert sent <= HEAD_LIMIT + 400
    status, headers, body = parse_response(answer)
    assert status == 431
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert headers["connection"] == "close"
    assert_problem(body, 431, "request-header-fields-too-large")
    assert time.monotonic() - started < 5
    await close(writer)


async def test_a_head_over_the_limit_sent_whole_is_431(head_limited: int) -> None:
    reader, writer = await connect(head_limited)
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + line(0, 1000) + line(1, 1100) + b"\r\n"
    writer.write(head)
    status, _, body = parse_response(await read_to_eof(reader, 5))
    assert status == 431
    assert_problem(body, 431, "request-header-fields-too-large")
    await close(writer)


async def test_a_head_just_under_the_limit_is_served(head_limited: int) -> None:
    reader, writer = await connect(head_limited)
    start = b"GET / HTTP/1.1\r\nHost:x\r\n"
    head = start + line(0, HEAD_LIMIT - len(start) - 2) + b"\r\n"
    assert len(head) == HEAD_LIMIT
    for piece in range(0, len(head), 100):  # trickled: counted as it arrives too
        writer.write(head[piece : piece + 100])
        await writer.drain()
        await asyncio.sleep(0)
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"ok")
    await close(writer)


@dataclass(frozen=True)
class Exchange:
    """A request of a pipelined stream, and what must come back for it."""

    raw: bytes
    status: int
    body: bytes


def get_request(fields: list[int]) -> Exchange:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        line(n, size) for n, size in enumerate(fields)
    )
    return Exchange(head + b"\r\n", 200, b"ok")


def post_request(body: bytes, pieces: list[int] | None) -> Exchange:
    """A POST of `body`, with a Content-Length or (given the piece sizes) chunked."""
    head = b"POST / HTTP/1.1\r\nHost: x\r\n"
    if pieces is None:
        return Exchange(
            head + b"Content-Length: %d\r\n\r\n" % len(body) + body, 200, b"%d" % len(body)
        )
    framed, at = b"", 0
    for size in [*pieces, len(body)]:
        piece = body[at : at + size]
        at += len(piece)
        if piece:
            framed += b"%x\r\n" % len(piece) + piece + b"\r\n"
    framed += b"0\r\n\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    return Exchange(head + framed, 200, b"%d" % len(body))


def gzip_post(body: bytes) -> Exchange:
    """A POST of `body` gzipped: the parser counts the bytes as they came, compressed."""
    packed = gzip.compress(body)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
    raw = head + b"Content-Length: %d\r\n\r\n" % len(packed) + packed
    return Exchange(raw, 200, b"%d" % len(body))


BODY_BYTES = st.binary(max_size=3000) | st.sampled_from(
    [b"\r\n\r\n" * 700, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 400]
)
"""Bodies, some of which look like heads: the parser must count them as bodies."""
REQUESTS = st.one_of(
    st.lists(st.integers(10, 600), max_size=3).map(get_request),
    st.builds(post_request, BODY_BYTES, st.none() | st.lists(st.integers(1, 900), max_size=4)),
    st.builds(gzip_post, BODY_BYTES | st.just(b"\0" * 100_000)),
)


async def send_in_pieces(writer: asyncio.StreamWriter, raw: bytes, cuts: list[int]) -> None:
    """`raw` in pieces cut at `cuts`, each given its own turn of the loop (and so, over
    loopback, mostly its own read on the server)."""
    at = 0
    for cut in sorted({c % (len(raw) + 1) for c in cuts} | {len(raw)}):
        if cut > at:
            writer.write(raw[at:cut])
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0)
            at = cut


async def read_answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    answers = []
    for _ in range(count):
        status, _, body = await read_response(reader)
        answers.append((status, body))
    return answers


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    requests=st.lists(REQUESTS, min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=12),
)
async def test_heads_under_the_limit_and_bodies_of_any_size_pass_however_split(
    head_limited: int, requests: list[Exchange], cuts: list[int]
) -> None:
    """Pipelined GETs with heads under the limit and POSTs with bodies (Content-Length or
    chunked, some of them looking like heads), cut anywhere: every one is answered, none
    is 431. A body's bytes never count as head bytes."""
    reader, writer = await connect(head_limited)
    await send_in_pieces(writer, b"".join(r.raw for r in requests), cuts)
    assert await read_answers(reader, len(requests)) == [(r.status, r.body) for r in requests]
    await close(writer)


@hypothesis_settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(REQUESTS, max_size=3),
    fields=st.lists(st.integers(10, 1500), min_size=1, max_size=6).filter(
        lambda sizes: sum(sizes) > HEAD_LIMIT
    ),
    complete=st.booleans(),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=12),
)
async def test_a_head_over_the_limit_is_431_however_split(
    head_limited: int, before: list[Exchange], fields: list[int], complete: bool, cuts: list[int]
) -> None:
    """After any requests that pass, a head over the limit, whole or never finished, cut
    anywhere: the requests before it are answered, then 431, and the connection ends."""
    reader, writer = await connect(head_limited)
    big = get_request(fields).raw
    if not complete:
        big = big[:-2]  # no final CRLF: the head never ends
    await send_in_pieces(writer, b"".join(r.raw for r in before) + big, cuts)
    assert await read_answers(reader, len(before)) == [(r.status, r.body) for r in before]
    status, headers, body = await read_response(reader)
    assert status == 431
    assert headers["connection"] == "close"
    assert_problem(json.loads(body), 431, "request-header-fields-too-large")
    assert await read_to_eof(reader, 5) == b""
    await close(writer)


# -- HTTP versions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
    ],
    ids=["0.9", "0.9-bare", "2.0", "1.2", "3.0", "h2-preface", "pipelined-2.0"],
)
async def test_versions_other_than_1_0_and_1_1_are_505_in_http_1_1(
    make_settings: MakeSettings, request_line: bytes
) -> None:
    settings = make_settings()
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(request_line)
        answer = await read_to_eof(reader, 5)
        if request_line.count(b"GET") == 2:  # the 1.1 request before it is answered first
            first, version_refused, rest = answer.partition(b"HTTP/1.1 505 ")
            assert first.startswith(b"HTTP/1.1 200 ")
            assert first.endswith(b'{"status":"ok"}')
            answer = version_refused + rest
        assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
        status, headers, body = parse_response(answer)
        assert status == 505
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert_problem(body, 505, "http-version-not-supported")
        await close(writer)


async def test_http_1_0_is_still_served(make_settings: MakeSettings) -> None:
    settings = make_settings()
    async with running(create_app(settings), settings) as runner:
        reader, writer = await connect(port_of(runner))
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = await read_to_eof(reader, 5)
        assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
        await close(writer)


# -- connection limits ----------------------------------------------------------------


async def connect_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from another loopback address (all of 127/8 is this machine's)."""
    return await asyncio.open_connection(HOST, port, local_addr=(source, 0))


async def served(source: str, port: int) -> int:
    reader, writer = await connect_from(source, port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return (await read_response(reader))[0]
    finally:
        await close(writer)


async def refused(source: str, port: int) -> tuple[int, dict[str, str], Any]:
    """What a connection the server refuses gets: its answer, then the close."""
    reader, writer = await connect_from(source, port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return parse_response(await read_to_eof(reader, 5))
    finally:
        await close(writer)


async def test_past_the_per_address_limit_a_connection_is_503_and_others_are_served(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(max_connections_per_address=3)
    async with running(create_app(settings), settings) as runner:
        port = port_of(runner)
        held = [await connect_from("127.0.0.3", port) for _ in range(3)]
        status, headers, body = await refused("127.0.0.3", port)
        assert status == 503
        assert headers["retry-after"] == "5"
        assert headers["connection"] == "close"
        assert_problem(body, 503, "too-many-connections")
        assert await served("127.0.0.2", port) == 200
        await close(held.pop()[1])
        for _ in range(100):  # the server sees the close
            if runner.server is not None and len(runner.server.connections) < 3:
                break
            await asyncio.sleep(0.01)
        assert await served("127.0.0.3", port) == 200
        for _, writer in held:
            await close(writer)


async def test_past_the_total_limit_a_connection_is_503(make_settings: MakeSettings) -> None:
    settings = make_settings(max_connections=4)
    async with running(create_app(settings), settings) as runner:
        port = port_of(runner)
        held = [await connect_from(f"127.0.0.{10 + n}", port) for n in range(4)]
        status, _, body = await refused("127.0.0.20", port)
        assert status == 503
        assert_problem(body, 503, "too-many-connections")
        for _, writer in held:
            await close(writer)


async def test_trusted_proxies_have_no_per_address_limit(make_settings: MakeSettings) -> None:
    """A reverse proxy carries many clients over its connections: it is not one client."""
    settings = make_settings(
        max_connections_per_address=2, trusted_proxies=parse_networks("127.0.0.4")
    )
    async with running(create_app(settings), settings) as runner:
        port = port_of(runner)
        held = [await connect_from("127.0.0.4", port) for _ in range(4)]
        assert await served("127.0.0.4", port) == 200
        for _, writer in held:
            await close(writer)


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("203.0.113.7", 5000), "203.0.113.7"),
        (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("::ffff:203.0.113.7", 5000, 0, 0), "203.0.113.7"),
        (("fe80::1%eth0", 5000, 0, 2), "fe80::/64"),
        (("10.1.2.3", 5000), None),  # a trusted proxy
        ("/run/filecask.sock", None),
        (None, None),
    ],
)
def test_connections_are_counted_per_ipv4_address_and_ipv6_64(peer: Any, key: str | None) -> None:
    assert address_key(peer, parse_networks("10.0.0.0/8")) == key


def test_without_trusted_proxies_every_address_is_counted() -> None:
    assert address_key(("10.1.2.3", 5000), ()) == "10.1.2.3"
    assert address_key(("2001:db8::1", 5000, 0, 0), ()) == "2001:db8::/64"


# -- the Server header ----------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
async def test_every_answer_names_the_server_without_versions_or_none(
    make_settings: MakeSettings, enabled: bool
) -> None:
    """Handler answers, problem answers, protocol errors and the raw 408: the same
    `Server` header (or none), never aiohttp's or Python's version."""
    settings = make_settings(server_header=enabled, header_timeout=0.3)
    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"BL\x01AH / HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # never finished: 408
    ]
    async with running(create_app(settings), settings) as runner:
        for raw in requests:
            reader, writer = await connect(port_of(runner))
            writer.write(raw)
            answer = await read_to_eof(reader, 5)
            _, headers, _ = parse_response(answer)
            assert headers.get("server") == ("filecask" if enabled else None), answer
            assert b"aiohttp" not in answer
            assert b"Python" not in answer
            await close(writer)
