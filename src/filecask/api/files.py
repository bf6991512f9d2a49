"""/files: upload, download (zero-copy, ranges, conditional requests), delete and list."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import quote

from aiohttp import hdrs, web
from aiohttp.streams import StreamReader

from filecask.api.common import base_url, require_user
from filecask.api.models import NAME_CHARACTERS, FileDeleted, FileInfo, FileList, reply
from filecask.api.spec import (
    BINARY,
    DOWNLOAD_ERRORS,
    IF_NONE_MATCH,
    LOCATION,
    RANGE_PARAMETERS,
    SIGNED_IN,
    Json,
    Operation,
    download_replies,
    hash_param,
    operation,
    param,
)
from filecask.errors import (
    BadRequest,
    FilecaskError,
    FormTooLarge,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthorized,
)
from filecask.hashes import parse_hash
from filecask.http.fastpath import response_head
from filecask.http.multipart import FormLimits, FormReader, boundary_of
from filecask.http.problem import from_error
from filecask.http.protocol import receive, would_wait
from filecask.http.ranges import if_none_match_matches
from filecask.http.responses import send_body, write_blob_range
from filecask.http.sendfile import send_file_range
from filecask.mediatypes import is_active
from filecask.names import NAME_MAX_BYTES, validate_file_name
from filecask.services import SERVICES, CachedBody, Services
from filecask.storage.blobs import OpenBlob
from filecask.storage.meta import FileRecord, RemoveOutcome, User

routes = web.RouteTableDef()

RECEIVE_CHUNK = 256 << 10
LIST_DEFAULT = 100
LIST_MAX = 1000
CACHE_FOREVER = "public, max-age=31536000, immutable"
CACHED_BODY_MAX = 256 << 10
WHOLE_READ_MAX = 1 << 20
"""Blobs without an fd (S3) up to this size are read whole before their response starts;
larger ones are read in windows as they are sent (a delete meanwhile cuts the body short,
which the client sees against Content-Length)."""
"""Blobs up to this size are served from memory once read (see `Services.bodies`)."""


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue` (curl -T, large --data-binary) only for uploads we could
    accept, so an oversized or anonymous one is refused before its body is sent (RFC 9110
    §10.1.1). aiohttp runs this outside the middleware chain, hence the explicit problem."""
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return from_error(BadRequest("Only 'Expect: 100-continue' is understood."), request)
    try:
        await _check_declared_length(request)
        if hdrs.AUTHORIZATION not in request.headers:
            raise Unauthorized("Sign in with HTTP Basic authentication.")
    except FilecaskError as error:
        return from_error(error, request)
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim response is not part of the body count
    return None


async def _check_declared_length(request: web.Request, user: User | None = None) -> None:
    """Refuse, before a byte of the body is read, an upload whose declared `Content-Length`
    is over `--max-upload-size`, or over what the user's quota has left.

    The quota check must never refuse an upload that would succeed, and a re-upload of
    content the user already holds succeeds at any usage (it costs nothing). So it refuses
    early only when the declared length is exactly what the upload would cost and that cost
    is certain to be new:
    - raw bodies only, without `Content-Encoding`: a multipart body's length counts the
      framing and other fields (the file may be far smaller), and a compressed body's
      length is not the stored size;
    - for `PUT /files/{hash}`, only if the user does not hold that hash (if the content
      turns out not to match it, the upload fails anyway);
    - without a hash, only if the user holds no file of exactly the declared size: a
      re-upload has the size of something they hold, and a new file of such a size is
      still refused, after streaming, by `add_ref` (the authoritative, atomic check; this
      one reads cached usage and only spares the client a useless transfer).
    In the `Expect: 100-continue` handler there is no user yet: with credentials present,
    this signs in (the same cached check the handler repeats) to refuse before `100
    Continue`, so `curl -T` does not even send the body."""
    limit = request.app[SERVICES].settings.max_upload_size
    declared = request.content_length
    if declared is None:
        return
    if declared > limit:
        raise PayloadTooLarge(
            f"The upload of {declared} bytes exceeds the limit of {limit} bytes.",
            limit=limit,
        )
    if request.content_type == "multipart/form-data" or request.headers.get(
        hdrs.CONTENT_ENCODING, "identity"
    ).lower() not in ("", "identity"):
        return
    if user is None:
        if hdrs.AUTHORIZATION not in request.headers:
            return  # anonymous: the caller answers 401
        user = await require_user(request)
    if user.quota is None:
        return
    meta = request.app[SERVICES].meta
    used = (await meta.usage(user.id)).bytes
    _, reserved = await meta.open_uploads(user.id)
    if used + reserved + declared <= user.quota:
        return
    raw_hash = request.match_info.get("hash")
    if raw_hash is not None:
        held = await meta.holds_ref(user.id, hex_hash=parse_hash(raw_hash))
    else:
        held = await meta.holds_ref(user.id, size=declared)
    if not held:
        raise QuotaExceeded(quota=user.quota, used=used, size=declared, reserved=reserved)


