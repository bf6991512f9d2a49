"""The assumptions `filecask.http.aiohttp_internals` makes about aiohttp, one test each.

A failure here after an aiohttp upgrade names the assumption that no longer holds: the
adapter (and only it) is what has to change. The self-check's own failures (an attribute
gone, an untested version) are tested at the end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from click.testing import CliRunner
from multidict import CIMultiDict

from filecask.app import create_app
from filecask.cli import main
from filecask.http import aiohttp_internals as internals
from filecask.http.libcheck import ALLOW_UNTESTED_ENV, UnsupportedLibrary
from filecask.settings import Settings

HeaderHook = Callable[[CIMultiDict[str]], Awaitable[None]]
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


class Server(web.Server):
    """aiohttp's server, whose connections are the adapter's `ProtocolInternals`."""

    def __init__(self, handler: Any = ok, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.protocols: list[internals.ProtocolInternals] = []

    def __call__(self) -> RequestHandler:
        protocol = internals.ProtocolInternals(
            self, loop=internals.server_loop(self), **internals.server_options(self)
        )
        self.protocols.append(protocol)
        return protocol


@dataclass
class Connection:
    server: Server
    protocol: internals.ProtocolInternals
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[RawRequestMessage] = field(default_factory=list)
    header_hooks: list[HeaderHook] = field(default_factory=list)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (no timer involved)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


@pytest.fixture
async def connection() -> AsyncIterator[Connection]:
    requests: list[RawRequestMessage] = []
    hooks: list[HeaderHook] = []
    server = Server(keepalive_timeout=30)
    make = server.request_factory

    def factory(
        message: RawRequestMessage, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        requests.append(message)
        for hook in hooks:
            internals.on_headers_sent(writer, hook)
        return make(message, payload, protocol, writer, task)

    server.request_factory = factory
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await until(lambda: bool(server.protocols) and server.protocols[0].request_loop_waiting())
    yield Connection(server, server.protocols[0], reader, writer, requests, hooks)
    writer.close()
    await server.shutdown(0)
    listener.close()
    await listener.wait_closed()


async def status_line(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0]


# -- the self-check finds everything ---------------------------------------------------------


@pytest.mark.parametrize("name", list(internals._attributes()))
def test_aiohttp_has(name: str) -> None:
    owner, attribute = internals._attributes()[name]
    assert hasattr(owner, attribute)


def test_the_installed_aiohttp_passes_the_self_check() -> None:
    assert internals.missing() == []
    internals.check()


# -- the request loop and the queue of parsed heads -----------------------------------------


async def test_request_loop_waits_on_its_waiter_when_the_queue_is_empty(
    connection: Connection,
) -> None:
    assert connection.protocol.request_loop_waiting()
    assert not connection.protocol.request_queue


async def test_data_received_queues_each_parsed_head_and_counts_it(
    connection: Connection,
) -> None:
    protocol = connection.protocol
    waiter = protocol.hold_idle_request_loop()
    assert waiter is not None
    try:
        protocol.data_received(REQUEST + REQUEST)
        assert [m.path for m, _ in protocol.request_queue] == ["/", "/"]  # type: ignore[union-attr]
        assert protocol.requests_parsed == 2
        assert not waiter.done()  # held: parsing did not wake it
    finally:
        protocol.release_request_loop(waiter)


async def test_data_received_wakes_the_waiting_request_loop(connection: Connection) -> None:
    connection.protocol.data_received(REQUEST)
    assert await status_line(connection.reader) == b"HTTP/1.1 200 OK"


async def test_a_held_request_loop_answers_once_woken(connection: Connection) -> None:
    protocol = connection.protocol
    waiter = protocol.hold_idle_request_loop()
    assert waiter is not None
    protocol.data_received(REQUEST)
    protocol.release_request_loop(waiter)
    protocol.wake_request_loop()
    assert await status_line(connection.reader) == b"HTTP/1.1 200 OK"


async def test_a_busy_request_loop_is_not_held(connection: Connection) -> None:
    protocol = connection.protocol
    waiter = protocol.hold_idle_request_loop()
    assert waiter is not None
    protocol.data_received(REQUEST)
    protocol.release_request_loop(waiter)
    assert protocol.hold_idle_request_loop() is None  # a head is queued
    protocol.wake_request_loop()
    await status_line(connection.reader)


async def test_a_parse_error_is_queued_as_errinfo_and_answered_on_the_error_request(
    connection: Connection,
) -> None:
    protocol = connection.protocol
    waiter = protocol.hold_idle_request_loop()
    assert waiter is not None
    protocol.data_received(b"\x00garbage\r\n\r\n")
    message, _ = protocol.request_queue[0]
    assert internals.is_parse_error(message)
    protocol.release_request_loop(waiter)
    protocol.wake_request_loop()
    assert await status_line(connection.reader) == b"HTTP/1.0 400 Bad Request"
    assert internals.is_error_request(connection.requests[0])


async def test_a_queued_error_is_answered_by_handle_error_with_its_status(
    connection: Connection,
) -> None:
    connection.protocol.queue_parse_error(431, ValueError("too big"), "too big")
    assert await status_line(connection.reader) == b"HTTP/1.0 431 Request Header Fields Too Large"


def test_the_error_request_in_http_11_is_the_stand_in_but_for_the_version() -> None:
    stand_in = internals.ERROR_REQUEST_11
    assert stand_in.version == (1, 1)
    assert not stand_in.should_close
    assert stand_in.method == aiohttp.web_protocol.ERROR.method


async def test_take_answered_head_counts_it_as_the_request_loop_would(
    connection: Connection,
) -> None:
    protocol = connection.protocol
    waiter = protocol.hold_idle_request_loop()
    assert waiter is not None
    protocol.data_received(REQUEST)
    protocol.take_answered_head()
    protocol.release_request_loop(waiter)
    assert not protocol.request_queue
    assert connection.server.requests_count == 1
    protocol.data_received(REQUEST)  # the parser takes the next head
    assert await status_line(connection.reader) == b"HTTP/1.1 200 OK"


async def test_parsing_heads_stops_once_the_connection_is_force_closed(
    connection: Connection,
) -> None:
    protocol = connection.protocol
    assert protocol.parsing_heads
    assert not protocol.force_closing
    protocol.force_close()
    assert not protocol.parsing_heads
    assert protocol.force_closing


async def test_drop_parser_leaves_no_parser_for_the_connection(connection: Connection) -> None:
    protocol = connection.protocol
    protocol.force_close()  # data_received must not run without a parser
    protocol.drop_parser()
    protocol.data_received(REQUEST)
    assert not protocol.request_queue


async def test_queue_full_pauses_reading_until_the_loop_takes_heads(
    connection: Connection,
) -> None:
    protocol = connection.protocol
    waiter = protocol.hold_idle_request_loop()
    assert waiter is not None
    try:
        for _ in range(200):
            protocol.data_received(REQUEST)
            if protocol.queue_full:
                break
        assert protocol.queue_full
    finally:
        protocol.release_request_loop(waiter)
    protocol.wake_request_loop()
    await until(lambda: not protocol.queue_full)


# -- keep-alive -----------------------------------------------------------------------------


async def test_start_keepalive_closes_the_idle_connection_after_the_timeout() -> None:
    server = Server(keepalive_timeout=0.01)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listener.sockets[0].getsockname()[1]
        )
        await until(lambda: bool(server.protocols) and server.protocols[0].request_loop_waiting())
        server.protocols[0].cancel_keepalive()
        server.protocols[0].start_keepalive()
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the server
        writer.close()
    finally:
        listener.close()
        await listener.wait_closed()


async def test_drain_writes_returns_at_once_when_writing_is_not_paused(
    connection: Connection,
) -> None:
    assert not connection.protocol.writing_paused
    async with asyncio.timeout(5):
        await connection.protocol.drain_writes()


# -- the server, the runner, the writer, the body stream -----------------------------------


async def test_server_options_are_what_each_handler_is_given() -> None:
    server = web.Server(ok, keepalive_timeout=7, max_line_size=100)
    assert internals.server_options(server) == {"keepalive_timeout": 7, "max_line_size": 100}
    assert internals.server_loop(server) is asyncio.get_running_loop()


async def test_rebuild_server_gets_the_server_aiohttp_built_after_the_startup() -> None:
    started: list[bool] = []
    app = web.Application()

    async def startup(app: web.Application) -> None:
        started.append(True)

    app.on_startup.append(startup)

    class Runner(internals.ServerRebuildingRunner):
        __slots__ = ()

        def rebuild_server(self, standard: web.Server) -> web.Server:
            assert started
            return Server(standard.request_handler, **internals.server_options(standard))

    runner = Runner(app, keepalive_timeout=3)
    await runner.setup()
    try:
        assert isinstance(runner.server, Server)
        assert internals.server_options(runner.server)["keepalive_timeout"] == 3
    finally:
        await runner.cleanup()


async def test_on_headers_sent_may_rewrite_each_response_head(connection: Connection) -> None:
    async def rename(headers: CIMultiDict[str]) -> None:
        headers["Server"] = "test"

    connection.header_hooks.append(rename)
    connection.writer.write(REQUEST)
    head = await connection.reader.readuntil(b"\r\n\r\n")
    assert b"\r\nServer: test\r\n" in head


async def test_buffered_bytes_counts_what_a_body_holds_unread() -> None:
    stream = StreamReader(
        BaseProtocol(asyncio.get_running_loop()), 2**16, loop=asyncio.get_running_loop()
    )
    assert internals.buffered_bytes(stream) == 0
    stream.feed_data(b"12345")
    assert internals.buffered_bytes(stream) == 5
    await stream.read(5)
    assert internals.buffered_bytes(stream) == 0


def test_buffered_bytes_of_no_body_is_zero() -> None:
    from aiohttp.streams import EMPTY_PAYLOAD

    assert internals.buffered_bytes(EMPTY_PAYLOAD) == 0


# -- the self-check fails clearly -----------------------------------------------------------


def test_check_names_a_missing_handler_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RequestHandler, "_waiter")
    with pytest.raises(UnsupportedLibrary, match=r"^aiohttp \S+ lacks .*RequestHandler\._waiter"):
        internals.check()


def test_check_names_a_missing_module_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(aiohttp.web_protocol, "_ErrInfo")
    with pytest.raises(UnsupportedLibrary, match=r"web_protocol\._ErrInfo"):
        internals.check()


def test_check_names_a_missing_server_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    original = web.Server.__init__

    def init(self: web.Server, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._kwargs

    monkeypatch.setattr(web.Server, "__init__", init)
    with pytest.raises(UnsupportedLibrary, match=r"Server\._kwargs"):
        internals.check()


def test_check_refuses_an_untested_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(aiohttp, "__version__", "3.15.0")
    with pytest.raises(UnsupportedLibrary) as caught:
        internals.check()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("aiohttp 3.15.0 is installed, but filecask was tested with")
    assert f"aiohttp>={internals.TESTED_LOWEST},<{internals.TESTED_BELOW}" in message


def test_check_lets_an_untested_version_through_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    monkeypatch.setattr(aiohttp, "__version__", "3.15.0")
    internals.check()


def test_create_app_runs_the_check(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.delattr(RequestHandler, "_messages")
    with pytest.raises(UnsupportedLibrary, match=r"RequestHandler\._messages"):
        create_app(settings)


def test_serve_stops_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(aiohttp, "__version__", "4.0.0")
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: aiohttp 4.0.0 is installed, but filecask")
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("name", ["_ErrInfo", "ERROR"])
def test_serve_stops_with_one_line_when_a_name_the_adapter_imports_is_gone(
    name: str, tmp_path: Path
) -> None:
    """An aiohttp without a name this adapter imports (not only looks up) fails the import
    itself: `filecask serve` still stops with the self-check's one line, no traceback."""
    program = (
        "import sys, aiohttp.web_protocol\n"
        f"del aiohttp.web_protocol.{name}\n"
        "from filecask.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, "serve", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"Error: aiohttp {aiohttp.__version__} lacks"), result.stderr
    assert f"web_protocol.{name}" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "False", ""])
def test_check_refuses_an_untested_version_when_told_no(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """`FILECASK_ALLOW_UNTESTED_LIBRARIES=false` means no, as `false` does for every
    boolean setting."""
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, value)
    monkeypatch.setattr(aiohttp, "__version__", "3.15.0")
    with pytest.raises(UnsupportedLibrary, match=r"^aiohttp 3\.15\.0 is installed"):
        internals.check()


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", " TRUE "])
def test_check_lets_an_untested_version_through_for_any_yes(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, value)
    monkeypatch.setattr(aiohttp, "__version__", "3.15.0")
    internals.check()
