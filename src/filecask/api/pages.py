"""The pages for people: the web page at `/` and Swagger UI at `/docs`, with their assets.

Everything is served from files shipped inside installed packages (`filecask/web/` and
Swagger UI from the `swagger-ui-bundle-v2` package), never from a CDN, so the pages work on
a machine with no internet. Assets are named in explicit tables: a request can only ever
reach a file listed here, so there is no path to traverse and no symlink to follow.

Each file is read (and, when it is text worth it, gzipped) once per process, in a thread,
on its first request; after that a request is a dict lookup. Every answer has an exact
Content-Type, `X-Content-Type-Options: nosniff`, a strong ETag (304 on `If-None-Match`) and
a Cache-Control: our own files are revalidated each time (`no-cache`, so an upgrade shows
at once), Swagger UI's are cached for a day. The two HTML pages carry a strict
Content-Security-Policy: scripts only from this origin, no inline script at all.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import swagger_ui_bundle  # type: ignore[import-untyped]
from aiohttp import web

from filecask.api.spec import IF_NONE_MATCH, NOSNIFF, Operation, Reply, operation, param
from filecask.errors import NotFound

OWN_CACHE = "no-cache"
"""Our files change with filecask upgrades under the same URL: always revalidate (cheap,
the ETag answers 304)."""
VENDOR_CACHE = "public, max-age=86400"
"""Swagger UI's files change only when its package is upgraded; a day is a fair lag."""

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""The web page: its own module script and stylesheet, fetch/XHR to this origin only."""
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""Swagger UI: still no inline or foreign script; it sets inline styles, and its
"Try it out" requests go to this origin only."""

GZIP_MIN = 1024
TEXT_TYPES = ("text/html", "text/css", "text/javascript", "application/json")


@dataclass(frozen=True, slots=True)
class Source:
    """Where an asset's bytes are, and how it is sent."""

    root: str
    """`own` (filecask/web/) or `swagger` (the Swagger UI package's directory)."""
    file: str
    content_type: str
    cache_control: str
    csp: str | None = None


PAGE_ASSETS: dict[str, Source] = {
    "app.js": Source("own", "app.js", "text/javascript", OWN_CACHE),
    "app.css": Source("own", "app.css", "text/css", OWN_CACHE),
    "icon.svg": Source("own", "icon.svg", "image/svg+xml", OWN_CACHE),
}
"""Served at /web/{asset}."""
DOCS_ASSETS: dict[str, Source] = {
    "docs.js": Source("own", "docs.js", "text/javascript", OWN_CACHE),
    "docs.css": Source("own", "docs.css", "text/css", OWN_CACHE),
    "swagger-ui.css": Source("swagger", "swagger-ui.css", "text/css", VENDOR_CACHE),
    "swagger-ui-bundle.js": Source(
        "swagger", "swagger-ui-bundle.js", "text/javascript", VENDOR_CACHE
    ),
    "favicon-32x32.png": Source("swagger", "favicon-32x32.png", "image/png", VENDOR_CACHE),
    "favicon-16x16.png": Source("swagger", "favicon-16x16.png", "image/png", VENDOR_CACHE),
}
"""Served at /docs/{asset}."""
INDEX = Source("own", "index.html", "text/html", OWN_CACHE, PAGE_CSP)
DOCS_INDEX = Source("own", "docs.html", "text/html", OWN_CACHE, DOCS_CSP)


@dataclass(frozen=True, slots=True)
class Loaded:
    body: bytes
    gzipped: bytes | None
    etag: str
    """The identity representation's strong ETag; the gzipped one appends `-gzip`."""


_loaded: dict[Source, Loaded] = {}


def _root(name: str) -> Traversable:
    if name == "swagger":
        path: Traversable = swagger_ui_bundle.swagger_ui_path
        return path
    return files("filecask").joinpath("web")


