"""One access-log line per request: client, user, request line, status, bytes, duration.

`bytes` is what went out for the response, status line and headers included (nginx's
`$bytes_sent`); `duration` is in seconds. With `--log-format json` the same values are
also separate keys of the line (`filecask.logs.FIELDS`).

aiohttp's stock format cannot show the signed-in user or the client address as our trusted
proxy rules see it, so this small logger does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http import HttpVersion

from filecask.auth import client_address
from filecask.logs import FIELDS
from filecask.services import SETTINGS, USER
from filecask.settings import IPNetwork


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log_request(self.logger, request, response.status, response.body_length, time)


def log_request(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    request: web.BaseRequest,
    status: int,
    sent: int,
    time: float,
) -> None:
    log_line(
        logger,
        remote=request.remote,
        headers=request.headers,
        trusted=_trusted_proxies(request),
        user=request.get(USER),
        method=request.method,
        path=request.path_qs,
        version=request.version,
        status=status,
        sent=sent,
        seconds=time,
    )


def log_line(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    *,
    remote: str | None,
    headers: Mapping[str, str],
    trusted: tuple[IPNetwork, ...],
    user: str | None,
    method: str,
    path: str,
    version: HttpVersion,
    status: int,
    sent: int,
    seconds: float,
) -> None:
    """The line itself, from plain values: the fast path (filecask.http.fastpath) has no
    request object to give."""
    address = client_address(remote, headers.get("X-Forwarded-For"), trusted)
    agent = headers.get("User-Agent", "-")
    fields = {
        "client": address,
        "user": user or "-",
        "method": method,
        "path": path,
        "protocol": f"HTTP/{version.major}.{version.minor}",
        "status": status,
        "bytes": sent,
        "duration": round(seconds, 6),
        "user_agent": agent,
    }
    logger.info(
        '%s %s "%s %s HTTP/%d.%d" %d %d %.4f "%s"',
        address,
        user or "-",
        method,
        path,
        version.major,
        version.minor,
        status,
        sent,
        seconds,
        agent,
        extra={FIELDS: fields},
    )


CLIENT_GONE = 499
"""nginx's status for a request whose client left before its response was complete."""


@web.middleware
async def log_client_gone(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp writes no access line for a request whose client went away (a cut download,
    an abandoned upload): write one, with status 499 and the bytes that did go out, so
    there is one line per request, as nginx does."""
    started = asyncio.get_running_loop().time()
    try:
        return await handler(request)
    except (ConnectionError, asyncio.CancelledError):
        elapsed = asyncio.get_running_loop().time() - started
        sent = request.writer.output_size if request.writer is not None else 0
        log_request(ACCESS_LOG, request, CLIENT_GONE, sent, elapsed)
        raise


ACCESS_LOG = logging.getLogger("filecask.access")


def _trusted_proxies(request: web.BaseRequest) -> tuple[IPNetwork, ...]:
    """A request that failed before routing (a malformed request line, headers too large)
    has no app to ask; none of its headers are believed then, which is the safe side."""
    if not isinstance(request, web.Request):
        return ()
    try:
        return request.app[SETTINGS].trusted_proxies
    except (AssertionError, AttributeError):  # aiohttp: "match_info is not set"
        return ()
