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
  (`filecask.http.sendfile`); this protocol is the backstop for everything else written through
  the transport (a cached body, a long JSON list): when the transport's buffer is over
  its high-water mark and has not shrunk for that long, the connection is aborted.
- **Protocol errors** (bad request line, bad chunked encoding, an over-long header...)
  are answered `application/problem+json` like every other error, not aiohttp's text
  page; an over-long request line or header field is 431.
- **408 answers** (here or from an upload whose body stalled, `--body-timeout`) close
  the connection at once instead of lingering to read the rest of a stalled body.
- **Huge request heads** (`--max-head-size`): aiohttp bounds each line and the number of
  header fields, which still lets one connection park about 2 MiB of parsed head for the
  whole header timeout. The head as a whole is capped, like nginx's
  `large_client_header_buffers`: the moment the bytes of an unfinished head pass the cap
  the client gets 431 and the connection is closed. The count is what the parser holds:
  bytes received, less what went into request bodies and the heads it completed.
- **Too many connections** (`--max-connections`, `--max-connections-per-address`): past
  either limit a new connection is answered 503 (`Retry-After`) at once, before anything
  of it is read or parsed, and closed: the cost of a refused connection is its accept.
  The per-address count keys IPv4 by address and IPv6 by /64 (one host's usual share);
  trusted proxies (`--trusted-proxies`) are exempt, since they carry many clients.
- **HTTP versions**: a request line in any version but 1.0 and 1.1 (HTTP/0.9's bare
  `GET /`, `HTTP/2.0`, `HTTP/1.2`...) is 505, answered in HTTP/1.1, and the connection
  closed. Every answer of this layer speaks HTTP/1.1.
- **The `Server` header** (`--server-header`) is `filecask`, without versions, or absent:
  never aiohttp's `Python/3.x aiohttp/3.x`.
- **Memory goes back**: the server hands the C heap's free pages back to the OS
  (`filecask.http.memory`), so what a crowd of connections made it hold is not kept for ever.
  Uploads write what they gathered before waiting for the client (`would_wait`).

It also gives each parsed request head to the small-download fast path
(`filecask.http.fastpath`) before aiohttp's request loop sees it, when that loop is idle.

`make_runner` builds the aiohttp runner that uses this protocol, with the keep-alive and
header size settings; `filecask serve` and the tests that start a real server use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar, cast

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.log import access_logger as aiohttp_access_logger
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from filecask.errors import (
    PROBLEM_BASE,
    BadRequest,
    FilecaskError,
    HeadTooLarge,
    RequestTimeout,
    TooManyConnections,
    VersionNotSupported,
)
from filecask.http import aiohttp_internals as internals
from filecask.http.accesslog import AccessLogger
from filecask.http.fastpath import SmallDownloads
from filecask.http.memory import Reclaimer
from filecask.http.metrics import METRICS
from filecask.http.problem import PROBLEM_TYPE, body_problem, problem_bytes, problem_response
from filecask.services import SERVICES
from filecask.settings import IPNetwork, Settings

__all__ = [
    "SERVER_NAME",
    "ConnectionCounts",
    "ConnectionLimits",
    "FilecaskAppRunner",
    "FilecaskRequestHandler",
    "FilecaskServer",
    "handler_args",
    "make_runner",
    "raise_open_file_limit",
    "receive",
    "would_wait",
]

log = logging.getLogger("filecask.connections")

T = TypeVar("T")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
RequestFactory = Callable[..., web.BaseRequest]

SERVER_NAME = "filecask"
"""The `Server` header's value: the product, never its version nor aiohttp's."""
REFUSAL_RETRY_AFTER = 5
"""Seconds a refused connection is told to wait (`Retry-After`)."""
LINGER = 2.0
"""Seconds a connection answered with a protocol error (a 503 refusal, 400, 431, 505) is
kept after its answer, reading and dropping what the client still sends: closing a
socket with unread data resets the connection, and the client can lose the answer
before it reads it (RFC 9112 §9.6; nginx's lingering close). It ends sooner when the
client closes its side."""
REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two log lines about refused connections."""
REFUSALS_LINGERING = 256
"""Refused connections kept lingering at once; past it they are closed at once."""
OPEN_FILES_PER_CONNECTION = 2
"""File descriptors budgeted per connection (its socket and a file it sends or
receives) when the open-file limit caps `--max-connections`."""
OPEN_FILES_RESERVED = 320 + REFUSALS_LINGERING
"""File descriptors kept for the rest: the 256 hash locks, the database, logs, the
listening sockets, and refused connections while they linger."""
_VERSION_ERRORS = ("Invalid HTTP version", "PRI/Upgrade")
"""llhttp's words for a version it cannot parse (1.2, 3.0) and for HTTP/2's preface."""
_PROTOCOL_ERRORS = (HeadTooLarge, VersionNotSupported)
"""Client errors this protocol answers itself (a 505 is the client's doing too)."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits this protocol enforces itself; 0 (or less) switches one off."""

    header_timeout: float
    send_timeout: float
    max_head_size: int = 0
    max_connections: int = 0
    max_connections_per_address: int = 0
    exempt: tuple[IPNetwork, ...] = ()
    """Peers with no per-address limit: trusted proxies, which carry many clients."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.header_timeout,
            send_timeout=settings.send_timeout,
            max_head_size=settings.max_head_size,
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
            exempt=settings.trusted_proxies,
        )


def raise_open_file_limit() -> int:
    """Lift this process's soft limit on open files to the hard one (what nginx's
    `worker_rlimit_nofile` does; systemd's default soft limit is 1024 under a hard limit of
    524288): every connection is a file descriptor. The soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def connection_capacity(wanted: int) -> int:
    """`wanted` connections, or fewer if the open-file limit could not serve them: beyond
    it accept() fails, and no answer, not even a 503, can be given."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = (soft - OPEN_FILES_RESERVED) // OPEN_FILES_PER_CONNECTION
    return max(1, min(wanted, room))


def address_key(peername: Any, exempt: tuple[IPNetwork, ...]) -> str | None:
    """What connections are counted under for the per-address limit: the IPv4 address, or
    the /64 of an IPv6 one (a host is usually given a whole /64, so counting single
    addresses would not limit it). None for no limit: a trusted proxy, or no IP peer."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return None
    host = peername[0]
    if not exempt and ":" not in host:
        return host  # IPv4, as the kernel writes it: already canonical
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in exempt):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionCounts:
    """The open connections of one server (one worker process): in all and per client
    address (`address_key`), against the limits; and the refused ones still lingering."""

    __slots__ = ("_by_address", "_logged", "_unlogged", "lingering", "total")

    def __init__(self) -> None:
        self.total = 0
        self._by_address: dict[str, int] = {}
        self.lingering = 0
        self._logged = float("-inf")
        self._unlogged = 0

    def log_refusal(self, address: str | None, reason: str, now: float) -> None:
        """One line per REFUSAL_LOG_INTERVAL at most: a flood of refused connections
        must not become a flood of log lines (each costs more than the refusal)."""
        self._unlogged += 1
        if now - self._logged >= REFUSAL_LOG_INTERVAL:
            log.info(
                "refused %d connection(s) in %g s; the last from %s: %s",
                self._unlogged,
                REFUSAL_LOG_INTERVAL,
                address,
                reason,
            )
            self._logged = now
            self._unlogged = 0

    def admit(self, key: str | None, limits: ConnectionLimits) -> str | None:
        """Count a new connection in, or say (in words for its 503) why it may not be."""
        if 0 < limits.max_connections <= self.total:
            return "The server has as many connections as it can take; retry shortly."
        if key is not None:
            held = self._by_address.get(key, 0)
            if 0 < limits.max_connections_per_address <= held:
                return (
                    f"Too many connections from your address ({held} open); close some of"
                    " them or retry shortly."
                )
            self._by_address[key] = held + 1
        self.total += 1
        return None

    def release(self, key: str | None) -> None:
        self.total -= 1
        if key is not None:
            held = self._by_address.pop(key, 0) - 1
            if held > 0:
                self._by_address[key] = held