FORM = {"type": "object", "required": ["file"], "properties": {"file": BINARY}}
OCTETS = {"contentType": "application/octet-stream"}
HASH = hash_param(
    "hash",
    "A file's SHA-256, 64 hex digits (upper case is accepted and normalised; anything else "
    "is 400).",
)


def _upload_operation(
    operation_id: str, description: str = "", *path: Json, **extra: Any
) -> Operation:
    held = ("The caller already held this content.", FileInfo, {"Location": LOCATION})
    stored = ("Stored; the body describes the caller's reference.", FileInfo, held[2])
    return operation(
        operation_id,
        {200: held, 201: stored},
        (400, *SIGNED_IN, 408, 413, 507),
        description="Upload a file. 413 is answered before the body is read when "
        "Content-Length exceeds the limit (and before `100 Continue`)." + description,
        parameters=[
            *path,
            param(
                "name",
                "query",
                f"The caller's name for the file: one path segment of at most {NAME_MAX_BYTES} "
                f"bytes of UTF-8, without '/' or '\\\\'; {NAME_CHARACTERS} A multipart upload "
                "falls back to the part's filename.",
            ),
        ],
        body={
            "required": True,
            "description": "The file's bytes as the raw body (any Content-Type but "
            "multipart/form-data; the stored type is decided from the name and the content), "
            "or a multipart form whose field `file` holds them. The body is streamed, never "
            "buffered. A form's other fields are ignored but count toward the upload size and "
            "the quota; it may have `--multipart-max-parts` parts and "
            "`--multipart-max-form-size` bytes besides the file, and must end with its closing "
            "boundary (else 400, nothing stored).",
            "content": {
                "application/octet-stream": {"schema": BINARY},
                "multipart/form-data": {"schema": FORM, "encoding": {"file": OCTETS}},
            },
        },
        **extra,
    )


@routes.post("/files", expect_handler=_expect_continue)
@routes.put("/files", expect_handler=_expect_continue)
@_upload_operation("uploadFile", variants={"PUT /files": ("putFile", "Upload a file (as PUT).")})
async def upload(request: web.Request) -> web.Response:
    """Upload a file."""
    # A raw body (`curl --data-binary @f` or `-T f`, `?name=`) or a multipart form's `file`.
    return await _store(request, expected_hash=None)


@routes.put("/files/{hash}", expect_handler=_expect_continue)
@_upload_operation(
    "putFileWithHash",
    " The server verifies the content against the hash in the URL: a mismatch is 400 "
    "`hash-mismatch` and nothing is stored.",
    HASH,
)
async def upload_with_hash(request: web.Request) -> web.Response:
    """Upload a file whose hash is known."""
    expected = parse_hash(request.match_info["hash"])
    return await _store(request, expected_hash=expected)


async def _store(request: web.Request, *, expected_hash: str | None) -> web.Response:
    services = request.app[SERVICES]
    user = await require_user(request)
    await _check_declared_length(request, user)
    limit = services.settings.max_upload_size
    allowance = await _quota_allowance(services, user)
    budget = limit if allowance is None else min(limit, allowance)
    try:
        name, chunks = await _body_source(request, budget)
        record, created = await services.files.upload(
            user,
            chunks,
            name=name,
            max_size=budget,
            reserve=services.settings.min_free_space,
            expected_hash=expected_hash,
        )
    except PayloadTooLarge as exc:
        if (
            allowance is None
            or allowance >= limit
            or isinstance(exc, (QuotaExceeded, FormTooLarge))
        ):
            raise
        assert user.quota is not None
        used = (await services.meta.usage(user.id)).bytes
        _, reserved = await services.meta.open_uploads(user.id)
        raise QuotaExceeded(
            quota=user.quota, used=used, size=allowance + 1, cut=True, reserved=reserved
        ) from None
    body = file_json(record, base_url(request))
    return reply(FileInfo, body, status=201 if created else 200, headers={"Location": body["url"]})


