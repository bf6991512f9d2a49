"""send_file_range over real sockets, under uvloop and the stock asyncio loop.

uvloop is the loop that matters (it has no loop.sendfile); the asyncio run keeps the
shared manual path honest on the selector loop too. No mocks: a real aiohttp server
on 127.0.0.1, real clients, real files.

The tests are sync and drive their own ``asyncio.Runner`` because pytest-asyncio 1.x
deprecates overriding ``event_loop_policy`` (a PytestDeprecationWarning, an error
under this project's filterwarnings) and its replacement, the
``pytest_asyncio_loop_factories`` hook, only works from a conftest/plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from yarl import URL

from filecask.http.sendfile import SEND_TIMEOUT, send_file_range, write_within

SIZE = 20 << 20  # far beyond loopback socket buffers, so the EAGAIN path must run
SHORT_SIZE = 1000
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}

Run = Callable[[Coroutine[Any, Any, None]], None]


@dataclass
class HandlerRun:
    """What one server-side request did; the tests inspect it after the fact."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: str = "running"
    peer: Any = None
    headers_size: int = -1
    accounted: int = -1
    body_length: int = -1
    position: int = -1
    prefix: int = 0


FILES = web.AppKey("files", dict[str, Path])
RUNS = web.AppKey("runs", list[HandlerRun])


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Runs a test coroutine on a fresh loop of each kind, and fails on loop errors.

    Stray callback errors and "Task exception was never retrieved" both go through
    the loop's exception handler, so collect them and fail the test on any.
    """
    errors: list[dict[str, Any]] = []
    with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, uvloop.Loop) == (request.param == "uvloop")
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        yield runner.run
        gc.collect()
        runner.run(asyncio.sleep(0))
    assert errors == []


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """Random contents, so any reordering or off-by-one shows up as a mismatch."""
    return {"big": os.urandom(SIZE), "short": os.urandom(SHORT_SIZE)}


@pytest.fixture
def app(files: dict[str, bytes], tmp_path: Path) -> web.Application:
    application = web.Application()
    application[FILES] = {}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        application[FILES][name] = path
    application[RUNS] = []
    application.router.add_get("/{name}", handle)
    return application


async def handle(request: web.Request) -> web.StreamResponse:
    """GET /{name}?offset=&count=[&chunked=1][&claim=N][&prefix=N&sndbuf=N][&send_timeout=S].

    ``claim`` lets a test ask for more than the file holds (a truncated blob).
    ``prefix`` writes that many bytes through response.write() first; with a small
    ``sndbuf`` and a client not reading yet, they are still queued in the transport
    (not the kernel) when send_file_range starts.
    """
    run = HandlerRun(peer=request.transport and request.transport.get_extra_info("peername"))
    request.app[RUNS].append(run)
    path = request.app[FILES][request.match_info["name"]]
    offset = int(request.query.get("offset", 0))
    count = int(request.query.get("claim", path.stat().st_size - offset))
    count = int(request.query.get("count", count))
    prefix = int(request.query.get("prefix", 0))
    if "send_timeout" in request.query:
        request[SEND_TIMEOUT] = float(request.query["send_timeout"])
    if "sndbuf" in request.query and request.transport is not None:
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(request.query["sndbuf"]))
    fd = os.open(path, os.O_RDONLY)
    try:
        response = web.StreamResponse()
        if "chunked" in request.query:
            response.enable_chunked_encoding()
        else:
            response.content_length = prefix + count
        await response.prepare(request)
        run.headers_size = request.writer.output_size
        data = prefix_bytes(prefix)
        for start in range(0, prefix, 32 << 10):  # small writes: aiohttp won't drain each
            await response.write(data[start : start + (32 << 10)])
        run.prefix = prefix
        before = request.writer.output_size
        await send_file_range(request, response, fd, offset, count)
        run.accounted = request.writer.output_size - before
        run.position = os.lseek(fd, 0, os.SEEK_CUR)
        await response.write_eof()
        run.body_length = response.body_length
        run.outcome = "ok"
        return response
    except BaseException as exc:
        run.outcome = type(exc).__name__
        raise
    finally:
        os.close(fd)
        run.done.set()


@contextlib.asynccontextmanager
async def serve(
    app: web.Application,
    *,
    handler_cancellation: bool = False,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[URL]:
    """Runs the app on an ephemeral port; aiohttp's default is no handler cancellation."""
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield URL.build(scheme="https" if tls else "http", host=host, port=port)
    finally:
        await runner.cleanup()


