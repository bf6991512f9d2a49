"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from filecask.api.models import Status, reply
from filecask.api.spec import operation
from filecask.errors import ServiceUnavailable
from filecask.services import SERVICES

routes = web.RouteTableDef()


@routes.get("/healthz")
@operation("healthz", {200: ("Up.", Status)})
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return reply(Status, {"status": "ok"})


@routes.get("/readyz")
@operation("readyz", {200: ("Ready.", Status)}, [503])
async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database and the store are usable."""
    services = request.app[SERVICES]
    try:
        await services.meta.ping()
    except Exception as exc:
        raise ServiceUnavailable(f"The metadata store does not answer: {exc}") from exc
    if not await services.blobs.ready():
        raise ServiceUnavailable("The blob store cannot be read or written.")
    return reply(Status, {"status": "ready"})
