"""The small-download fast path answers exactly as the download handler would, only for
the requests it may take, in order with the rest, and keeps the connection's rules.

The server is the in-process app behind the protocol `filecask serve` runs (the `client`
fixture); raw sockets send the requests so every byte of the answers can be compared."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_log import AccessLogger as AioAccessLogger
from aiohttp.web_protocol import RequestHandler
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from filecask.app import create_app
from filecask.http.accesslog import AccessLogger
from filecask.http.fastpath import SmallDownloads
from filecask.http.protocol import FilecaskServer
from filecask.settings import Settings, parse_networks
from tests.conftest import ADMIN, AppClient, ServeTestServer
from tests.waiting import until

HOST = "127.0.0.1"
SMALL = b"small file\n" * 300
SMALL_SHA = hashlib.sha256(SMALL).hexdigest()
BIG = b"b" * (300 << 10)  # over the small-body cache's per-blob limit
BIG_SHA = hashlib.sha256(BIG).hexdigest()
HTML = b"<html><script>alert(1)</script></html>"
HTML_SHA = hashlib.sha256(HTML).hexdigest()
SENTINEL = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def plain(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: t", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def server_of(client: AppClient) -> FilecaskServer:
    assert client.server.runner is not None
    server = client.server.runner.server
    assert isinstance(server, FilecaskServer)
    return server


def fast_of(client: AppClient) -> SmallDownloads:
    fast = server_of(client).fast
    assert fast is not None
    return fast


def handlers_of(client: AppClient, writer: asyncio.StreamWriter) -> list[RequestHandler]:
    """The server's handler of the connection `writer` writes to (none once it is gone)."""
    local = writer.get_extra_info("sockname")
    return [h for h in server_of(client).connections if h.peername == local]


def handler_of(client: AppClient, writer: asyncio.StreamWriter) -> RequestHandler:
    (handler,) = handlers_of(client, writer)
    return handler


