"""The one place where errors become HTTP responses: RFC 9457 `application/problem+json`.

- A `FilecaskError` becomes its own problem, with its headers.
- aiohttp's own HTTP exceptions (no route, 405, body too large) keep status and headers but
  get the same body shape, so clients parse one format.
- Anything else is logged with its traceback and answered with a bare 500.
- Once a streamed response has started (a download or archive mid-flight) no error body
  can be sent: the error propagates and aiohttp drops the connection, so the client sees a
  truncated transfer rather than corrupt data presented as complete.
"""

from __future__ import annotations

import html
import json
import logging
import re
from http import HTTPStatus
from typing import Any

import asyncpg
import sqlalchemy.exc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from filecask.errors import PROBLEM_BASE, BadRequest, FilecaskError, ServiceUnavailable

PROBLEM_TYPE = "application/problem+json"
STREAMING = web.RequestKey("streaming", bool)
"""Set by a handler just before it prepares a streamed response."""

log = logging.getLogger("filecask.errors")

_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After", "Content-Range")
_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8_text(text: str) -> bytes:
    """`text` as UTF-8, whatever a client smuggled into it: a lone surrogate (from a JSON
    escape, or a header byte aiohttp kept as `surrogateescape`) has no UTF-8 form and
    becomes U+FFFD. An error about bad input must never fail to be sent for repeating it."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


def body_problem(exc: BaseException) -> str:
    """What aiohttp's parser found wrong with a request body, in one line (a payload
    error carries the parser's error as its cause: bad chunk framing, undecodable gzip)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
    text = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    return " ".join(str(text).split()).rstrip(".") or "unparsable"


def problem_bytes(body: dict[str, Any]) -> bytes:
    """The JSON of a problem, valid UTF-8 whatever its members hold."""
    return utf8_text(json.dumps(body, ensure_ascii=False))


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=problem_bytes(body),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


def from_error(error: FilecaskError, request: web.BaseRequest) -> web.Response:
    if wants_html(request):
        return html_response(error.status, error.title, error.detail, error.headers)
    return problem_response(error.status, error.to_problem(request.path), error.headers)


def wants_html(request: web.BaseRequest) -> bool:
    """A browser navigating (Accept names text/html) gets a short page instead of JSON;
    curl (`*/*`) and API clients keep problem+json."""
    return "text/html" in request.headers.get("Accept", "")


def html_response(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    page = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{status} {html.escape(title)}</title>"
        "<body style='font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;"
        "padding:0 1em'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p></body></html>"
    )
    return web.Response(
        status=status,
        body=utf8_text(page),
        content_type="text/html",
        charset="utf-8",
        headers=headers,
    )


def from_http_exception(exc: web.HTTPException, request: web.BaseRequest) -> web.Response:
    phrase = HTTPStatus(exc.status).phrase
    body = {
        "type": PROBLEM_BASE + phrase.lower().replace(" ", "-"),
        "title": phrase,
        "status": exc.status,
        "detail": exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else phrase,
        "instance": request.path,
    }
    headers = {k: v for k in _KEPT_HEADERS if (v := exc.headers.get(k)) is not None}
    return problem_response(exc.status, body, headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        # Mid-stream, or the client is gone: no body can be sent, let aiohttp drop it.
        if request.get(STREAMING, False) or isinstance(exc, ConnectionResetError):
            raise
        if isinstance(exc, FilecaskError):
            return from_error(exc, request)
        if isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise
            return from_http_exception(exc, request)
        if isinstance(exc, (web.RequestPayloadError, HttpProcessingError)):
            # A body aiohttp's parser refused, read by something other than
            # `connections.receive` (which says the same): the client's error, not ours.
            error = BadRequest(f"Malformed request body: {body_problem(exc)}.")
            return from_error(error, request)
        if _is_database_unavailable(exc):
            log.warning("%s %s: the database cannot be used: %s", request.method, request.path, exc)
            unavailable = ServiceUnavailable(
                "The database cannot be reached right now; nothing was changed. Try again."
            )
            response = from_error(unavailable, request)
            response.headers["Retry-After"] = "5"
            return response
        log.exception("unhandled error on %s %s", request.method, request.path)
        return from_error(FilecaskError(), request)


_DATABASE_UNAVAILABLE = (
    sqlalchemy.exc.OperationalError,  # a lost connection, SQLite busy past its timeout
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pool connection in time
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionRefusedError,
    TimeoutError,
)


def _is_database_unavailable(exc: BaseException) -> bool:
    """A database (or its network) that is down or overloaded: 503 and Retry-After, not a
    500 with a traceback per request. (A full disk is mapped to 507 where it happens.)"""
    return isinstance(exc, _DATABASE_UNAVAILABLE)
