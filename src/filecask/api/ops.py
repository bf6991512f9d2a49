"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from filecask.errors import ServiceUnavailable
from filecask.services import SERVICES

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is up and its event loop answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """The metadata store answers and the blob store is present."""
    services = request.app[SERVICES]
    try:
        await services.meta.ping()
    except Exception as exc:
        raise ServiceUnavailable(f"The metadata store does not answer: {exc}") from exc
    if not await services.blobs.ready():
        raise ServiceUnavailable("The blob store cannot be read or written.")
    return web.json_response({"status": "ready"})