class _Refusal(asyncio.Protocol):
    """A connection past the limits: its 503 is written and our side shut at once; what
    the client sends meanwhile is read and dropped (closing a socket with unread data
    resets it, which can destroy the answer before the client reads it). Closed when the
    client closes, or after LINGER seconds."""

    def __init__(self, counts: ConnectionCounts, answer: bytes) -> None:
        self._counts = counts
        self._answer = answer
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport: no isinstance.
        transport = cast(asyncio.Transport, transport)
        transport.write(self._answer)
        if self._counts.lingering >= REFUSALS_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._counts.lingering += 1
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # dropped

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._counts.lingering -= 1


def _head_limit_detail(limit: int) -> str:
    return f"The request head (request line and header fields) is larger than {limit} bytes."


def _head_size(message: RawRequestMessage) -> int:
    """The bytes of a parsed request head, at most what arrived (optional whitespace,
    which the parser drops, is not counted)."""
    # "METHOD target HTTP/1.1\r\n", each "name:value\r\n", the final "\r\n".
    size = len(message.method) + len(message.path) + 14
    for name, value in message.raw_headers:
        size += len(name) + len(value) + 3
    return size


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


def would_wait(content: StreamReader) -> bool:
    """Whether the next read of a request body waits for the client: all it sent so far
    has been read, and there is more to come. A handler that gathers the body before
    writing it writes what it holds first, so a stalled upload holds none of it."""
    return not content.is_eof() and not internals.buffered_bytes(content)


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