@asynccontextmanager
async def connection(
    client: AppClient, *, fast: bool = True
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection whose handler has the fast path on or off (it is chosen when the
    connection is accepted)."""
    server = server_of(client)
    kept = server.fast
    if not fast:
        server.fast = None
    try:
        reader, writer = await asyncio.open_connection(HOST, client.port)
        await exchange_ready(client)
    finally:
        server.fast = kept
    try:
        yield reader, writer
    finally:
        writer.close()


async def exchange_ready(client: AppClient) -> None:
    """Let the server accept the connection before its fast path is switched back."""
    for _ in range(100):
        if server_of(client).connections:
            return
        await asyncio.sleep(0.001)


async def exchange(client: AppClient, raw: bytes, *, fast: bool = True) -> bytes:
    """Everything the server sends for `raw` followed by a closing request, Date blanked."""
    async with connection(client, fast=fast) as (reader, writer):
        writer.write(raw + SENTINEL)
        answer = await asyncio.wait_for(reader.read(-1), 10)
    return DATE.sub(b"\r\nDate: -\r\n", answer)


@pytest.fixture
async def stored(client: AppClient) -> AppClient:
    """SMALL, BIG and HTML stored, and SMALL and HTML in the small-body cache."""
    for body in (SMALL, BIG, HTML):
        assert (await client.post("/files", data=body, headers=ADMIN)).status in (200, 201)
    for sha in (SMALL_SHA, HTML_SHA):
        assert (await client.get(f"/files/{sha}")).status == 200
    return client


# -- which requests it takes ---------------------------------------------------------------


async def test_a_plain_get_of_a_cached_blob_is_answered_by_the_fast_path(
    stored: AppClient,
) -> None:
    fast = fast_of(stored)
    before = fast.answered
    answer = await exchange(stored, plain(f"/files/{SMALL_SHA}"))
    assert fast.answered == before + 1
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert SMALL + b"HTTP/1.1 200 OK" in answer  # then the sentinel's answer


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(plain(f"/files/{SMALL_SHA}", method="HEAD"), id="head"),
        pytest.param(plain(f"/files/{SMALL_SHA}?name=a.txt"), id="query"),
        pytest.param(plain(f"/files/{SMALL_SHA}?"), id="empty-query"),
        pytest.param(plain(f"/files/{SMALL_SHA.upper()}"), id="upper-case"),
        pytest.param(plain(f"/files/%{ord(SMALL_SHA[0]):02x}{SMALL_SHA[1:]}"), id="encoded"),
        pytest.param(plain(f"/files/{SMALL_SHA}", "Range: bytes=0-9"), id="range"),
        pytest.param(plain(f"/files/{SMALL_SHA}", f'If-None-Match: "{SMALL_SHA}"'), id="inm"),
        pytest.param(plain(f"/files/{SMALL_SHA}", "Expect: 100-continue"), id="expect"),
        pytest.param(plain(f"/files/{SMALL_SHA}", "Connection: close"), id="close"),
        pytest.param(plain(f"/files/{SMALL_SHA}", version="1.0"), id="http-1.0"),
        pytest.param(
            plain(f"/files/{SMALL_SHA}", "Connection: keep-alive", version="1.0"),
            id="http-1.0-keep-alive",
        ),
        pytest.param(
            plain(f"/files/{SMALL_SHA}", "Content-Length: 3")[:-2] + b"\r\nabc", id="body"
        ),
        pytest.param(plain(f"/files/{BIG_SHA}"), id="not-small"),
        pytest.param(plain(f"/files/{'0' * 64}"), id="unknown"),
        pytest.param(plain(f"/files//{SMALL_SHA[1:]}"), id="malformed"),
    ],
)
async def test_everything_else_goes_the_usual_way(stored: AppClient, raw: bytes) -> None:
    fast = fast_of(stored)
    before = fast.answered
    await exchange(stored, raw)
    assert fast.answered == before


async def test_a_blob_deleted_is_a_404_at_once(stored: AppClient) -> None:
    """The cache's stamps make a deleted blob a miss: the request reaches the handler."""
    assert (await stored.delete(f"/files/{SMALL_SHA}", headers=ADMIN)).status == 204
    answer = await exchange(stored, plain(f"/files/{SMALL_SHA}"))
    assert answer.startswith(b"HTTP/1.1 404 ")


async def test_no_fast_path_without_the_file_api(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    off = settings.replace(file_api=False)
    client = await aiohttp_client(ServeTestServer(create_app(off), off))
    assert server_of(client).fast is None


# -- what it sends -------------------------------------------------------------------------

REQUEST_HEADERS = [
    "Range: bytes=0-9",
    f'If-None-Match: "{SMALL_SHA}"',
    'If-None-Match: "other"',
    "If-Range: x",
    "Connection: close",
    "Connection: keep-alive",
    "Expect: 100-continue",
    "Accept-Encoding: gzip",
    "User-Agent: curl/8",
    "X-Forwarded-For: 10.1.2.3",
    f"Authorization: {ADMIN['Authorization']}",
    "Content-Length: 0",
]
TARGETS = [
    f"/files/{SMALL_SHA}",
    f"/files/{HTML_SHA}",
    f"/files/{BIG_SHA}",
    f"/files/{SMALL_SHA}?name=x.txt",
    f"/files/{SMALL_SHA.upper()}",
    f"/files/{'f' * 64}",
    "/healthz",
]


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    target=st.sampled_from(TARGETS),
    method=st.sampled_from(["GET", "GET", "HEAD"]),
    version=st.sampled_from(["1.1", "1.1", "1.0"]),
    headers=st.lists(st.sampled_from(REQUEST_HEADERS), max_size=3, unique=True),
    repeat=st.integers(1, 3),
)
@example(target=TARGETS[0], method="GET", version="1.1", headers=[], repeat=2)
@example(target=TARGETS[0], method="GET", version="1.0", headers=[REQUEST_HEADERS[5]], repeat=2)
@example(target=TARGETS[1], method="GET", version="1.1", headers=[REQUEST_HEADERS[8]], repeat=1)
@example(target=TARGETS[0], method="GET", version="1.1", headers=[REQUEST_HEADERS[0]], repeat=1)
@example(target=TARGETS[0], method="GET", version="1.1", headers=[REQUEST_HEADERS[1]], repeat=1)
@example(target=TARGETS[0], method="GET", version="1.1", headers=[REQUEST_HEADERS[2]], repeat=1)
@example(target=TARGETS[0], method="GET", version="1.1", headers=[REQUEST_HEADERS[6]], repeat=1)
@example(target=TARGETS[0], method="GET", version="1.1", headers=[REQUEST_HEADERS[4]], repeat=2)
async def test_its_answers_are_the_handlers_to_the_byte(
    stored: AppClient,
    target: str,
    method: str,
    version: str,
    headers: list[str],
    repeat: int,
) -> None:
    """Any request, pipelined a few times and followed by another: the bytes that come
    back are the same whether the connection has the fast path or not (Date aside), and
    the fast path took exactly the requests it is meant to."""
    raw = plain(target, *headers, method=method, version=version) * repeat
    fast = fast_of(stored)
    before = fast.answered
    with_fast = await exchange(stored, raw)
    taken = fast.answered - before
    assert with_fast == await exchange(stored, raw, fast=False)
    skipped = ("Range:", "If-None-Match:", "Expect:", "Connection: close")
    plain_get = (
        method == "GET"
        and version == "1.1"
        and target in (f"/files/{SMALL_SHA}", f"/files/{HTML_SHA}")
        and not any(h.startswith(skipped) for h in headers)
    )
    assert taken == (repeat if plain_get else 0)


async def test_pipelined_requests_are_answered_in_order(stored: AppClient) -> None:
    """Fast, slow, fast, slow in one write: four answers in the order asked."""
    raw = b"".join(
        [
            plain(f"/files/{SMALL_SHA}"),
            plain(f"/files/{BIG_SHA}"),
            plain(f"/files/{HTML_SHA}"),
            plain(f"/files/{SMALL_SHA}?name=a.txt"),
        ]
    )
    fast = fast_of(stored)
    before = fast.answered
    answer = await exchange(stored, raw)
    bodies = [SMALL, BIG, HTML, SMALL]
    positions = [answer.index(b) for b in bodies[:1]]
    for body in bodies[1:]:
        positions.append(answer.index(body, positions[-1] + 1))
    assert positions == sorted(positions)
    assert answer.count(b"HTTP/1.1 200 OK") == 5
    assert b'filename="a.txt"' in answer
    assert fast.answered - before == 1  # the third waited behind the second: order first


async def test_a_request_split_across_packets_is_still_answered(stored: AppClient) -> None:
    before = fast_of(stored).answered
    async with connection(stored) as (reader, writer):
        raw = plain(f"/files/{SMALL_SHA}")
        for piece in (raw[:5], raw[5:40], raw[40:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert await reader.readexactly(len(SMALL)) == SMALL
        assert fast_of(stored).answered == before + 1


# -- the connection's rules ----------------------------------------------------------------


async def test_keepalive_timeout_still_closes_an_idle_connection(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    short = settings.replace(keepalive_timeout=0.3)
    client = await aiohttp_client(ServeTestServer(create_app(short), short))
    await client.post("/files", data=SMALL, headers=ADMIN)
    await client.get(f"/files/{SMALL_SHA}")
    async with connection(client) as (reader, writer):
        before = fast_of(client).answered
        writer.write(plain(f"/files/{SMALL_SHA}"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await reader.readexactly(len(SMALL))
        assert fast_of(client).answered == before + 1
        assert await asyncio.wait_for(reader.read(1), 3) == b""  # closed by the server


async def test_header_timeout_still_applies_after_a_fast_answer(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    short = settings.replace(header_timeout=0.3, keepalive_timeout=30)
    client = await aiohttp_client(ServeTestServer(create_app(short), short))
    await client.post("/files", data=SMALL, headers=ADMIN)
    await client.get(f"/files/{SMALL_SHA}")
    before = fast_of(client).answered
    async with connection(client) as (reader, writer):
        writer.write(plain(f"/files/{SMALL_SHA}"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await reader.readexactly(len(SMALL))
        await asyncio.sleep(0.5)  # idle: the keep-alive timeout governs, not the header one
        writer.write(plain(f"/files/{SMALL_SHA}"))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200 OK"
        )
        await reader.readexactly(len(SMALL))
        assert fast_of(client).answered == before + 2
        writer.write(b"GET /files/")  # a head that never ends
        rest = await asyncio.wait_for(reader.read(-1), 5)
    assert rest.startswith(b"HTTP/1.1 408 ")


async def test_a_client_that_reads_nothing_gets_no_unbounded_buffer(stored: AppClient) -> None:
    """Thousands of pipelined requests from a client that reads nothing, in batches small
    enough for the fast path (aiohttp hands over at most 32 heads at a time): it stops when
    the transport pushes back (the request loop then waits for the client), and every
    answer still arrives, in order, once the client reads."""
    batches, batch = 200, 10
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, stored.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    fast = fast_of(stored)
    before = fast.answered
    try:
        for _ in range(batches):
            writer.write(plain(f"/files/{SMALL_SHA}") * batch)
            await asyncio.sleep(0.01)  # one batch per read: no 32-head hand-over
        await asyncio.sleep(0.5)
        # What the kernel's socket buffers take is the kernel's; what waits in the
        # process is bounded by the transport's high-water mark (64 KiB), plus a batch.
        handler = handler_of(stored, writer)
        assert handler.transport is not None
        waiting = handler.transport.get_write_buffer_size()
        assert waiting <= (64 << 10) + batch * (len(SMALL) + 512), waiting
        assert 0 < fast.answered - before < batches * batch
        for _ in range(batches * batch):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert await reader.readexactly(len(SMALL)) == SMALL
    finally:
        writer.close()


# -- how it is counted ---------------------------------------------------------------------


async def test_metrics_count_fast_answers(stored: AppClient) -> None:
    def downloads(text: str) -> float:
        labels = r'method="GET",route="/files/\{hash\}",status="200"'
        pattern = r"filecask_http_requests_total\{" + labels + r"\} (\S+)"
        match = re.search(pattern, text)
        return float(match.group(1)) if match else 0.0

    before = downloads(await (await stored.get("/metrics", headers=ADMIN)).text())
    fast = fast_of(stored)
    answered = fast.answered
    await exchange(stored, plain(f"/files/{SMALL_SHA}") * 5)
    assert fast.answered == answered + 5
    after = downloads(await (await stored.get("/metrics", headers=ADMIN)).text())
    assert after - before == 5


async def test_access_log_lines_are_the_handlers(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]],
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trusted = settings.replace(trusted_proxies=parse_networks("127.0.0.1/32"))
    server = ServeTestServer(create_app(trusted), trusted)
    await server.start_server(
        access_log_class=AccessLogger, access_log=logging.getLogger("filecask.access")
    )
    client = await aiohttp_client(server)
    await client.post("/files", data=SMALL, headers=ADMIN)
    await client.get(f"/files/{SMALL_SHA}")
    raw = plain(f"/files/{SMALL_SHA}", "User-Agent: probe/1", "X-Forwarded-For: 10.9.8.7")
    lines: dict[bool, list[str]] = {}
    before = fast_of(client).answered
    for fast in (True, False):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="filecask.access"):
            await exchange(client, raw, fast=fast)
        records = [r for r in caplog.records if r.name == "filecask.access"]
        # the duration differs; everything else must not
        lines[fast] = [re.sub(r" \d+\.\d{4} ", " - ", r.getMessage()) for r in records]
    assert fast_of(client).answered == before + 1
    assert lines[True] == lines[False]
    assert lines[True][0].startswith(f'10.9.8.7 - "GET /files/{SMALL_SHA} HTTP/1.1" 200 ')
    assert lines[True][0].endswith('"probe/1"')


# -- a fast answer bigger than the transport takes at once ---------------------------------

MID = os.urandom(200 << 10)  # under the small-body cache's limit, over the write buffer's
MID_SHA = hashlib.sha256(MID).hexdigest()


@asynccontextmanager
async def squeezed(
    client: AppClient, rcvbuf: int = 4096
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection whose socket buffers are small and whose reader stops taking bytes
    from the socket past 16 KiB unread, so a 200 KiB answer leaves the server only as
    fast as the test reads it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, client.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
    for _ in range(100):
        if handlers_of(client, writer):
            break
        await asyncio.sleep(0.005)
    handler = handler_of(client, writer)
    assert handler.transport is not None
    server_socket = handler.transport.get_extra_info("socket")
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader, body: bytes, pace: float = 0.0) -> None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    received = b""
    while len(received) < len(body):
        received += await asyncio.wait_for(reader.read(min(16384, len(body) - len(received))), 10)
        if pace:
            await asyncio.sleep(pace)
    assert received == body


async def mid_server(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> AppClient:
    client = await aiohttp_client(ServeTestServer(create_app(settings), settings))
    assert (await client.post("/files", data=MID, headers=ADMIN)).status == 201
    assert (await client.get(f"/files/{MID_SHA}")).status == 200  # now cached
    return client


async def test_a_request_behind_an_unsent_fast_answer_waits_for_the_client(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    """Two pipelined requests for 200 KiB: the first fills the transport, so the second
    is left to the request loop, which waits for the client to read (backpressure)."""
    client = await mid_server(aiohttp_client, settings)
    fast = fast_of(client)
    before = fast.answered
    async with squeezed(client) as (reader, writer):
        writer.write(plain(f"/files/{MID_SHA}") * 2)
        await until(lambda: fast.answered > before, "the first answer went the fast way")
        await asyncio.sleep(0.3)  # and the second does not follow it
        assert fast.answered == before + 1
        await read_answer(reader, MID)
        await read_answer(reader, MID)


async def test_a_slow_reader_keeps_its_connection_past_the_keepalive_timeout(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    """The keep-alive timeout counts idle time, not time spent sending an answer: a client
    that takes longer than it to read a fast answer still gets the next one."""
    client = await mid_server(aiohttp_client, settings.replace(keepalive_timeout=0.3))
    fast = fast_of(client)
    before = fast.answered
    async with squeezed(client) as (reader, writer):
        writer.write(plain(f"/files/{MID_SHA}"))
        await read_answer(reader, MID, pace=0.05)  # about a second
        writer.write(plain(f"/files/{MID_SHA}"))
        await read_answer(reader, MID)
    assert fast.answered == before + 2


async def test_a_client_that_stops_reading_a_fast_answer_is_dropped_by_the_send_timeout(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    client = await mid_server(
        aiohttp_client, settings.replace(keepalive_timeout=0.2, send_timeout=2)
    )
    fast = fast_of(client)
    before = fast.answered
    async with squeezed(client) as (_reader, writer):
        writer.write(plain(f"/files/{MID_SHA}"))
        await until(lambda: fast.answered == before + 1, "the answer went the fast way")
        assert len(server_of(client).connections) >= 1
        for _ in range(60):
            await asyncio.sleep(0.1)
            if not handlers_of(client, writer):
                break
        else:
            pytest.fail("the connection of a client that reads nothing was never dropped")


async def test_a_half_closed_client_gets_its_answer(stored: AppClient) -> None:
    """A request followed by shutdown(SHUT_WR), as `nc -N` sends it, is answered (nginx
    does the same; aiohttp's request loop would close without an answer)."""
    before = fast_of(stored).answered
    reader, writer = await asyncio.open_connection(HOST, stored.port)
    try:
        writer.write(plain(f"/files/{SMALL_SHA}"))
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(SMALL)
    assert fast_of(stored).answered == before + 1


async def test_a_failure_while_counting_loses_no_answer(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]],
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The answer is out before it is counted and logged: an access-log handler that
    raises costs a log line, not the answer or the connection."""

    def explode(record: logging.LogRecord) -> bool:
        raise RuntimeError("broken log filter")

    server = ServeTestServer(create_app(settings), settings)
    access = logging.getLogger("filecask.access")
    await server.start_server(access_log_class=AccessLogger, access_log=access)
    client = await aiohttp_client(server)
    await client.post("/files", data=SMALL, headers=ADMIN)
    await client.get(f"/files/{SMALL_SHA}")
    before = fast_of(client).answered
    access.addFilter(explode)
    try:
        with caplog.at_level(logging.INFO, logger="filecask.access"):
            answer = await exchange(client, plain(f"/files/{SMALL_SHA}") * 2)
    finally:
        access.removeFilter(explode)
    assert fast_of(client).answered == before + 2
    assert answer.count(SMALL) == 2
    assert answer.count(b"HTTP/1.1 200 OK") == 3  # and the closing request's, after them
    assert any("counting a small download" in r.getMessage() for r in caplog.records)


async def test_no_fast_path_when_another_access_log_is_configured(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    """aiohttp's own access logger (its default) would miss the fast path's answers."""
    server = ServeTestServer(create_app(settings), settings)
    await server.start_server(
        access_log_class=AioAccessLogger, access_log=logging.getLogger("aiohttp.access")
    )
    client = await aiohttp_client(server)
    assert server_of(client).fast is None


async def test_a_connection_goes_idle_once_a_big_fast_answer_is_out(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    """Its keep-alive timer starts when the answer is sent, so an idle client is closed."""
    client = await mid_server(aiohttp_client, settings.replace(keepalive_timeout=0.3))
    before = fast_of(client).answered
    async with squeezed(client) as (reader, writer):
        writer.write(plain(f"/files/{MID_SHA}"))
        await read_answer(reader, MID, pace=0.05)
        assert fast_of(client).answered == before + 1
        assert await asyncio.wait_for(reader.read(1), 3) == b""


async def test_a_head_begun_while_a_fast_answer_is_sent_is_under_the_header_timeout(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    """Part of the next head arrives while the answer is still going out: when it is out,
    the header timeout governs (a 408), not the keep-alive one (a silent close)."""
    limits = settings.replace(keepalive_timeout=0.3, header_timeout=1.5)
    client = await mid_server(aiohttp_client, limits)
    async with squeezed(client) as (reader, writer):
        writer.write(plain(f"/files/{MID_SHA}"))
        await asyncio.sleep(0.1)
        writer.write(b"GET /fi")
        await read_answer(reader, MID, pace=0.02)
        rest = await asyncio.wait_for(reader.read(-1), 5)
    assert rest.startswith(b"HTTP/1.1 408 ")


async def test_graceful_shutdown_lets_a_fast_answer_finish(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    """As for a request in progress: shutdown waits (within its timeout) until the answer
    is out, rather than closing with it half sent."""
    client = await mid_server(aiohttp_client, settings)
    server = server_of(client)
    async with squeezed(client) as (reader, writer):
        writer.write(plain(f"/files/{MID_SHA}"))
        handler = handler_of(client, writer)
        transport = handler.transport
        assert transport is not None
        await until(lambda: transport.get_write_buffer_size() > 0, "the answer is going out")
        server.pre_shutdown()  # as the runner's cleanup does, then shutdown
        shutdown = asyncio.create_task(server.shutdown(10))
        unsent_when_done: list[int] = []
        shutdown.add_done_callback(
            lambda _: unsent_when_done.append(transport.get_write_buffer_size())
        )
        await read_answer(reader, MID, pace=0.02)
        await asyncio.wait_for(shutdown, 10)
    assert unsent_when_done == [0]


async def test_a_client_reading_nothing_is_dropped_after_a_shutdown_gives_up(
    aiohttp_client: Callable[[TestServer], Awaitable[AppClient]], settings: Settings
) -> None:
    """The send timeout still aborts the connection after shutdown's close forgot it."""
    client = await mid_server(aiohttp_client, settings.replace(send_timeout=0.6))
    server = server_of(client)
    async with squeezed(client) as (_reader, writer):
        writer.write(plain(f"/files/{MID_SHA}"))
        handler = handler_of(client, writer)
        transport = handler.transport
        assert transport is not None
        await until(lambda: transport.get_write_buffer_size() > 0, "the answer is going out")
        server.pre_shutdown()
        await server.shutdown(0.2)
        assert handler.transport is None  # forgotten by the close
        for _ in range(50):  # only an abort empties it: the client reads nothing
            if not transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("a client that reads nothing kept its buffer after shutdown")
