"""GET /openapi.json: the hand-written OpenAPI 3.1 description of this server's API.

Served so that clients, generators and fuzzers (schemathesis) read the contract from the
running server itself, matching its `--file-api` setting. The document depends on that
setting alone, so its JSON is encoded once per process and reused.
"""

from __future__ import annotations

import functools
import json

from aiohttp import web

from filecask.api.openapi import openapi_document
from filecask.services import SETTINGS

routes = web.RouteTableDef()


@functools.cache
def _encoded(file_api: bool) -> bytes:
    return json.dumps(openapi_document(file_api=file_api), ensure_ascii=False).encode()


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """Anyone may read it: it describes the API and holds no data."""
    body = _encoded(request.app[SETTINGS].file_api)
    return web.Response(body=body, content_type="application/json", charset="utf-8")
