"""The small-download fast path: a plain GET of a small cached blob answered straight from
the protocol, without aiohttp's request and response objects.

Why it exists: 4 KiB downloads are the common case of a file store (thumbnails, icons,
documents) and the one where per-request overhead is everything. Measured with
`python -m bench --only small` on a 2-core VM, aiohttp itself (a bare handler returning
4 KiB from memory: a Request, the router, a Response, a task per request) reached 0.26x
nginx's rate; filecask's full stack 0.13x. The answer to such a request depends on
nothing but the cache entry, so `FilecaskRequestHandler` (filecask.http.protocol) hands
each parsed request head to `SmallDownloads.answer` before aiohttp's request loop sees it;
what this path does not take goes on the usual way.

It takes only what the download handler itself answers from the cache (its `_is_plain`)
and nothing whose answer could differ: GET (not HEAD) of exactly `/files/<hash>` in
canonical form (no query, no percent-encoding, lower case), HTTP/1.1 without
`Connection: close`, no body, no `Range`, `If-None-Match` or `Expect`, and a blob in the
small-body cache (whose stamps make a deleted blob a miss at once, as for the handler).
The bytes sent are the handler's own response to the byte (tests compare the two paths);
metrics and the access log count it as the handler would. One difference, on purpose: a
client that sends its request and then half-closes (`nc -N`, `shutdown(SHUT_WR)`) gets its
answer here, as from nginx, where aiohttp closes the connection without one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import hdrs
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion11

from filecask.http.accesslog import log_line
from filecask.http.metrics import Metrics
from filecask.services import CachedBody
from filecask.settings import IPNetwork
from filecask.storage.changes import StampedCache

__all__ = ["ROUTE", "SmallDownloads", "response_head"]

log = logging.getLogger("filecask.fastpath")

ROUTE = "/files/{hash}"
"""The route the fast path answers for, as the metrics label it."""

PREFIX = "/files/"
TARGET_LENGTH = len(PREFIX) + 64
_SKIP = (hdrs.RANGE, hdrs.IF_NONE_MATCH, hdrs.EXPECT)


def response_head(headers: Mapping[str, str], length: int) -> bytes:
    """The start of a 200 answer with `headers`: status line, the headers in aiohttp's
    order (the handler's, then Content-Length), up to the value of `Date` (which is
    followed by the `Server` header, if any: `SmallDownloads` adds both)."""
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    text = f"HTTP/1.1 200 OK\r\n{''.join(lines)}{hdrs.CONTENT_LENGTH}: {length}\r\n{hdrs.DATE}: "
    return text.encode("latin-1")


class SmallDownloads:
    """Answers plain GETs of cached small blobs for one app (see the module docstring)."""

    __slots__ = ("_access_log", "_bodies", "_metrics", "_tail", "_trusted", "answered")

    def __init__(
        self,
        bodies: StampedCache[str, CachedBody],
        metrics: Metrics,
        *,
        access_log: logging.Logger | None,
        trusted_proxies: tuple[IPNetwork, ...],
        server_name: str | None = "filecask",
    ) -> None:
        self._bodies = bodies
        self._metrics = metrics
        self._access_log = access_log
        self._trusted = trusted_proxies
        # After Date, as aiohttp orders them: the `Server` header (the handler path's
        # answers carry the same, filecask.http.protocol), then the end of the head.
        server = "" if server_name is None else f"\r\n{hdrs.SERVER}: {server_name}"
        self._tail = f"{server}\r\n\r\n".encode("latin-1")
        self.answered = 0
        """Requests answered here: tests use it to know which path a request took."""

    def answer(self, message: Any, transport: Any, peername: Any) -> bool:
        """Write the answer to `message` (a parsed request head without a body) and say
        True, or say False and leave it to aiohttp."""
        started = time.perf_counter()
        target: str = message.path
        if (
            len(target) != TARGET_LENGTH
            or message.method != hdrs.METH_GET
            or not target.startswith(PREFIX)
            or message.should_close
            or message.upgrade
            or message.version != HttpVersion11
        ):
            return False
        headers = message.headers
        if any(name in headers for name in _SKIP):
            return False
        cached, _stamp = self._bodies.get(target[len(PREFIX) :])
        if cached is None:
            return False
        date = rfc822_formatted_time().encode("latin-1")
        tail = self._tail
        transport.writelines((cached.head, date, tail, cached.body))
        self.answered += 1
        try:  # answered: whatever goes wrong in the counting must not lose the answer
            seconds = time.perf_counter() - started
            tally = self._metrics.tally
            tally.record(hdrs.METH_GET, ROUTE, "200", seconds)
            tally.sent += len(cached.body)
            if self._access_log is not None:
                sent = len(cached.head) + len(date) + len(tail) + len(cached.body)
                self._log(message, peername, sent, seconds)
        except Exception:
            log.exception("counting a small download answered by the fast path")
        return True

    def _log(self, message: Any, peername: Any, sent: int, seconds: float) -> None:
        assert self._access_log is not None
        # As aiohttp's `BaseRequest.remote` has it.
        remote = peername[0] if isinstance(peername, list | tuple) else peername
        log_line(
            self._access_log,
            remote=None if remote is None else str(remote),
            headers=message.headers,
            trusted=self._trusted,
            user=None,
            method=message.method,
            path=message.path,
            version=message.version,
            status=200,
            sent=sent,
            seconds=seconds,
        )
