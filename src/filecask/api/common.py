"""What every handler shares: who is signed in, the public base URL, JSON bodies."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from filecask.auth import client_address
from filecask.errors import Forbidden, PayloadTooLarge
from filecask.http.jsonbody import parse_json_object
from filecask.http.protocol import receive
from filecask.services import JSON_BODY_MAX, SERVICES, SETTINGS, USER
from filecask.storage.meta import User


async def require_user(request: web.Request) -> User:
    services = request.app[SERVICES]
    address = client_address(
        request.remote,
        request.headers.get("X-Forwarded-For"),
        services.settings.trusted_proxies,
    )
    user = await services.auth.authenticate(request.headers.get("Authorization"), address)
    request[USER] = user.name
    return user


async def require_admin(request: web.Request) -> User:
    user = await require_user(request)
    if not user.is_admin:
        raise Forbidden("Only administrators may do this.")
    return user


def base_url(request: web.Request) -> str:
    configured = request.app[SERVICES].settings.public_url
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}"


JSON_PARSE_INLINE_MAX = 64 << 10
"""Larger JSON bodies are checked and parsed in a worker thread: the event loop gets the
GIL back between the checks' C calls (every few ms), so only `json.loads` itself, kept
to about 10 ms by `jsonbody.MAX_ITEMS`, holds other clients up."""


async def read_json_object(request: web.Request, *, limit: int = JSON_BODY_MAX) -> dict[str, Any]:
    """The body as a JSON object; any body that is not one, or that nests too deep or
    holds an over-long number or a lone surrogate, is a 400 (`filecask.http.jsonbody`); at most
    `limit` bytes (413 past it)."""
    raw = await _read_small_body(request, limit)
    if len(raw) <= JSON_PARSE_INLINE_MAX:
        return parse_json_object(raw)
    return await asyncio.get_running_loop().run_in_executor(None, parse_json_object, raw)


async def _read_small_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes (413 past it, before reading when the
    Content-Length says so), read piece by piece under the body stall limit: a client that
    trickles a manifest is not cut, one that stops sending it is (408)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"A JSON body may be at most {limit} bytes.", limit=limit)
    stall = request.app[SETTINGS].body_timeout
    body = bytearray()
    while chunk := await receive(request.content.read(64 << 10), stall):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"A JSON body may be at most {limit} bytes.", limit=limit)
    return bytes(body)
