"""Connection-level defences against hostile and broken clients, on aiohttp's protocol.

aiohttp guards an idle keep-alive connection and the size of a request head, but not the
time a client may take to send that head, nor a response the client never reads:

- **Slowloris** (`--header-timeout`): a client trickling its request head, or sending
  nothing at all, ties up a connection for ever. Like nginx's `client_header_timeout`,
  the clock starts when the connection opens or, on a kept-alive connection, with the
  first byte of the next request (until then `--keepalive-timeout` governs the idle
  connection, as in nginx). When it runs out the client gets a 408 (if it sent anything
  and the connection can take it) and the connection is closed.
- **Non-reading clients** (`--send-timeout`): a response whose client takes nothing would
  hold its buffers and fds for ever. Streamed bodies enforce it themselves
  (`filecask.sendfile`); this protocol is the backstop for everything else written through
  the transport (a cached body, a long JSON list): when the transport's buffer is over
  its high-water mark and has not shrunk for that long, the connection is aborted.
- **Protocol errors** (bad request line, bad chunked encoding, an over-long header...)
  are answered `application/problem+json` like every other error, not aiohttp's text
  page; an over-long request line or header field is 431.
- **408 answers** (here or from an upload whose body stalled, `--body-timeout`) close
  the connection at once instead of lingering to read the rest of a stalled body.

It also gives each parsed request head to the small-download fast path
(`filecask.fastpath`) before aiohttp's request loop sees it, when that loop is idle.

`make_runner` builds the aiohttp runner that uses this protocol, with the keep-alive and
header size settings; `filecask serve` and the tests that start a real server use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.log import access_logger as aiohttp_access_logger
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from filecask.errors import PROBLEM_BASE, BadRequest, FilecaskError, RequestTimeout
from filecask.problem import PROBLEM_TYPE, body_problem, problem_bytes, problem_response
from filecask.settings import Settings

if TYPE_CHECKING:
    from filecask.fastpath import SmallDownloads

__all__ = [
    "ConnectionLimits",
    "FilecaskAppRunner",
    "FilecaskRequestHandler",
    "FilecaskServer",
    "handler_args",
    "make_runner",
    "receive",
]

log = logging.getLogger("filecask.connections")

T = TypeVar("T")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ConnectionLimits:
    """The timeouts this protocol enforces itself; 0 (or less) switches one off."""

    header_timeout: float
    send_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(header_timeout=settings.header_timeout, send_timeout=settings.send_timeout)


def handler_args(settings: Settings) -> dict[str, Any]:
    """The limits aiohttp's own protocol enforces, from our settings."""
    return {
        "keepalive_timeout": settings.keepalive_timeout,
        "max_line_size": settings.max_header_size,
        "max_field_size": settings.max_header_size,
    }


async def receive(step: Awaitable[T], stall_limit: float) -> T:
    """One read of a request body: a client that sends nothing for `stall_limit` seconds
    (`--body-timeout`; 0: no limit) is a 408, and a body aiohttp's parser rejects (a bad
    chunk size, an over-long multipart header) is a 400 instead of a server error.

    The limit is per read, like nginx's `client_body_timeout`: a slow upload that keeps
    sending is never cut, and time the server spends writing what it received is not
    counted against the client."""
    try:
        async with asyncio.timeout(stall_limit if stall_limit > 0 else None):
            return await step
    except TimeoutError:
        raise RequestTimeout(
            f"The request body stalled for more than {stall_limit:g} s; nothing was stored."
        ) from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        raise BadRequest(f"Malformed request body: {body_problem(exc)}.") from None


def _phrase_problem(status: int, detail: str) -> dict[str, Any]:
    """A problem for a bare status, shaped like `problem.from_http_exception`'s."""
    phrase = HTTPStatus(status).phrase
    return {
        "type": PROBLEM_BASE + phrase.lower().replace(" ", "-"),
        "title": phrase,
        "status": status,
        "detail": detail,
    }