_CANNED: dict[tuple[int, str, str | None], bytes] = {}


def _canned_problem(error: FilecaskError, server_name: str | None) -> bytes:
    """`_raw_problem(error)`, made once per status and detail: the same bytes for a
    flood of the same refusal (details name a limit, not the client)."""
    key = (error.status, error.detail, server_name)
    answer = _CANNED.get(key)
    if answer is None:
        if len(_CANNED) >= 64:
            _CANNED.clear()
        answer = _CANNED[key] = _raw_problem(error, server_name)
    return answer


def _raw_problem(error: FilecaskError, server_name: str | None = SERVER_NAME) -> bytes:
    """A complete HTTP/1.1 response, for when there is no request object to answer."""
    body = problem_bytes(error.to_problem())
    extra = "".join(f"{name}: {value}\r\n" for name, value in error.headers.items())
    if server_name is not None:
        extra += f"{hdrs.SERVER}: {server_name}\r\n"
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
        f"Content-Type: {PROBLEM_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class FilecaskRequestHandler(internals.ProtocolInternals):
    """aiohttp's HTTP/1.1 protocol plus the header and send timeouts, the head and
    connection limits, the version rule and problem+json protocol errors (see the module
    docstring)."""

    __slots__ = (
        "_address",
        "_body",
        "_bytes_seen",
        "_counted",
        "_counts",
        "_discarding",
        "_fast",
        "_head_bytes",
        "_header_timer",
        "_idle_when_sent",
        "_in_request",
        "_limits",
        "_linger_after",
        "_linger_timer",
        "_send_backlog",
        "_send_timer",
        "_server_name",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        limits: ConnectionLimits,
        fast: SmallDownloads | None = None,
        counts: ConnectionCounts | None = None,
        server_name: str | None = SERVER_NAME,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._fast = fast
        self._counts = counts if counts is not None else ConnectionCounts()
        self._server_name = server_name
        self._address: str | None = None
        self._counted = False
        self._head_bytes = 0
        """Bytes of the unfinished request head the parser holds (see `_parse`)."""
        self._body: StreamReader | None = None
        """The body of the last request parsed, while it may still be arriving."""
        self._discarding = False
        """The connection is being answered a protocol error (400, 431, 505): what else
        arrives is dropped."""
        self._linger_after: web.StreamResponse | None = None
        """That answer: once it is sent, the connection lingers (LINGER) and ends."""
        self._linger_timer: asyncio.TimerHandle | None = None
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
        address = address_key(transport.get_extra_info("peername"), self._limits.exempt)
        refusal = self._counts.admit(address, self._limits)
        if refusal is not None:
            self._counts.log_refusal(address, refusal, self.event_loop.time())
            error = TooManyConnections(refusal, retry_after=REFUSAL_RETRY_AFTER)
            protocol = _Refusal(self._counts, _raw_problem(error, self._server_name))
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return
        self._address = address
        self._counted = True
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if data and not self._in_request and self._awaiting_head():
            self._bytes_seen = True
            if self._header_timer is None:  # first byte of a request on a kept-alive line
                self._arm_header_timer()
            # From here the header timeout governs, not the idle keep-alive timeout:
            # aiohttp's keep-alive timer would cut a head that is arriving.
            self.cancel_keepalive()
        fast = self._fast
        waiter = self.hold_idle_request_loop() if fast is not None else None
        if fast is not None and waiter is not None:
            try:
                self._parse(data)  # parse without waking the request loop...
            finally:
                self.release_request_loop(waiter)
            if not self.queue_full:
                self._answer_fast(fast)
            self.wake_request_loop()  # ...which takes what is left
        else:
            self._parse(data)
        if self.request_queue:  # a complete head (or a parse error, answered at once)
            self._in_request = True
            self._cancel_header_timer()

    # -- the request head limit and the version rule -----------------------------------

    def _parse(self, data: bytes) -> None:
        """aiohttp's parsing of `data`, then the HTTP version of each new request (505
        for any but 1.0 and 1.1) and the request head limit (431), for the heads parsed
        and for the one still arriving.

        The unfinished head the parser holds is counted in `_head_bytes`: the bytes
        received, less those that went into request bodies (a body's own limits govern
        them) and the heads the parser completed. While a body is still arriving there
        is no unfinished head. Bytes the parser has put aside because the queue of
        pipelined requests is full count too, until they are parsed; the limit is not
        applied meanwhile (the transport is paused, so they are at most one read).

        A parsed head is measured without the optional whitespace the parser drops, so a
        head that arrives whole may be over the limit by that much (a byte a field)."""
        if not self.parsing_heads:
            super().data_received(data)
            return
        body = self._body
        in_body = body is not None and not body.is_eof()
        body_before = body.total_raw_bytes if body is not None and in_body else 0
        count = self.requests_parsed
        super().data_received(data)
        head = len(data) if in_body else self._head_bytes + len(data)
        if body is not None and in_body:
            head -= body.total_raw_bytes - body_before  # as received: compressed, if so
        limit = self._limits.max_head_size
        # Data that ends a head (CRLF CRLF) leaves no unfinished one behind, whatever it
        # held; and if all it brought fits the limit, so does each head it completed:
        # the common case (a request a read) needs no measuring.
        ended = data[-4:] == b"\r\n\r\n"
        measure = not ended or 0 < limit < head
        messages = self.request_queue
        new = self.requests_parsed - count
        for index in range(len(messages) - new, len(messages)):
            message, payload = messages[index]
            if internals.is_parse_error(message):  # answered by handle_error, then the end
                self._discarding = True
                self._body = None
                self._head_bytes = 0
                return
            message = cast(RawRequestMessage, message)
            if message.version is not HttpVersion11 and message.version != HttpVersion10:
                major, minor = message.version
                detail = f"HTTP/{major}.{minor} is not supported; use HTTP/1.1."
                self._refuse_from(index, VersionNotSupported(detail))
                return
            if measure:
                size = _head_size(message)
                if 0 < limit < size:
                    self._refuse_from(index, HeadTooLarge(_head_limit_detail(limit)))
                    return
                head -= size
            if payload is EMPTY_PAYLOAD:
                self._body = None
            else:
                head -= payload.total_raw_bytes
                self._body = payload
        if self._body is not None:
            if not self._body.is_eof():
                self._head_bytes = 0  # a body arriving: no head is
                return
            self._body = None
        self._head_bytes = 0 if ended else max(head, 0)
        if 0 < limit < self._head_bytes and not self.queue_full:
            self._queue_error(HeadTooLarge(_head_limit_detail(limit)))

    def _refuse_from(self, index: int, error: FilecaskError) -> None:
        """Answer the request at `index` with `error`, in turn (after those before it);
        what follows it is dropped, and the connection ends there."""
        queue = self.request_queue
        while len(queue) > index:
            queue.pop()
        self._queue_error(error)

    def _queue_error(self, error: FilecaskError) -> None:
        """Answer `error` to the request being received, after those before it; drop
        whatever else arrives, and close after answering. The parser goes at once, and
        with it the head it held (aiohttp checks for a missing one).

        On an idle connection (nothing being answered, nothing queued) the answer is
        written here and now, as the header timeout's 408 is: a thousand attackers cut
        at once cost microseconds each, not a request's worth of aiohttp's machinery."""
        self._discarding = True
        self._body = None
        self.drop_parser()
        transport = self.transport
        if not self._in_request and not self.request_queue and transport is not None:
            log.debug("closing %s: %s", self.peername, error.detail)  # a client error
            self._cancel_header_timer()
            self.cancel_keepalive()
            transport.write(_canned_problem(error, self._server_name))
            self._linger(transport)
            return
        self.queue_parse_error(error.status, error, error.detail)

    def _answer_fast(self, fast: SmallDownloads) -> None:
        """Answer queued heads from the front while the fast path takes them and the
        client keeps reading (a paused transport leaves the rest to the request loop,
        which waits for the client)."""
        answered = False
        transport = self.transport
        queue = self.request_queue
        while queue and transport is not None and not self.writing_paused:
            message, payload = queue[0]
            if payload is not EMPTY_PAYLOAD or internals.is_parse_error(message):
                break
            if not fast.answer(message, transport, self.peername):
                break
            self.take_answered_head()
            answered = True
        if answered and not queue:
            self._bytes_seen = False
            self._cancel_header_timer()  # the next head's clock starts with its first byte
            if self.writing_paused:
                # Still being sent: the request loop would be waiting in drain(), where no
                # keep-alive timer runs and the send timeout governs. Idle once it is out.
                self._idle_when_sent = True
            else:
                self.start_keepalive()

    def _awaiting_head(self) -> bool:
        """Idle, waiting for the next request (not still taking in the body of the last
        one, which may go on arriving after its answer: that is no new head)."""
        return self._header_timer is not None or self.request_loop_waiting()

    def _arm_header_timer(self) -> None:
        if self._limits.header_timeout > 0 and self.transport is not None:
            self._header_timer = self.event_loop.call_later(
                self._limits.header_timeout, self._header_timeout
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or self.force_closing or self.request_queue:
            return
        if not self.request_loop_waiting():
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
            transport.write(_raw_problem(error, self._server_name))
        self.force_close()
        self._abort_if_stuck(transport)

    def _abort_if_stuck(self, transport: asyncio.Transport) -> None:
        """close() waits to flush the transport's buffer; a client that reads nothing
        would keep it for ever, so abort after the send timeout (at once if none)."""
        if transport.is_closing() and transport.get_write_buffer_size():
            self.event_loop.call_later(max(self._limits.send_timeout, 0), transport.abort)

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
            idle = self.request_loop_waiting() and not self.request_queue
            if idle and not self._bytes_seen:  # a head under way: the header timer governs
                self.start_keepalive()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's)
        """aiohttp lets a request in progress finish within `timeout`; a fast answer still
        being sent is not one to it, so it gets the same grace here before the close."""
        loop = self.event_loop
        deadline = None if timeout is None else loop.time() + timeout
        transport = self.transport
        if self._idle_when_sent and self.writing_paused and transport is not None:
            # Told to resume only once every byte is out, then waited for like a drain.
            high, _low = transport.get_write_buffer_limits()
            transport.set_write_buffer_limits(high=high, low=0)
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout_at(deadline):
                    await self.drain_writes()
        left = None if deadline is None else max(deadline - loop.time(), 0.0)
        await super().shutdown(left)

    def _arm_send_timer(self, transport: asyncio.Transport) -> None:
        """The timer keeps the transport: a graceful shutdown's force_close() forgets it,
        and a client that reads nothing must still be dropped then."""
        self._cancel_send_timer()
        self._send_timer = self.event_loop.call_later(
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
        if self._counted:
            self._counted = False
            self._counts.release(self._address)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._cancel_header_timer()
        self._cancel_send_timer()
        self._body = None
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
        self._in_request = bool(self.request_queue)
        if not self._in_request:
            self._bytes_seen = False
            # The next head's clock starts with its first byte, not with a stale timer.
            self._cancel_header_timer()
        if timed_out and self.transport is not None:
            transport = self.transport
            self.force_close()
            self._abort_if_stuck(transport)
        elif resp is self._linger_after and self.transport is not None:
            self._linger(self.transport)
        return result

    def _linger(self, transport: asyncio.Transport) -> None:
        """After a protocol error's answer: our side is shut (the client sees the end of
        the answer), what the client still sends is dropped, and the connection ends
        when the client closes (`eof_received`) or after LINGER seconds."""
        self._linger_after = None
        self.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._linger_timer = self.event_loop.call_later(LINGER, self._end_linger, transport)

    def _end_linger(self, transport: asyncio.Transport) -> None:
        self._linger_timer = None
        self.force_close()
        transport.abort()

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
        elif isinstance(exc, HttpProcessingError) and any(
            words in exc.message for words in _VERSION_ERRORS
        ):
            exc = VersionNotSupported("Only HTTP/1.0 and HTTP/1.1 are supported.")
            status = exc.status
        elif isinstance(exc, _PROTOCOL_ERRORS):  # queued by this protocol
            status = exc.status
        if status >= 500 and not isinstance(exc, _PROTOCOL_ERRORS):
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            self.logger.debug("Bad request from %s: %r", request.remote, exc)
        if request.writer.output_size > 0:
            # Mid-response: an error body would corrupt it; aiohttp drops the connection.
            raise ConnectionError("Response is sent already, cannot send an error response")
        headers: dict[str, str] = {}
        if isinstance(exc, _PROTOCOL_ERRORS):
            body = exc.to_problem()
            headers = exc.headers
        elif status == 431:
            limit = max(self.max_line_size, self.max_field_size)
            body = HeadTooLarge(
                f"The request line or a header field is longer than {limit} bytes."
            ).to_problem()
        elif status == 500:
            body = FilecaskError().to_problem()
        elif status == 400:
            detail = exc.message if isinstance(exc, HttpProcessingError) else message
            body = BadRequest(f"Malformed request: {detail or 'unparsable'}").to_problem()
        else:
            body = _phrase_problem(status, message or HTTPStatus(status).description)
        resp = problem_response(status, body)
        resp.headers.update(headers)
        if isinstance(exc, _PROTOCOL_ERRORS) or (self._discarding and status < 500):
            # The end of the connection, after a lingering close (`_linger`).
            resp.headers[hdrs.CONNECTION] = "close"
            self._linger_after = resp
        else:
            resp.force_close()
        return resp


class FilecaskServer(web.Server):
    """aiohttp's low-level server, making a FilecaskRequestHandler per connection and
    counting them; every answer's `Server` header is `server_name` (None: no header)."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: ConnectionLimits,
        fast: SmallDownloads | None = None,
        server_name: str | None = SERVER_NAME,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self.fast = fast
        self.counts = ConnectionCounts()
        self.server_name = server_name
        self.request_factory = self._wrap_factory(self.request_factory)
        # What hostile connections made the process hold goes back once they are gone.
        self.reclaimer = Reclaimer()
        self.reclaimer.start()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        self.reclaimer.stop()
        await super().shutdown(timeout)

    def _wrap_factory(self, make: RequestFactory) -> RequestFactory:
        """Requests as `make` builds them, whose answers carry our `Server` header (or
        none) and, for a protocol error, speak HTTP/1.1 (aiohttp's stand-in says 1.0)."""

        def factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            internals.on_headers_sent(writer, self._name_server)
            if internals.is_error_request(message):
                # The protocol ends the connection itself after the answer
                # (`FilecaskRequestHandler._linger`).
                message = internals.ERROR_REQUEST_11
            return make(message, payload, protocol, writer, task)

        return factory

    async def _name_server(self, headers: CIMultiDict[str]) -> None:
        """Called as the head of each answer is written (aiohttp has added its own
        `Server: Python/3.x aiohttp/3.x` by then; replaced in place, or removed)."""
        if self.server_name is None:
            headers.popall(hdrs.SERVER, None)
        else:
            headers[hdrs.SERVER] = self.server_name

    def __call__(self) -> RequestHandler:
        return FilecaskRequestHandler(
            self,
            loop=internals.server_loop(self),
            limits=self._limits,
            fast=self.fast,
            counts=self.counts,
            server_name=self.server_name,
            **internals.server_options(self),
        )


class FilecaskAppRunner(internals.ServerRebuildingRunner):
    """An AppRunner whose server speaks FilecaskRequestHandler.

    `web.run_app` and `Application` cannot be told which protocol to use (the class is
    fixed in `web.Server.__call__`, and Application may not be subclassed), so the
    server aiohttp builds for the app is rebuilt as a FilecaskServer with the same
    handler, request factory and options."""

    __slots__ = ("_limits", "_server_name")

    def __init__(
        self,
        app: web.Application,
        *,
        limits: ConnectionLimits,
        server_name: str | None = SERVER_NAME,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits
        self._server_name = server_name

    def rebuild_server(self, standard: web.Server) -> web.Server:
        """Called once aiohttp has built its server (the app's startup has run)."""
        options = internals.server_options(standard)
        return FilecaskServer(
            only_known_expectations(standard.request_handler),
            request_factory=standard.request_factory,
            handler_cancellation=standard.handler_cancellation,
            loop=internals.server_loop(standard),
            limits=self._limits,
            fast=self._small_downloads(options),
            server_name=self._server_name,
            **options,
        )

    def _small_downloads(self, options: dict[str, Any]) -> SmallDownloads | None:
        """The fast path for the app's file API, once its services exist (after startup).

        It writes filecask's access-log line or none: with another access-log class (or
        aiohttp's default) configured, its answers would be missing from that log, so
        there is no fast path then."""
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
            server_name=self._server_name,
        )


def make_runner(app: web.Application, settings: Settings, **kwargs: Any) -> FilecaskAppRunner:
    """The runner `filecask serve` uses: our protocol with the settings' limits; `kwargs`
    are further AppRunner options (access log, handler cancellation...)."""
    internals.check()
    limits = ConnectionLimits.from_settings(settings)
    capacity = connection_capacity(limits.max_connections)
    if capacity < limits.max_connections:
        log.warning(
            "at most %d connections (not %d): the open-file limit is %d (ulimit -n)",
            capacity,
            limits.max_connections,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        limits = dataclasses.replace(limits, max_connections=capacity)
    return FilecaskAppRunner(
        app,
        limits=limits,
        server_name=SERVER_NAME if settings.server_header else None,
        **handler_args(settings),
        **kwargs,
    )
