"""/files: upload, download (zero-copy, ranges, conditional requests), delete and list."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, hdrs, web

from filecask.app import SERVICES, CachedBody, Services
from filecask.blobstore import OpenBlob
from filecask.errors import BadRequest, FilecaskError, NotFound, PayloadTooLarge, Unauthorized
from filecask.handlers import base_url, require_user
from filecask.handlers.bodies import send_body
from filecask.hashes import parse_hash
from filecask.mediatypes import is_active
from filecask.metastore import FileRecord
from filecask.names import validate_file_name
from filecask.problem import from_error
from filecask.ranges import if_none_match_matches
from filecask.sendfile import send_file_range

routes = web.RouteTableDef()

RECEIVE_CHUNK = 256 << 10
LIST_DEFAULT = 100
LIST_MAX = 1000
CACHE_FOREVER = "public, max-age=31536000, immutable"
CACHED_BODY_MAX = 256 << 10
"""Blobs up to this size are served from memory once read (see `Services.bodies`)."""


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue` (curl -T, large --data-binary) only for uploads we could
    accept, so an oversized or anonymous one is refused before its body is sent (RFC 9110
    §10.1.1). aiohttp runs this outside the middleware chain, hence the explicit problem."""
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return from_error(BadRequest("Only 'Expect: 100-continue' is understood."), request)
    try:
        _check_declared_length(request)
        if hdrs.AUTHORIZATION not in request.headers:
            raise Unauthorized("Sign in with HTTP Basic authentication.")
    except FilecaskError as error:
        return from_error(error, request)
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim response is not part of the body count
    return None


def _check_declared_length(request: web.Request) -> None:
    limit = request.app[SERVICES].settings.max_upload_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"The upload of {request.content_length} bytes exceeds the limit of {limit} bytes.",
            limit=limit,
        )


@routes.post("/files", expect_handler=_expect_continue)
@routes.put("/files", expect_handler=_expect_continue)
async def upload(request: web.Request) -> web.Response:
    """A raw body (`curl --data-binary @f` or `-T f`, `?name=`) or a multipart form's `file`."""
    return await _store(request, expected_hash=None)


@routes.put("/files/{hash}", expect_handler=_expect_continue)
async def upload_with_hash(request: web.Request) -> web.Response:
    """Upload with the id known beforehand; the server verifies it before storing."""
    expected = parse_hash(request.match_info["hash"])
    return await _store(request, expected_hash=expected)


async def _store(request: web.Request, *, expected_hash: str | None) -> web.Response:
    services = request.app[SERVICES]
    user = await require_user(request)
    _check_declared_length(request)
    name, chunks = await _body_source(request)
    record, created = await services.files.upload(
        user,
        chunks,
        name=name,
        max_size=services.settings.max_upload_size,
        reserve=services.settings.min_free_space,
        expected_hash=expected_hash,
    )
    body = file_json(record, base_url(request))
    return web.json_response(
        body, status=201 if created else 200, headers={"Location": body["url"]}
    )


async def _body_source(request: web.Request) -> tuple[str | None, AsyncIterator[bytes]]:
    name = request.query.get("name")
    if request.content_type != "multipart/form-data":
        return name, request.content.iter_chunked(RECEIVE_CHUNK)
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                return name or part.filename, _part_chunks(part)
            if isinstance(part, BodyPartReader):
                await part.release()
    except ValueError as exc:
        raise BadRequest(f"Malformed multipart body: {exc}") from None
    raise BadRequest("A multipart upload needs a form field named 'file'.")


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(RECEIVE_CHUNK):
        yield chunk