async def _quota_allowance(services: Services, user: User) -> int | None:
    """The most bytes an upload by `user` may stream before it is cut (None: no quota).

    The quota itself is checked when the reference is stored; this only stops a stream of
    unknown length (chunked, multipart) from filling the disk's scratch space on the way
    to that refusal: what the user keeps and what their open resumable uploads reserve
    leave the rest. A re-upload of something the user keeps costs nothing, so a stream as
    large as the largest blob they keep may always run."""
    if user.quota is None:
        return None
    used = (await services.meta.usage(user.id)).bytes
    _, reserved = await services.meta.open_uploads(user.id)
    return max(user.quota - used - reserved, await services.meta.largest_ref_size(user.id))


async def _body_source(
    request: web.Request, budget: int
) -> tuple[str | None, AsyncIterator[bytes]]:
    """The upload's name and chunks. Every read is bounded by --body-timeout (`receive`):
    a client that stalls gets 408 and, since the chunks feed the staging file, nothing is
    stored; a body aiohttp cannot parse is a 400. A multipart body is read by
    `filecask.http.multipart` (its limits, and its other fields counted in `budget`)."""
    name = request.query.get("name")
    settings = request.app[SERVICES].settings
    stall = settings.body_timeout
    if request.content_type != "multipart/form-data":
        return name, _raw_chunks(request.content, stall)
    limits = FormLimits(
        max_parts=settings.multipart_max_parts,
        max_form_size=settings.multipart_max_form_size,
        max_line=settings.max_header_size,
    )

    def read() -> Awaitable[bytes]:
        return receive(request.content.readany(), stall)

    form = FormReader(read, boundary_of(request.headers[hdrs.CONTENT_TYPE]), limits, budget=budget)
    filename = await form.open_file()
    return name or filename, _flushing(request.content, form.file_content())