def only_known_expectations(handler: Handler) -> Handler:
    """aiohttp answers an `Expect` other than `100-continue` before any middleware runs:
    with a text/plain 417, or, when the value is not ASCII, with a 500 and a traceback
    (its error text, which repeats the value, cannot be encoded). Such a request is
    answered here instead: 417 problem+json, the value not repeated (RFC 9110 §10.1.1)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT)
        if expect and expect.lower() != "100-continue":
            detail = "Only 'Expect: 100-continue' is understood."
            return problem_response(417, _phrase_problem(417, detail) | {"header": "Expect"})
        return await handler(request)

    return handle


def _raw_problem(error: FilecaskError) -> bytes:
    """A complete HTTP/1.1 response, for when there is no request object to answer."""
    body = problem_bytes(error.to_problem())
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
        f"Content-Type: {PROBLEM_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class FilecaskRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol plus the header and send timeouts and problem+json
    protocol errors (see the module docstring)."""

    __slots__ = (
        "_bytes_seen",
        "_fast",
        "_header_timer",
        "_idle_when_sent",
        "_in_request",
        "_limits",
        "_send_backlog",
        "_send_timer",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        limits: ConnectionLimits,
        fast: SmallDownloads | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._fast = fast
        self._idle_when_sent = False
        """Fast answers were written but not yet all sent: go idle when they are."""
        self._header_timer: asyncio.TimerHandle | None = None
        self._bytes_seen = False
        """Whether any byte of the request head now awaited has arrived."""
        self._in_request = False
        """A request head has been parsed and its response is not finished yet."""
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_backlog = 0

    # -- the header timeout ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if data and not self._in_request and self._awaiting_head():
            self._bytes_seen = True
            if self._header_timer is None:  # first byte of a request on a kept-alive line
                self._arm_header_timer()
            # From here the header timeout governs, not the idle keep-alive timeout:
            # aiohttp's keep-alive timer would cut a head that is arriving.
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
                self._keepalive_handle = None
        waiter = self._waiter
        if self._fast is not None and waiter is not None and self._loop_idle(waiter):
            self._waiter = None  # parse without waking the request loop...
            try:
                super().data_received(data)
            finally:
                self._waiter = waiter
            if not self._buffer_paused:
                self._answer_fast(self._fast)
            if self._messages and not waiter.done():  # ...which takes what is left
                waiter.set_result(None)
        else:
            super().data_received(data)
        if self._messages:  # a complete head (or a parse error, answered at once)
            self._in_request = True
            self._cancel_header_timer()

    def _loop_idle(self, waiter: asyncio.Future[None]) -> bool:
        """aiohttp's request loop waits for a request head and has nothing queued: a head
        answered now cannot overtake the answer to an earlier one."""
        return (
            not waiter.done()
            and not self._messages
            and self._payload_parser is None
            and not self._upgraded
            and not self._close
            and not self._force_close
        )

    def _answer_fast(self, fast: SmallDownloads) -> None:
        """Answer queued heads from the front while the fast path takes them and the
        client keeps reading (a paused transport leaves the rest to the request loop,
        which waits for the client)."""
        answered = False
        transport = self.transport
        while self._messages and transport is not None and not self._paused:
            message, payload = self._messages[0]
            if payload is not EMPTY_PAYLOAD or isinstance(message, _ErrInfo):
                break
            if not fast.answer(message, transport, self.peername):
                break
            self._messages.popleft()
            if self._parser is not None:
                self._parser.message_consumed()
            self._manager.requests_count += 1  # type: ignore[union-attr]
            answered = True
        if answered and not self._messages:
            self._bytes_seen = False
            self._cancel_header_timer()  # the next head's clock starts with its first byte
            if self._paused:
                # Still being sent: the request loop would be waiting in drain(), where no
                # keep-alive timer runs and the send timeout governs. Idle once it is out.
                self._idle_when_sent = True
            else:
                self._start_keepalive()

    def _start_keepalive(self) -> None:
        """What aiohttp's request loop does after a kept-alive answer: the idle
        keep-alive timer starts."""
        self._keepalive = True
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _awaiting_head(self) -> bool:
        """Idle, waiting for the next request (not still taking in the body of the last
        one, which may go on arriving after its answer: that is no new head)."""
        return self._header_timer is not None or (
            self._waiter is not None and not self._waiter.done()
        )

    def _arm_header_timer(self) -> None:
        if self._limits.header_timeout > 0 and self.transport is not None:
            self._header_timer = self._loop.call_later(
                self._limits.header_timeout, self._header_timeout
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or self._force_close or self._messages:
            return
        if self._waiter is None or self._waiter.done():
            # Still busy with the previous request (lingering over its unread body):
            # the head of the next one cannot be late yet; look again later.
            self._arm_header_timer()
            return
        log.info("closing %s: no complete request head within the header timeout", self.peername)
        # A client that sent nothing (a browser's speculative connection) is closed
        # silently; one that started a request is told why.
        if self._bytes_seen and not transport.get_write_buffer_size():
            error = RequestTimeout(
                f"The request head did not arrive within {self._limits.header_timeout:g} s."
            )
            transport.write(_raw_problem(error))
        self.force_close()
        self._abort_if_stuck(transport)

    def _abort_if_stuck(self, transport: asyncio.Transport) -> None:
        """close() waits to flush the transport's buffer; a client that reads nothing
        would keep it for ever, so abort after the send timeout (at once if none)."""
        if transport.is_closing() and transport.get_write_buffer_size():
            self._loop.call_later(max(self._limits.send_timeout, 0), transport.abort)

    # -- the send timeout backstop -----------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._limits.send_timeout > 0 and self.transport is not None:
            self._send_backlog = self.transport.get_write_buffer_size()
            self._arm_send_timer(self.transport)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_timer()
        if self._idle_when_sent:
            self._idle_when_sent = False
            waiter = self._waiter
            idle = waiter is not None and not waiter.done() and not self._messages
            if idle and not self._bytes_seen:  # a head under way: the header timer governs
                self._start_keepalive()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's)
        """aiohttp lets a request in progress finish within `timeout`; a fast answer still
        being sent is not one to it, so it gets the same grace here before the close."""
        deadline = None if timeout is None else self._loop.time() + timeout
        transport = self.transport
        if self._idle_when_sent and self._paused and transport is not None:
            # Told to resume only once every byte is out, then waited for like a drain.
            high, _low = transport.get_write_buffer_limits()
            transport.set_write_buffer_limits(high=high, low=0)
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout_at(deadline):
                    await self._drain_helper()
        left = None if deadline is None else max(deadline - self._loop.time(), 0.0)
        await super().shutdown(left)

    def _arm_send_timer(self, transport: asyncio.Transport) -> None:
        """The timer keeps the transport: a graceful shutdown's force_close() forgets it,
        and a client that reads nothing must still be dropped then."""
        self._cancel_send_timer()
        self._send_timer = self._loop.call_later(
            self._limits.send_timeout, self._send_stalled, transport
        )

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_stalled(self, transport: asyncio.Transport) -> None:
        self._send_timer = None
        if not self.writing_paused or not transport.get_write_buffer_size():
            return
        backlog = transport.get_write_buffer_size()
        if backlog < self._send_backlog:  # the client took some: it is slow, not gone
            self._send_backlog = backlog
            self._arm_send_timer(transport)
            return
        log.info(
            "dropped %s: read nothing of the response for %g s",
            self.peername,
            self._limits.send_timeout,
        )
        transport.abort()  # frees the buffer now; close() would wait to flush it

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._cancel_send_timer()
        super().connection_lost(exc)

    # -- responses ---------------------------------------------------------------------

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A request body found malformed only after its answer was sent (aiohttp reads
        the unread rest of a body before the next request: a 405 to a `POST` whose gzip
        is not gzip) is the client's fault: the connection is closed, with a debug line,
        not an ERROR "Unhandled exception" traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, (web.RequestPayloadError, HttpProcessingError)):
            self.logger.debug(
                "closing %s: malformed request body: %s", self.peername, body_problem(exc)
            )
            return
        super().log_exception(*args, **kw)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # A 408 means the client stalled: say the connection ends (RFC 9110 §15.5.9) and
        # end it, rather than linger up to 10 s reading the rest of a stalled body.
        timed_out = isinstance(resp, web.StreamResponse) and resp.status == 408
        if timed_out and not resp.prepared:
            resp.force_close()
        result = await super().finish_response(request, resp, start_time)
        self._in_request = bool(self._messages)
        if not self._in_request:
            self._bytes_seen = False
            # The next head's clock starts with its first byte, not with a stale timer.
            self._cancel_header_timer()
        if timed_out and self.transport is not None:
            transport = self.transport
            self.force_close()
            self._abort_if_stuck(transport)
        return result

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Protocol errors and handler failures aiohttp answers itself, as problem+json.

        Client errors are logged at debug level (anything on the internet sends
        garbage to an open port); server errors with their traceback."""
        if isinstance(exc, ConnectionResetError):  # gone, or dropped for not reading
            self.log_debug("client went away from %s", request.remote, exc_info=exc)
            raise ConnectionError("the client is gone; no error response can be sent")
        if isinstance(exc, LineTooLong):
            status = 431
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            self.logger.debug("Bad request from %s: %r", request.remote, exc)
        if request.writer.output_size > 0:
            # Mid-response: an error body would corrupt it; aiohttp drops the connection.
            raise ConnectionError("Response is sent already, cannot send an error response")
        if status == 431:
            limit = max(self.max_line_size, self.max_field_size)
            body = _phrase_problem(
                431, f"The request line or a header field is longer than {limit} bytes."
            )
        elif status == 500:
            body = FilecaskError().to_problem()
        elif status == 400:
            detail = exc.message if isinstance(exc, HttpProcessingError) else message
            body = BadRequest(f"Malformed request: {detail or 'unparsable'}").to_problem()
        else:
            body = _phrase_problem(status, message or HTTPStatus(status).description)
        resp = problem_response(status, body)
        resp.force_close()
        return resp


class FilecaskServer(web.Server):
    """aiohttp's low-level server, making a FilecaskRequestHandler per connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: ConnectionLimits,
        fast: SmallDownloads | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self.fast = fast

    def __call__(self) -> RequestHandler:
        return FilecaskRequestHandler(
            self, loop=self._loop, limits=self._limits, fast=self.fast, **self._kwargs
        )


class FilecaskAppRunner(web.AppRunner):
    """An AppRunner whose server speaks FilecaskRequestHandler.

    `web.run_app` and `Application` cannot be told which protocol to use (the class is
    fixed in `web.Server.__call__`, and Application may not be subclassed), so the
    server aiohttp builds for the app is rebuilt as a FilecaskServer with the same
    handler, request factory and options."""

    __slots__ = ("_limits",)

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        standard = await super()._make_server()  # runs the app's startup, freezes it
        return FilecaskServer(
            only_known_expectations(standard.request_handler),
            request_factory=standard.request_factory,
            handler_cancellation=standard.handler_cancellation,
            loop=standard._loop,
            limits=self._limits,
            fast=self._small_downloads(standard._kwargs),
            **standard._kwargs,
        )

    def _small_downloads(self, options: dict[str, Any]) -> SmallDownloads | None:
        """The fast path for the app's file API, once its services exist (after startup).

        It writes filecask's access-log line or none: with another access-log class (or
        aiohttp's default) configured, its answers would be missing from that log, so
        there is no fast path then."""
        # Imported here: the fast path logs like filecask.accesslog, which needs the
        # handlers, which need this module.
        from filecask.accesslog import AccessLogger
        from filecask.app import SERVICES
        from filecask.fastpath import SmallDownloads
        from filecask.metrics import METRICS

        app = self.app
        if SERVICES not in app or METRICS not in app or not app[SERVICES].settings.file_api:
            return None
        access_log = options.get("access_log", aiohttp_access_logger)
        if access_log is not None and options.get("access_log_class") is not AccessLogger:
            return None
        services = app[SERVICES]
        return SmallDownloads(
            services.bodies,
            app[METRICS],
            access_log=access_log,
            trusted_proxies=services.settings.trusted_proxies,
        )


def make_runner(app: web.Application, settings: Settings, **kwargs: Any) -> FilecaskAppRunner:
    """The runner `filecask serve` uses: our protocol with the settings' limits; `kwargs`
    are further AppRunner options (access log, handler cancellation...)."""
    return FilecaskAppRunner(
        app,
        limits=ConnectionLimits.from_settings(settings),
        **handler_args(settings),
        **kwargs,
    )
