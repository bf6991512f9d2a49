"""HTTP handlers, one module per resource; shared request helpers live here."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from filecask.app import JSON_BODY_MAX, SERVICES, SETTINGS
from filecask.auth import client_address
from filecask.connections import receive
from filecask.errors import BadRequest, Forbidden, PayloadTooLarge
from filecask.metastore import User

USER = web.RequestKey("user", str)
"""The signed-in user's name, for the access log."""


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


async def read_json_object(request: web.Request, *, limit: int = JSON_BODY_MAX) -> dict[str, Any]:
    """The body as a JSON object; at most `limit` bytes (413 past it)."""
    raw = await _read_small_body(request, limit)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    return body


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