def _load(source: Source) -> Loaded:
    """Blocking: run in a thread. Two first requests racing both load; both results agree."""
    body = _root(source.root).joinpath(source.file).read_bytes()
    gzipped = None
    if source.content_type in TEXT_TYPES and len(body) >= GZIP_MIN:
        gzipped = gzip.compress(body, compresslevel=9, mtime=0)
    return Loaded(body, gzipped, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


async def _send(request: web.Request, source: Source) -> web.Response:
    loaded = _loaded.get(source)
    if loaded is None:
        loaded = await asyncio.get_running_loop().run_in_executor(None, _load, source)
        _loaded[source] = loaded
    use_gzip = loaded.gzipped is not None and _accepts_gzip(request)
    etag = loaded.etag[:-1] + '-gzip"' if use_gzip else loaded.etag
    headers = {
        "ETag": etag,
        "Cache-Control": source.cache_control,
        "X-Content-Type-Options": "nosniff",
    }
    if loaded.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
    if source.csp is not None:
        headers["Content-Security-Policy"] = source.csp
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
    if _matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    if use_gzip:
        assert loaded.gzipped is not None
        headers["Content-Encoding"] = "gzip"
        body = loaded.gzipped
    else:
        body = loaded.body
    response = web.Response(body=body, headers=headers, content_type=source.content_type)
    if source.content_type.startswith("text/"):
        response.charset = "utf-8"
    return response


def _accepts_gzip(request: web.Request) -> bool:
    for item in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _operation(operation_id: str, table: dict[str, Source], prefix: str = "") -> Operation:
    """A page or asset route's declaration, from its files' table (`prefix`: the assets')."""
    sources = list(table.values())
    etag = (
        'A strong entity tag: `"<hex>"`, `-gzip` for the gzipped form.',
        '^"[0-9a-f]{32}(-gzip)?"$',
    )
    headers: dict[str, str | tuple[str, str]] = {
        "ETag": etag,
        "Cache-Control": "`no-cache` for filecask's own files, a day for Swagger UI's.",
        "X-Content-Type-Options": NOSNIFF,
    }
    if any(source.csp for source in sources):
        headers["Content-Security-Policy"] = "Scripts from this origin only, never inline."
    types = sorted({source.content_type for source in sources})
    string = {"type": "string"} | ({} if types == ["text/html"] else {"format": "binary"})
    replies: dict[int, Reply] = {
        200: (
            "The file (gzipped when Accept-Encoding allows).",
            dict.fromkeys(types, string),
            headers,
        ),
        304: ("If-None-Match named the current ETag.", None, {"ETag": etag}),
    }
    if not prefix:
        return operation(operation_id, replies, parameters=[IF_NONE_MATCH])
    names = {"type": "string", "enum": sorted(table)}
    asset = param("asset", "path", f"One of the files served under {prefix}.", names)
    return operation(operation_id, replies, [404], parameters=[asset, IF_NONE_MATCH])


page_routes = web.RouteTableDef()
"""Only with the file API on: the page signs in and uses /files, /me and /archives."""
docs_routes = web.RouteTableDef()
"""Always, like /openapi.json, which Swagger UI shows."""


@page_routes.get("/")
@_operation("webPage", {"": INDEX})
async def page(request: web.Request) -> web.Response:
    """The web page: sign in, upload, list, bundle files."""
    return await _send(request, INDEX)


@page_routes.get("/web/{asset}")
@_operation("webAsset", PAGE_ASSETS, "/web/")
async def page_asset(request: web.Request) -> web.Response:
    """A file of the web page (script, style sheet, icon)."""
    source = PAGE_ASSETS.get(request.match_info["asset"])
    if source is None:
        raise NotFound("No such asset of the web page.")
    return await _send(request, source)


@docs_routes.get("/docs")
@_operation("docsPage", {"": DOCS_INDEX})
async def docs(request: web.Request) -> web.Response:
    """Swagger UI for this document (served locally, no CDN)."""
    return await _send(request, DOCS_INDEX)


@docs_routes.get("/docs/{asset}")
@_operation("docsAsset", DOCS_ASSETS, "/docs/")
async def docs_asset(request: web.Request) -> web.Response:
    """A file of the Swagger UI page."""
    source = DOCS_ASSETS.get(request.match_info["asset"])
    if source is None:
        raise NotFound("No such asset of the API documentation page.")
    return await _send(request, source)