async def raw_get(url: URL, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-rolled HTTP/1.1 client with a tiny receive buffer, i.e. a slow peer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return reader, writer


def prefix_bytes(n: int) -> bytes:
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length in {head!r}")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def new_fds(baseline: set[str], *, settle_to: int = 0) -> set[str]:
    """fds opened since baseline, once teardown on the server side has settled (down to
    ``settle_to`` of them, e.g. a client socket the test still holds)."""
    for _ in range(100):
        extra = open_fds() - baseline
        if len(extra) <= settle_to:
            break
        await asyncio.sleep(0.02)
    return extra


def check_run(run: HandlerRun, count: int) -> None:
    """The writer saw exactly count body bytes and the fd position never moved."""
    assert run.outcome == "ok"
    assert run.accounted == count
    assert run.body_length == run.headers_size + run.prefix + count
    assert run.position == 0


async def slow_read(url: URL, target: str, *, stall: float = 0) -> bytes:
    """The body of GET target, read by a client that keeps the server waiting.

    ``stall`` seconds pass before the first read, so socket buffers fill up and the
    server's writes start queueing in its transport.
    """
    reader, writer = await raw_get(url, target)
    await asyncio.sleep(stall)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    size = content_length(head)
    body = bytearray()
    reads = 0
    while len(body) < size:
        chunk = await reader.read(64 << 10)
        assert chunk, f"connection closed after {len(body)} bytes"
        body += chunk
        reads += 1
        if reads % 16 == 0:  # dawdle now and then so the server keeps hitting EAGAIN
            await asyncio.sleep(0.001)
    writer.close()
    await writer.wait_closed()
    return bytes(body)


def test_full_file_to_slow_reader(run: Run, app: web.Application, files: dict[str, bytes]) -> None:
    async def go() -> None:
        async with serve(app) as url:
            assert await slow_read(url, "/big") == files["big"]

    run(go())
    check_run(app[RUNS][0], SIZE)


def test_buffered_writes_stay_ahead_of_file_bytes(
    run: Run, app: web.Application, files: dict[str, bytes]
) -> None:
    """Bytes still queued in the transport must reach the peer before sendfile's."""
    # 64 KiB in 32 KiB writes never pauses the protocol, so nothing waits for it.
    prefix, offset, count = 64 << 10, 4321, 4 << 20
    target = f"/big?prefix={prefix}&sndbuf=4096&offset={offset}&count={count}"

    async def go() -> None:
        async with serve(app) as url:
            body = await slow_read(url, target, stall=0.3)
            assert body == prefix_bytes(prefix) + files["big"][offset : offset + count]

    run(go())
    check_run(app[RUNS][0], count)


@pytest.mark.parametrize(
    ("offset", "count"),
    [
        (0, 1),
        (SIZE - 1, 1),
        (12345, 1 << 20),  # exactly one sendfile chunk, unaligned
        ((1 << 20) - 7, 3 << 20),  # straddles chunk boundaries
        (SIZE // 2, SIZE // 2),  # through to the end
        (777, SIZE - 778),  # everything but the ends
    ],
)
def test_ranges(
    run: Run, app: web.Application, files: dict[str, bytes], offset: int, count: int
) -> None:
    async def go() -> None:
        params = {"offset": offset, "count": count}
        async with (
            serve(app) as url,
            aiohttp.ClientSession() as session,
            session.get(url / "big", params=params) as resp,
        ):
            assert resp.status == 200
            assert resp.content_length == count
            assert await resp.read() == files["big"][offset : offset + count]

    run(go())
    check_run(app[RUNS][0], count)


def test_keep_alive_reuses_connection(
    run: Run, app: web.Application, files: dict[str, bytes]
) -> None:
    ranges = [(100, 5 << 20), (0, SIZE), (SIZE - 10, 10)]

    async def go() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with serve(app) as url, aiohttp.ClientSession(connector=connector) as session:
            for offset, count in ranges:
                params = {"offset": offset, "count": count}
                async with session.get(url / "big", params=params) as resp:
                    assert resp.status == 200
                    assert await resp.read() == files["big"][offset : offset + count]

    run(go())
    runs = app[RUNS]
    assert len(runs) == len(ranges)
    assert len({r.peer for r in runs}) == 1, "client had to reconnect"
    for r, (_, count) in zip(runs, ranges, strict=True):
        check_run(r, count)


def test_zero_count_sends_nothing(run: Run, app: web.Application) -> None:
    async def go() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with serve(app) as url, aiohttp.ClientSession(connector=connector) as session:
            for _ in range(2):  # and the connection is still usable afterwards
                params = {"offset": 5, "count": 0}
                async with session.get(url / "big", params=params) as resp:
                    assert resp.status == 200
                    assert resp.content_length == 0
                    assert await resp.read() == b""

    run(go())
    assert len({r.peer for r in app[RUNS]}) == 1
    for r in app[RUNS]:
        check_run(r, 0)


def test_chunked_response_uses_copy_path(
    run: Run, app: web.Application, files: dict[str, bytes]
) -> None:
    async def go() -> None:
        params = {"offset": 3, "count": 600_000, "chunked": 1}
        async with (
            serve(app) as url,
            aiohttp.ClientSession() as session,
            session.get(url / "big", params=params) as resp,
        ):
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert await resp.read() == files["big"][3:600_003]

    run(go())
    assert app[RUNS][0].outcome == "ok"
    assert app[RUNS][0].position == 0


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway self-signed certificate for 127.0.0.1: (server, client) contexts."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=cert)


def test_tls_uses_copy_path(
    run: Run,
    app: web.Application,
    files: dict[str, bytes],
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """TLS transports still expose the raw socket; sendfile there would bypass TLS."""
    server_tls, client_tls = tls_pair
    offset, count = 999, 3 << 20

    async def go() -> None:
        params = {"offset": offset, "count": count}
        async with (
            serve(app, tls=server_tls) as url,
            aiohttp.ClientSession() as session,
            session.get(url / "big", params=params, ssl=client_tls) as resp,
        ):
            assert resp.status == 200
            assert await resp.read() == files["big"][offset : offset + count]

    run(go())
    check_run(app[RUNS][0], count)


def test_file_shorter_than_range_breaks_response(run: Run, app: web.Application) -> None:
    async def go() -> None:
        params = {"claim": SHORT_SIZE + 10}
        async with serve(app) as url, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.get(url / "short", params=params) as resp:
                    await resp.read()
            await asyncio.wait_for(app[RUNS][0].done.wait(), 5)

    run(go())
    assert app[RUNS][0].outcome == "EOFError"


def test_count_beyond_content_length_is_refused(run: Run) -> None:
    """Sending past Content-Length would corrupt the next keep-alive response."""
    refused: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 10
        await response.prepare(request)
        try:
            await send_file_range(request, response, 0, 0, 11)
        except ValueError as exc:
            refused.append(str(exc))
        await response.write_eof(b"x" * 10)
        return response

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/", handler)
        async with (
            serve(app) as url,
            aiohttp.ClientSession() as session,
            session.get(url) as resp,
        ):
            assert await resp.read() == b"x" * 10

    run(go())
    assert len(refused) == 1
    assert "exceed" in refused[0]


@pytest.mark.parametrize("handler_cancellation", [False, True], ids=["plain", "cancelling"])
def test_client_disconnect_mid_transfer(
    run: Run, app: web.Application, handler_cancellation: bool
) -> None:
    async def go() -> None:
        async with serve(app, handler_cancellation=handler_cancellation) as url:
            baseline = open_fds()
            reader, writer = await raw_get(url, "/big")
            await reader.readuntil(b"\r\n\r\n")
            received = 0
            while received < 512 << 10:
                received += len(await reader.read(64 << 10))
            await asyncio.sleep(0.05)  # the server is now parked waiting for writability
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(app[RUNS][0].done.wait(), 5)
            assert await new_fds(baseline) == set()

    run(go())
    expected = {"ConnectionResetError"} | ({"CancelledError"} if handler_cancellation else set())
    assert app[RUNS][0].outcome in expected


@pytest.mark.parametrize("path", ["sendfile", "copy"])
def test_client_that_reads_nothing_is_dropped_after_send_timeout(
    run: Run, app: web.Application, path: str
) -> None:
    """A peer that connects, asks and never reads: without a limit the handler would sit
    on the fd and the socket for ever. The copying path (chunked here) goes through
    write_within, the zero-copy one through the sendfile loop's own deadline."""
    target = "/big?send_timeout=0.5" + ("&chunked=1" if path == "copy" else "")
    elapsed: list[float] = []

    async def go() -> None:
        async with serve(app, handler_cancellation=True) as url:
            baseline = open_fds()
            started = asyncio.get_running_loop().time()
            _reader, writer = await raw_get(url, target)
            while not app[RUNS]:
                await asyncio.sleep(0.01)
            await asyncio.wait_for(app[RUNS][0].done.wait(), 5)
            elapsed.append(asyncio.get_running_loop().time() - started)
            # The server's socket (and the dup sendfile wrote to) are closed: only our
            # client's own socket is left of the connection.
            assert len(await new_fds(baseline, settle_to=1)) == 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    run(go())
    assert app[RUNS][0].outcome == "SendTimeout"
    assert 0.4 < elapsed[0] < 2.5


def test_slow_reader_that_keeps_reading_outlives_send_timeout(
    run: Run, app: web.Application, files: dict[str, bytes]
) -> None:
    """The limit is on a stall, not on the transfer: 1 MiB every 0.3 s for 4 MiB takes
    over twice the timeout and completes."""
    count = 4 << 20

    async def go() -> None:
        async with serve(app) as url:
            reader, writer = await raw_get(url, f"/big?count={count}&send_timeout=0.5")
            head = await reader.readuntil(b"\r\n\r\n")
            assert content_length(head) == count
            started = asyncio.get_running_loop().time()
            body = bytearray()
            while len(body) < count:
                await asyncio.sleep(0.3)
                body += await reader.readexactly(min(1 << 20, count - len(body)))
            assert asyncio.get_running_loop().time() - started > 1.0
            assert bytes(body) == files["big"][:count]
            writer.close()
            await writer.wait_closed()

    run(go())
    check_run(app[RUNS][0], count)


async def write_one_piece(request: web.Request) -> web.StreamResponse:
    """One big response.write() through write_within, as archive batches go out."""
    request[SEND_TIMEOUT] = 0.5
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
    response = web.StreamResponse()
    response.content_length = PIECE
    await response.prepare(request)
    await write_within(request, response, prefix_bytes(PIECE))
    await response.write_eof()
    return response


PIECE = 2 << 20


def test_one_big_write_to_a_slow_but_steady_reader_is_not_cut(run: Run) -> None:
    """The send timeout is on progress: a piece that takes the reader three times the
    timeout to take, bit by bit, still goes out whole."""
    application = web.Application()
    application.router.add_get("/piece", write_one_piece)

    async def go() -> None:
        async with serve(application) as url:
            reader, writer = await raw_get(url, "/piece")
            head = await reader.readuntil(b"\r\n\r\n")
            assert content_length(head) == PIECE
            started = asyncio.get_running_loop().time()
            body = bytearray()
            while len(body) < PIECE:
                await asyncio.sleep(0.05)
                piece = await reader.read(48 << 10)
                assert piece, f"cut by the server after {len(body)} bytes"
                body += piece
            assert asyncio.get_running_loop().time() - started > 1.5
            assert bytes(body) == prefix_bytes(PIECE)
            writer.close()
            await writer.wait_closed()

    run(go())
