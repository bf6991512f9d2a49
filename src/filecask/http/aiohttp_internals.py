"""Every use filecask makes of aiohttp's internals, in one place, checked at start-up.

aiohttp has no public hook for what `filecask.http.protocol` does (the header timeout,
the head limit, the small-download fast path, problem+json protocol errors), so the
protocol builds on `RequestHandler`'s private state: its queue of parsed request heads,
the future its request loop waits on, its keep-alive timer and parser; and on how the
request loop uses them (it waits on `_waiter` when the queue is empty; `data_received`
queues each parsed head, or an `_ErrInfo` for a parse error, and wakes the waiter; the
loop answers an `_ErrInfo` with `handle_error` on a request built from `ERROR`). The
runner's server is rebuilt (`AppRunner._make_server`) from the options aiohttp kept
(`Server._kwargs`), and the `Server` header is rewritten through the writer's
`_on_headers_sent` hook.

Nothing outside this module touches those names: the protocol subclasses
`ProtocolInternals` and calls the named properties and methods below. `check()` looks
for each attribute (on the class, or on an instance built for the check) and for a
tested version (TESTED_LOWEST <= aiohttp < TESTED_BELOW), and raises
`UnsupportedLibrary` with one line otherwise; `filecask serve`, `create_app` and
`make_runner` call it. tests/http/test_aiohttp_internals.py states each assumption as
a test of its own.

Upgrading aiohttp: run `scripts/canary` (the tests against the newest release); if they
pass, raise TESTED_BELOW here and the bound in pyproject.toml together.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.http import HttpRequestParser, HttpVersion11, RawRequestMessage, StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict

from filecask.http.libcheck import UnsupportedLibrary, check_version, missing_message

try:
    from aiohttp.web_protocol import ERROR, RequestHandler, _ErrInfo
except ImportError:  # the check's one line rather than a traceback on import
    _IMPORTED = ("ERROR", "RequestHandler", "_ErrInfo")
    _GONE = [f"web_protocol.{n}" for n in _IMPORTED if not hasattr(aiohttp.web_protocol, n)]
    raise UnsupportedLibrary(missing_message("aiohttp", aiohttp.__version__, _GONE)) from None

__all__ = [
    "ERROR_REQUEST_11",
    "TESTED_BELOW",
    "TESTED_LOWEST",
    "ProtocolInternals",
    "ServerRebuildingRunner",
    "buffered_bytes",
    "check",
    "is_error_request",
    "is_parse_error",
    "missing",
    "on_headers_sent",
    "server_loop",
    "server_options",
]

TESTED_LOWEST = "3.14.5"
TESTED_BELOW = "3.15"
"""The aiohttp versions this adapter was tested with: TESTED_LOWEST <= version < TESTED_BELOW
(pyproject.toml has the same bounds)."""

HeadQueue = deque[tuple[RawRequestMessage | _ErrInfo, StreamReader]]

ERROR_REQUEST_11 = ERROR._replace(version=HttpVersion11, should_close=False)
"""aiohttp's stand-in request for a protocol error (`ERROR`), answered in HTTP/1.1."""

HANDLER_PRIVATE = (
    "_messages",
    "_waiter",
    "_request_count",
    "_force_close",
    "_close",
    "_payload_parser",
    "_keepalive",
    "_keepalive_handle",
    "_keepalive_timeout",
    "_next_keepalive_close_time",
    "_process_keepalive",
    "_manager",
    "_loop",
    "_parser",
    "_paused",
    "_buffer_paused",
    "_upgraded",
    "_drain_helper",
)
"""RequestHandler's private attributes and methods used here."""
HANDLER_HOOKS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "pause_writing",
    "resume_writing",
    "resume_reading",
    "finish_response",
    "handle_error",
    "log_exception",
    "log_debug",
    "force_close",
    "shutdown",
    "writing_paused",
    "peername",
    "max_line_size",
    "max_field_size",
    "logger",
)
"""Its public methods and attributes the protocol overrides or calls: an override of a
method aiohttp no longer calls would silently do nothing."""


def _attributes() -> dict[str, tuple[object, str]]:
    """What this adapter needs, by name (`Class.attribute`): the object to look on and
    the attribute. Instance attributes of classes without slots are looked for on an
    instance built here (it does no I/O)."""
    needs: dict[str, tuple[object, str]] = {}
    for name in (*HANDLER_PRIVATE, *HANDLER_HOOKS):
        needs[f"RequestHandler.{name}"] = (RequestHandler, name)
    needs["web_protocol._ErrInfo"] = (aiohttp.web_protocol, "_ErrInfo")
    needs["web_protocol.ERROR"] = (aiohttp.web_protocol, "ERROR")
    needs["HttpRequestParser.message_consumed"] = (HttpRequestParser, "message_consumed")
    needs["StreamReader._size"] = (StreamReader, "_size")
    needs["StreamReader.total_raw_bytes"] = (StreamReader, "total_raw_bytes")
    needs["AppRunner._make_server"] = (web.AppRunner, "_make_server")
    loop = cast(asyncio.AbstractEventLoop, object())  # stored, never used
    writer = StreamWriter(cast(Any, None), loop)
    needs["StreamWriter._on_headers_sent"] = (writer, "_on_headers_sent")
    server = web.Server(_no_handler, loop=loop)
    needs["Server._kwargs"] = (server, "_kwargs")
    needs["Server._loop"] = (server, "_loop")
    needs["Server.requests_count"] = (server, "requests_count")
    return needs