@routes.get("/files/{hash}", allow_head=True)
async def download(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    hex_hash = parse_hash(request.match_info["hash"])
    cached, stamp = services.bodies.get(hex_hash)
    if cached is not None and _is_plain(request):
        return web.Response(body=cached.body, headers=cached.headers)
    blob = await services.meta.get_blob(hex_hash)
    if blob is None:
        raise NotFound("No file with this hash.", hash=hex_hash)
    headers = _download_headers(hex_hash, blob.content_type, request.query.get("name"))
    if if_none_match_matches(request.headers.get(hdrs.IF_NONE_MATCH), headers[hdrs.ETAG]):
        # RFC 9110 §15.4.5: a 304 repeats the validators and caching headers.
        keep = (hdrs.ETAG, hdrs.CACHE_CONTROL)
        return web.Response(status=304, headers={k: headers[k] for k in keep})
    if cached is None and blob.size <= min(CACHED_BODY_MAX, services.settings.cache_size):
        cached = await _read_small(services, hex_hash, blob.content_type)
        services.bodies.put(hex_hash, cached, stamp, cost=len(cached.body))
    if cached is not None:
        return await _send_bytes(request, cached.body, headers, blob.content_type)
    opened = await services.blobs.open_blob(hex_hash)
    try:
        return await _send_blob(request, opened, headers, blob.content_type)
    finally:
        os.close(opened.fd)


def _is_plain(request: web.Request) -> bool:
    """A whole-body GET with no `?name=` and no conditions: the cached response fits."""
    headers = request.headers
    return (
        request.method == hdrs.METH_GET
        and not request.query_string
        and hdrs.RANGE not in headers
        and hdrs.IF_NONE_MATCH not in headers
    )


async def _read_small(services: Services, hex_hash: str, content_type: str) -> CachedBody:
    body = await services.blobs.read_blob(hex_hash)
    headers = _download_headers(hex_hash, content_type, None)
    headers[hdrs.CONTENT_TYPE] = content_type
    return CachedBody(body, content_type, headers)


def _download_headers(hex_hash: str, content_type: str, name: str | None) -> dict[str, str]:
    filename = validate_file_name(name) if name is not None else hex_hash
    active = is_active(content_type)
    return {
        hdrs.ETAG: f'"{hex_hash}"',
        hdrs.CACHE_CONTROL: CACHE_FOREVER,
        hdrs.ACCEPT_RANGES: "bytes",
        "X-Content-Type-Options": "nosniff",
        # Stored content runs nothing on our origin, even if a browser is told to render it.
        "Content-Security-Policy": "sandbox",
        hdrs.CONTENT_DISPOSITION: content_disposition(
            "attachment" if active else "inline", filename
        ),
    }


def content_disposition(kind: str, filename: str) -> str:
    """RFC 6266 §4.3: an ASCII `filename` for old clients and RFC 5987 `filename*` for all."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in filename)
    value = f'{kind}; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


async def _send_blob(
    request: web.Request, opened: OpenBlob, headers: dict[str, str], content_type: str
) -> web.StreamResponse:
    async def write(response: web.StreamResponse, start: int, end: int) -> int:
        await send_file_range(request, response, opened.fd, start, end - start)
        return end - start

    return await send_body(
        request, size=opened.size, content_type=content_type, headers=headers, write=write
    )


async def _send_bytes(
    request: web.Request, body: bytes, headers: dict[str, str], content_type: str
) -> web.StreamResponse:
    if request.method == hdrs.METH_GET and hdrs.RANGE not in request.headers:
        headers[hdrs.CONTENT_TYPE] = content_type
        return web.Response(body=body, headers=headers)

    async def write(response: web.StreamResponse, start: int, end: int) -> int:
        await response.write(memoryview(body)[start:end])
        return end - start

    return await send_body(
        request, size=len(body), content_type=content_type, headers=headers, write=write
    )


@routes.delete("/files/{hash}")
async def delete(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    hex_hash = parse_hash(request.match_info["hash"])
    user = await require_user(request)
    await services.files.delete(user, hex_hash)
    return web.Response(status=204)


@routes.get("/files")
async def list_files(request: web.Request) -> web.Response:
    """The caller's files, newest first; `?limit=` and the opaque `?cursor=` page through."""
    services = request.app[SERVICES]
    user = await require_user(request)
    limit = _int_param(request, "limit", LIST_DEFAULT, 1, LIST_MAX)
    cursor = _int_param(request, "cursor", None, 1, None)
    records = await services.meta.list_refs(user.id, limit=limit + 1, before_id=cursor)
    page, more = records[:limit], len(records) > limit
    base = base_url(request)
    body: dict[str, Any] = {"files": [file_json(r, base) for r in page], "next_cursor": None}
    headers: dict[str, str] = {}
    if more:
        body["next_cursor"] = str(page[-1].id)
        next_url = request.rel_url.update_query(cursor=body["next_cursor"], limit=limit)
        headers["Link"] = f'<{base}{next_url}>; rel="next"'
    return web.json_response(body, headers=headers)


def _int_param(
    request: web.Request, key: str, default: int | None, low: int, high: int | None
) -> Any:
    raw = request.query.get(key)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise BadRequest(f"?{key}= must be an integer in {bounds}.", parameter=key)
    return int(raw)


def file_json(record: FileRecord, base: str) -> dict[str, Any]:
    return {
        "hash": record.hash,
        "size": record.size,
        "name": record.name,
        "content_type": record.content_type,
        "uploaded_at": record.created_at.isoformat(),
        "url": f"{base}/files/{record.hash}",
    }