async def _flushing(content: StreamReader, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks`, with an empty chunk before each wait for the client (the store writes out
    what it gathered then: see `BlobStore.stage`)."""
    while True:
        if would_wait(content):
            yield b""
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        yield chunk


async def _raw_chunks(content: StreamReader, stall: float) -> AsyncIterator[bytes]:
    """A raw body as it arrives, in pieces of at most RECEIVE_CHUNK, with an empty chunk
    before each wait for the client (as `_flushing`)."""
    while True:
        if would_wait(content):
            yield b""
        chunk = await receive(content.read(RECEIVE_CHUNK), stall)
        if not chunk:
            return
        yield chunk


@routes.get("/files/{hash}", allow_head=True)
@operation(
    "downloadFile",
    download_replies(archive=False),
    DOWNLOAD_ERRORS,
    parameters=[
        HASH,
        param(
            "name",
            "query",
            "The file name for Content-Disposition (same rules as upload names); without it "
            "the name is the hash.",
        ),
        *RANGE_PARAMETERS,
        IF_NONE_MATCH,
    ],
)
async def download(request: web.Request) -> web.StreamResponse:
    """Download a file (anyone with the hash)."""
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
    url = await services.blobs.download_url(
        hex_hash, content_type=blob.content_type, disposition=headers[hdrs.CONTENT_DISPOSITION]
    )
    if url is not None:
        # The client fetches the bytes from the object store itself (`--s3-presign`); the
        # redirect names a URL that expires, so it must not be cached.
        return web.Response(
            status=307, headers={hdrs.LOCATION: url, hdrs.CACHE_CONTROL: "no-store"}
        )
    if cached is None and blob.size <= min(CACHED_BODY_MAX, services.settings.cache_size):
        cached = await _read_small(services, hex_hash, blob.content_type)
        services.bodies.put(hex_hash, cached, stamp, cost=len(cached.body))
    if cached is not None:
        return await _send_bytes(request, cached.body, headers, blob.content_type)
    opened = await services.blobs.open_blob(hex_hash)
    if opened.fd is None and opened.size <= WHOLE_READ_MAX:
        # No fd to keep the content alive (S3): read it before the response starts, so a
        # delete racing this download gives a clean 404, never a body cut short.
        body = await services.blobs.read_blob(hex_hash)
        return await _send_bytes(request, body, headers, blob.content_type)
    try:
        return await _send_blob(request, services, hex_hash, opened, headers, blob.content_type)
    finally:
        if opened.fd is not None:
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
    return CachedBody(body, content_type, headers, response_head(headers, len(body)))


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
    request: web.Request,
    services: Services,
    hex_hash: str,
    opened: OpenBlob,
    headers: dict[str, str],
    content_type: str,
) -> web.StreamResponse:
    """Zero-copy from the blob's fd, or streamed from the store when it has none (S3)."""
    fd = opened.fd

    async def write(response: web.StreamResponse, start: int, end: int) -> int:
        if fd is None:
            return await write_blob_range(
                request, response, services.blobs, hex_hash, start, end - start
            )
        await send_file_range(request, response, fd, start, end - start)
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
@operation(
    "deleteFile",
    {
        200: ("Dropped, but the caller's own bundles keep the content.", FileDeleted),
        204: "Dropped; nothing of the caller's keeps the content (the bytes go when nothing "
        "names them).",
    },
    (400, *SIGNED_IN, 403, 404),
    parameters=[HASH],
)
async def delete(request: web.Request) -> web.Response:
    """Drop the caller's reference to a file.

    The hash is checked before the credentials. When bundles the caller holds still name
    the content, the answer is 200 and says which: the content stays stored (its link keeps
    working) and counted in the caller's usage until those bundles are deleted."""
    services = request.app[SERVICES]
    hex_hash = parse_hash(request.match_info["hash"])
    user = await require_user(request)
    outcome = await services.files.delete(user, hex_hash)
    if outcome is RemoveOutcome.REMOVED_LAST:
        return web.Response(status=204)  # the content left the store: no bundle names it
    holding = await services.meta.list_bundles(user.id, hex_hash=hex_hash)
    if not holding:
        return web.Response(status=204)
    base = base_url(request)
    held: FileDeleted = {
        "hash": hex_hash,
        "held_by_bundles": [
            {"id": b.id, "name": b.name, "url": f"{base}/archive/{b.id}/"} for b in holding
        ],
    }
    return reply(FileDeleted, held)


@routes.get("/files")
@operation(
    "listFiles",
    {200: ("One page.", FileList, {"Link?": '`<url>; rel="next"` when there is a next page.'})},
    (400, *SIGNED_IN),
    parameters=[
        param(
            "limit",
            "query",
            f"Page size, 1 to {LIST_MAX} (default {LIST_DEFAULT}); else 400.",
            {"type": "integer", "minimum": 1, "maximum": LIST_MAX},
        ),
        param(
            "cursor",
            "query",
            "`next_cursor` of the previous page (a positive integer).",
            {"type": "string", "pattern": "^[0-9]*[1-9][0-9]*$"},
        ),
    ],
)
async def list_files(request: web.Request) -> web.Response:
    """The caller's files, newest first, a page at a time."""
    # `?limit=` and the opaque `?cursor=` page through.
    services = request.app[SERVICES]
    user = await require_user(request)
    limit = _int_param(request, "limit", LIST_DEFAULT, 1, LIST_MAX)
    cursor = _int_param(request, "cursor", None, 1, None)
    records = await services.meta.list_refs(user.id, limit=limit + 1, before_id=cursor)
    page, more = records[:limit], len(records) > limit
    base = base_url(request)
    body: FileList = {"files": [file_json(r, base) for r in page], "next_cursor": None}
    headers: dict[str, str] = {}
    if more:
        body["next_cursor"] = cursor_text = str(page[-1].id)
        next_url = request.rel_url.update_query(cursor=cursor_text, limit=limit)
        headers["Link"] = f'<{base}{next_url}>; rel="next"'
    return reply(FileList, body, headers=headers)


_DIGITS = re.compile(r"[0-9]{1,19}")
INT64_MAX = (1 << 63) - 1


def _int_param(
    request: web.Request, key: str, default: int | None, low: int, high: int | None
) -> Any:
    raw = request.query.get(key)
    if raw is None:
        return default
    # ASCII digits only (str.isdigit() accepts "²"), and within a 64-bit database integer.
    high = INT64_MAX if high is None else high
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise BadRequest(f"?{key}= must be an integer in {low}..{high}.", parameter=key)
    return int(raw)


def file_json(record: FileRecord, base: str) -> FileInfo:
    return {
        "hash": record.hash,
        "size": record.size,
        "name": record.name,
        "content_type": record.content_type,
        "uploaded_at": record.created_at.isoformat(),
        "url": f"{base}/files/{record.hash}",
    }
