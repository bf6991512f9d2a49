"""One access-log line per request: client, user, request line, status, bytes, duration.

`bytes` is what went out for the response, status line and headers included (nginx's
`$bytes_sent`); `duration` is in seconds. With `--log-format json` the same values are
also separate keys of the line (`filecask.logs.FIELDS`).

aiohttp's stock format cannot show the signed-in user or the client address as our trusted
proxy rules see it, so this small logger does.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from filecask.app import SETTINGS
from filecask.auth import client_address
from filecask.handlers import USER
from filecask.logs import FIELDS
from filecask.settings import IPNetwork


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        trusted = _trusted_proxies(request)
        address = client_address(request.remote, request.headers.get("X-Forwarded-For"), trusted)
        user = request.get(USER) or "-"
        agent = request.headers.get("User-Agent", "-")
        version = request.version
        fields = {
            "client": address,
            "user": user,
            "method": request.method,
            "path": request.path_qs,
            "protocol": f"HTTP/{version.major}.{version.minor}",
            "status": response.status,
            "bytes": response.body_length,
            "duration": round(time, 6),
            "user_agent": agent,
        }
        self.logger.info(
            '%s %s "%s %s HTTP/%d.%d" %d %d %.4f "%s"',
            address,
            user,
            request.method,
            request.path_qs,
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time,
            agent,
            extra={FIELDS: fields},
        )


def _trusted_proxies(request: web.BaseRequest) -> tuple[IPNetwork, ...]:
    """A request that failed before routing (a malformed request line, headers too large)
    has no app to ask; none of its headers are believed then, which is the safe side."""
    if not isinstance(request, web.Request):
        return ()
    try:
        return request.app[SETTINGS].trusted_proxies
    except (AssertionError, AttributeError):  # aiohttp: "match_info is not set"
        return ()