async def _no_handler(request: web.BaseRequest) -> web.StreamResponse:
    raise NotImplementedError  # pragma: no cover - the check's server serves nothing


def missing() -> list[str]:
    """The names this adapter needs that the installed aiohttp lacks."""
    lacking = [name for name, (owner, attr) in _attributes().items() if not hasattr(owner, attr)]
    if hasattr(aiohttp.web_protocol, "_ErrInfo"):
        try:
            _ErrInfo(status=400, exc=ValueError(), message="")
        except TypeError:
            lacking.append("web_protocol._ErrInfo(status, exc, message)")
    return lacking


def check() -> None:
    """Raise UnsupportedLibrary (one line) unless the installed aiohttp is a tested version
    and has everything this adapter uses (tens of microseconds)."""
    lacking = missing()
    if lacking:
        raise UnsupportedLibrary(missing_message("aiohttp", aiohttp.__version__, lacking))
    check_version("aiohttp", aiohttp.__version__, TESTED_LOWEST, TESTED_BELOW)


# -- the request handler's state ---------------------------------------------------------


def is_parse_error(message: object) -> bool:
    """Whether a queued head is aiohttp's record of a request it could not parse."""
    return isinstance(message, _ErrInfo)


def is_error_request(message: RawRequestMessage) -> bool:
    """Whether the request factory was given aiohttp's stand-in for a protocol error."""
    return message is ERROR


class ProtocolInternals(RequestHandler):
    """aiohttp's `RequestHandler` with its private state behind named properties and
    methods, for `filecask.http.protocol.FilecaskRequestHandler`."""

    __slots__ = ()

    @property
    def event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def request_queue(self) -> HeadQueue:
        """Parsed request heads (and parse errors) the request loop has yet to take, with
        their bodies, oldest first."""
        return self._messages

    @property
    def requests_parsed(self) -> int:
        """Request heads parsed on this connection so far (parse errors included)."""
        return self._request_count

    @property
    def parsing_heads(self) -> bool:
        """Whether received bytes go to the request parser: not when the connection is
        closing (they are dropped) or has been handed over (an upgrade's payload parser)."""
        return not (self._force_close or self._close or self._payload_parser is not None)

    @property
    def force_closing(self) -> bool:
        return self._force_close

    @property
    def queue_full(self) -> bool:
        """Reading is paused because the queue of pipelined heads is full (the parser
        holds what arrived meanwhile until the request loop takes some)."""
        return self._buffer_paused

    def request_loop_waiting(self) -> bool:
        """The request loop is waiting for the next request head."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def hold_idle_request_loop(self) -> asyncio.Future[None] | None:
        """If the request loop waits for a head and has nothing to do (nothing queued, no
        upgrade, not closing), take its waiter so that parsing does not wake it: a head
        answered before it wakes cannot overtake the answer to an earlier one. Give it
        back with `release_request_loop`. None (nothing taken) otherwise."""
        waiter = self._waiter
        if (
            waiter is None
            or waiter.done()
            or self._messages
            or self._payload_parser is not None
            or self._upgraded
            or self._close
            or self._force_close
        ):
            return None
        self._waiter = None
        return waiter

    def release_request_loop(self, waiter: asyncio.Future[None]) -> None:
        self._waiter = waiter

    def wake_request_loop(self) -> None:
        """Wake the waiting request loop if there is a head for it."""
        waiter = self._waiter
        if self._messages and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_answered_head(self) -> None:
        """Remove the head at the front of the queue, answered without the request loop,
        as the loop would have: the parser may take the next, the server counts it."""
        self._messages.popleft()
        if self._parser is not None:
            self._parser.message_consumed()
        cast(web.Server, self._manager).requests_count += 1

    def queue_parse_error(self, status: int, exc: BaseException, message: str) -> None:
        """Queue an error for the request loop to answer with `handle_error(status, exc,
        message)` after the heads before it, and wake the loop."""
        self._messages.append((_ErrInfo(status, exc, message), EMPTY_PAYLOAD))
        self.wake_request_loop()

    def drop_parser(self) -> None:
        """No more request heads are parsed (nor held) on this connection."""
        self._parser = None

    def cancel_keepalive(self) -> None:
        """Stop aiohttp's idle keep-alive timer, if it runs."""
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    def start_keepalive(self) -> None:
        """What aiohttp's request loop does after a kept-alive answer: the idle keep-alive
        timer starts."""
        self._keepalive = True
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    async def drain_writes(self) -> None:
        """Wait until writing may resume (the transport's buffer is below its low mark)."""
        await self._drain_helper()


# -- the server and the runner ------------------------------------------------------------


def server_loop(server: web.Server) -> asyncio.AbstractEventLoop:
    return server._loop


def server_options(server: web.Server) -> dict[str, Any]:
    """The options aiohttp passes to each RequestHandler of `server`."""
    return server._kwargs


class ServerRebuildingRunner(web.AppRunner):
    """An AppRunner whose server is `rebuild_server(the one aiohttp built)`."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        return self.rebuild_server(await super()._make_server())

    def rebuild_server(self, standard: web.Server) -> web.Server:
        raise NotImplementedError


def on_headers_sent(
    writer: object, callback: Callable[[CIMultiDict[str]], Awaitable[None]]
) -> None:
    """Have `callback` called with each response head `writer` writes, before it goes out."""
    if isinstance(writer, StreamWriter):
        writer._on_headers_sent = callback


def buffered_bytes(stream: StreamReader) -> int:
    """Bytes a request body's stream holds, received and not yet read (0 for no body)."""
    return int(getattr(stream, "_size", 0))
