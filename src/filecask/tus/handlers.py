"""/uploads/: resumable uploads, tus 1.0 (core, creation, termination, checksum, expiration).

Why tus: a large file, or any file sent through a proxy that caps a request body, can be
sent in pieces and resumed from the server's offset after a cut, by any tus client. A
finished upload becomes a stored file exactly as `POST /files` makes one (same hashing,
dedup, reference and quota: `FileStore.store_staged`). See `filecask.tus.parts` for how
the partial bytes are kept durable and shared by every worker.

Every response carries `Tus-Resumable: 1.0.0`, errors included (still problem+json
bodies, with the statuses tus mandates: 412, 409, 410, 415, 423, 460).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from filecask.api.common import base_url, require_user
from filecask.api.spec import BINARY, Headers, Json, Operation, Reply, operation, param
from filecask.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    FilecaskError,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    QuotaExceeded,
    UnsupportedMediaType,
)
from filecask.http.problem import from_error, from_http_exception
from filecask.http.protocol import receive, would_wait
from filecask.names import validate_file_name
from filecask.services import SERVICES, Services
from filecask.storage.changes import Topic
from filecask.storage.meta import Upload, User
from filecask.tus.parts import UPLOAD_ID, DataLost, TusFiles, sweep

log = logging.getLogger("filecask.uploads")

routes = web.RouteTableDef()

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,checksum,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
CHECKSUMS: dict[str, Callable[[], Any]] = {
    "sha1": lambda: hashlib.sha1(usedforsecurity=False),
    "sha256": hashlib.sha256,
}
METADATA_MAX = 4096
RECEIVE_CHUNK = 256 << 10
WRITE_CHUNK = 1 << 20
"""Bytes gathered before one executor write: a PATCH body is never held in memory."""
IDLE_WRITE = 64 << 10
"""Bytes held back at most while a PATCH waits for its client (as the disk store's)."""
SWEEP_INTERVAL = 60.0
USERS_WATCH = 0.5
"""How often the sweeper looks whether a user was removed (a memory load)."""
_DIGITS = re.compile(r"[0-9]{1,19}")
_METADATA_KEY = re.compile(r"[!-+\--~]+")
"""Printable ASCII without space and comma."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The declarations of the routes (`filecask.api.spec`): every answer carries Tus-Resumable.
TUS_HEADERS = {"Tus-Resumable": ("Always `1.0.0`.", "^1\\.0\\.0$")}
UPLOAD = param("id", "path", "The upload's id, from the creation's `Location`.")
OFFSET = ("The new offset.", "^[0-9]+$")
FILE_HEADERS = {
    "Upload-Expires": "RFC 9110 HTTP-date after which the upload is gone.",
    "Filecask-Hash?": "The stored file's SHA-256, once complete.",
    "Filecask-File?": "The stored file's URL, once complete.",
}
OWNED = {403: "Not your upload.", 404: "No such upload.", 410: "Expired."}


def _tus_operation(
    operation_id: str,
    replies: Mapping[int, str | tuple[str, None, Headers]],
    *parameters: Json,
    **extra: Any,
) -> Operation:
    """A tus request's declaration: Tus-Resumable on every answer, and in every request
    after the path's parameters; 400, 401 and 412 from every one."""
    version = "Must be `1.0.0` (else 412 with `Tus-Version`)."
    common = {400: "A malformed tus header.", 401: "Sign in.", 412: "Not tus 1.0.0."}
    answers: dict[int, Reply] = {}
    for status, reply in (common | dict(replies)).items():
        text, _, headers = (reply, None, {}) if isinstance(reply, str) else reply
        answers[status] = (text, None, TUS_HEADERS | dict(headers))
    path = [p for p in parameters if p["in"] == "path"]
    path.append(param("Tus-Resumable", "header", version, {"const": TUS_VERSION}, True))
    path[-1]["schema"] = {"type": "string"} | path[-1]["schema"]
    everything = [*path, *(p for p in parameters if p["in"] != "path")]
    return operation(operation_id, answers, parameters=everything, **extra)


def _counter(name: str) -> Json:
    return param(name, "header", "", {"type": "string", "pattern": "^[0-9]{1,19}$"}, True)


def _tus(handler: Handler) -> Handler:
    """Put `Tus-Resumable` on every response, errors included (the problem middleware
    outside would answer them without it)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except FilecaskError as error:
            response = from_error(error, request)
            if error.status == ChecksumMismatch.status:
                response.set_status(error.status, "Checksum Mismatch")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = from_http_exception(exc, request)
        response.headers["Tus-Resumable"] = TUS_VERSION
        if response.status == PreconditionFailed.status:
            response.headers["Tus-Version"] = TUS_VERSION
        return response

    return wrapped


@routes.route("OPTIONS", "/uploads/")
@_tus
@operation(
    "tusDiscover",
    {
        204: (
            "What the server speaks.",
            None,
            TUS_HEADERS
            | {
                "Tus-Version": f"`{TUS_VERSION}`.",
                "Tus-Extension": f"`{TUS_EXTENSIONS}`.",
                "Tus-Max-Size": "`--max-upload-size`, in bytes.",
                "Tus-Checksum-Algorithm": f"`{','.join(CHECKSUMS)}`.",
            },
        )
    },
)
async def discover(request: web.Request) -> web.StreamResponse:
    """tus discovery: version, extensions, maximum size, checksums"""
    # What this server speaks; no sign-in needed.
    settings = request.app[SERVICES].settings
    return web.Response(
        status=204,
        headers={
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Max-Size": str(settings.max_upload_size),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
        },
    )


@routes.post("/uploads/")
@_tus
@_tus_operation(
    "tusCreate",
    {
        201: (
            "Created; `Location` is the upload's URL.",
            None,
            {"Location": "The upload's URL.", **FILE_HEADERS},
        ),
        404: "The user was removed meanwhile.",
        413: "Too large, or over quota (reservations included).",
        429: (
            "Too many open uploads (`too-many-uploads`).",
            None,
            {"Retry-After": ("Seconds until the soonest open upload expires.", "^[0-9]+$")},
        ),
    },
    _counter("Upload-Length"),
    param(
        "Upload-Metadata",
        "header",
        "Comma-separated `key base64(value)` pairs; ASCII only (any other byte is 400).",
        {"type": "string", "pattern": "^[ -~]*$"},
    ),
)
async def create(request: web.Request) -> web.StreamResponse:
    """Create a resumable upload of Upload-Length bytes

    `Upload-Metadata` may carry `filename` (base64), the stored file's name. Upload-Length
    is reserved against the user's quota until the upload completes, is deleted or expires:
    413 when it exceeds `--max-upload-size`, or when the user's usage, the reservations of
    their open uploads and this one together exceed the quota; 429 when they have
    `--max-open-uploads` open already. Upload-Length 0 completes at once."""
    _check_version(request)
    services = request.app[SERVICES]
    user = await require_user(request)
    if "Upload-Defer-Length" in request.headers:
        raise BadRequest("Upload-Defer-Length is not supported: send Upload-Length.")
    length = _int_header(request, "Upload-Length")
    limit = services.settings.max_upload_size
    if length > limit:
        raise PayloadTooLarge(
            f"The upload of {length} bytes exceeds the limit of {limit} bytes.", limit=limit
        )
    raw_metadata = request.headers.get("Upload-Metadata", "").strip(" \t")  # HTTP's OWS
    name = _file_name(raw_metadata)
    now = datetime.now(UTC)
    upload = Upload(
        id=secrets.token_hex(16),
        user_id=user.id,
        length=length,
        offset=0,
        name=name,
        metadata=raw_metadata,
        created_at=now,
        expires_at=_expiry(services, now),
    )
    await services.meta.create_upload(upload, max_open=services.settings.max_open_uploads)
    headers = {
        "Location": f"{base_url(request)}/uploads/{upload.id}",
        "Upload-Expires": _http_date(upload.expires_at),
    }
    if length == 0:  # nothing to send: complete on creation
        files = TusFiles(services.blobs.tmp_dir)
        fd = await files.lock(upload.id, create=True)
        assert fd is not None  # created
        hex_hash = await services.files.finish(_finish(services, files, user, upload, fd))
        headers.update(_file_headers(request, hex_hash))
    return web.Response(status=201, headers=headers)


@routes.head("/uploads/{id}")
@_tus
@_tus_operation(
    "tusStatus",
    {
        200: (
            "Upload-Offset bytes are stored durably.",
            None,
            {
                "Upload-Offset": ("Bytes received.", OFFSET[1]),
                "Upload-Length": ("Bytes announced.", OFFSET[1]),
                **FILE_HEADERS,
            },
        ),
        **OWNED,
    },
    UPLOAD,
)
async def status(request: web.Request) -> web.StreamResponse:
    """The durable offset (and, once complete, the stored file)"""
    # The stored file (`Filecask-Hash`, `Filecask-File`) until the upload expires.
    _check_version(request)
    services = request.app[SERVICES]
    user = await require_user(request)
    upload = await _owned(request, services, user)
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Length": str(upload.length),
        "Upload-Expires": _http_date(upload.expires_at),
        "Cache-Control": "no-store",
    }
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    if upload.hash is not None:
        headers.update(_file_headers(request, upload.hash))
    return web.Response(status=200, headers=headers)


@routes.patch("/uploads/{id}")
@_tus
@_tus_operation(
    "tusAppend",
    {
        204: (
            "Stored durably up to the new Upload-Offset.",
            None,
            {"Upload-Offset": OFFSET, **FILE_HEADERS},
        ),
        **OWNED,
        408: "The body stalled; what arrived is kept.",
        409: "Upload-Offset is not the upload's offset.",
        413: "Past Upload-Length, or over quota on completion.",
        415: "Not application/offset+octet-stream.",
        423: "Another PATCH is writing to this upload.",
        460: "The body does not match Upload-Checksum; discarded.",
        507: "The disk is full.",
    },
    UPLOAD,
    _counter("Upload-Offset"),
    param("Upload-Checksum", "header", "`sha1 <base64>` or `sha256 <base64>` of the body."),
    body={"required": True, "content": {OFFSET_TYPE: {"schema": BINARY}}},
)
async def append(request: web.Request) -> web.StreamResponse:
    """Append bytes at Upload-Offset

    The final byte stores the file like `POST /files` (hash, dedup, quota) and the answer
    carries `Filecask-Hash` and `Filecask-File`. A cut body keeps what arrived unless
    `Upload-Checksum` was given. Only a PATCH that adds bytes moves `Upload-Expires`."""
    # The new offset is committed only once the bytes are fsynced; a checksum needs the
    # whole body; an empty PATCH cannot keep an upload alive.
    _check_version(request)
    if request.content_type != OFFSET_TYPE:
        raise UnsupportedMediaType(f"A PATCH body must be sent as {OFFSET_TYPE}.")
    offset = _int_header(request, "Upload-Offset")
    checksum = _checksum(request.headers.get("Upload-Checksum"))
    services = request.app[SERVICES]
    user = await require_user(request)
    upload = await _owned(request, services, user)
    if upload.hash is not None:
        if offset == upload.length and not request.content_length:
            return _patched(request, upload.length, upload.expires_at, upload.hash)
        raise Conflict("This upload is complete.", offset=upload.length)
    _check_offset(upload, offset, request.content_length)
    files = TusFiles(services.blobs.tmp_dir)
    fd = await files.lock(upload.id, create=True)
    assert fd is not None  # created
    handed_over = False
    failed = True
    try:
        current = await services.meta.get_upload(upload.id)  # as it is under the lock
        if current is None:
            await files.remove(upload.id, fd)
            handed_over = True
            raise NotFound("No upload with this id.")
        _check_offset(current, offset, request.content_length)
        try:
            await files.truncate(fd, offset)
        except DataLost:
            await services.meta.delete_upload(upload.id)
            await files.remove(upload.id, fd)
            handed_over = True
            raise
        new_offset, expires_at = await _receive_into(
            request, services, files, fd, current, checksum
        )
        if new_offset < current.length:
            failed = False
            return _patched(request, new_offset, expires_at)
        handed_over = True
        hex_hash = await services.files.finish(_finish(services, files, user, current, fd))
        failed = False
        return _patched(request, new_offset, expires_at, hex_hash)
    finally:
        if not handed_over:
            # Shielded: a handler cancelled (its client gone) must still let go of the file.
            task = asyncio.ensure_future(_let_go(services, files, upload.id, fd, failed))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)


async def _let_go(
    services: Services, files: TusFiles, upload_id: str, fd: int, failed: bool
) -> None:
    """Close the upload's file after a PATCH; after a failed one, remove it instead if
    its row is gone (its user was removed, or it was deleted, while the PATCH wrote) or
    it expired meanwhile (the row goes too): no one else can, since the PATCH held the
    file's lock (the sweeper skips a locked file)."""
    try:
        current = await services.meta.get_upload(upload_id) if failed else None
        if failed and (current is None or current.expires_at <= datetime.now(UTC)):
            if current is not None:
                await services.meta.delete_upload(upload_id)
            await files.remove(upload_id, fd)
            return
    except Exception:
        log.exception("could not tell whether upload %s still exists", upload_id)
    await files.close(fd)


@routes.delete("/uploads/{id}")
@_tus
@_tus_operation(
    "tusTerminate",
    {204: "Removed.", **OWNED, 423: "A PATCH is writing to this upload."},
    UPLOAD,
)
async def terminate(request: web.Request) -> web.StreamResponse:
    """Remove the upload and its bytes"""
    # tus termination; 423 while a PATCH writes.
    _check_version(request)
    services = request.app[SERVICES]
    user = await require_user(request)
    upload = await _owned(request, services, user)
    files = TusFiles(services.blobs.tmp_dir)
    fd = await files.lock(upload.id, create=False)
    try:
        await services.meta.delete_upload(upload.id)
    finally:
        await files.remove(upload.id, fd)
    return web.Response(status=204)


async def sweeper(app: web.Application) -> AsyncIterator[None]:
    """Every worker removes expired uploads and stray tus files now and then, and as soon
    as it sees a user removed (at this instance or another one: the USERS stamp moves,
    carried between machines by the change feed), so the partial files of a removed user's
    uploads leave this instance's tmp/ too (`sweep` is safe when several run at once)."""
    task = asyncio.create_task(_sweep_forever(app[SERVICES]))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sweep_forever(services: Services) -> None:
    expiry = services.settings.upload_expiry
    interval = min(SWEEP_INTERVAL, max(1.0, expiry / 4))
    files = TusFiles(services.blobs.tmp_dir)
    stamps = services.meta.stamps
    seen = stamps.read(Topic.USERS)
    loop = asyncio.get_running_loop()
    due = loop.time() + interval
    while True:
        await asyncio.sleep(USERS_WATCH)
        users = stamps.read(Topic.USERS)  # a memory load
        if users == seen and loop.time() < due:
            continue
        seen, due = users, loop.time() + interval
        try:
            removed = await sweep(services.meta, files)
        except Exception:
            log.exception("sweeping expired uploads failed; trying again later")
            continue
        for item in removed:
            log.info("removed %s upload %s", "expired" if item.expired else "stray", item.name)


# ---------------------------------------------------------------------------- helpers


def _check_version(request: web.Request) -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise PreconditionFailed(f"Send Tus-Resumable: {TUS_VERSION} (the only version spoken).")


def _int_header(request: web.Request, name: str) -> int:
    raw = request.headers.get(name)
    if raw is None:
        raise BadRequest(f"The {name} header is required.", header=name)
    if not _DIGITS.fullmatch(raw.strip()):
        raise BadRequest(f"{name} must be a non-negative integer.", header=name)
    return int(raw)


def _file_name(raw: str) -> str | None:
    """The `filename` of `Upload-Metadata` (comma-separated `key base64(value)` pairs),
    validated like any upload's name. The header is ASCII by construction (tus 1.0: ASCII
    keys, base64 values); any other byte is refused, so what is stored and echoed back in
    a `HEAD` is always a valid header value."""
    if not raw.isascii():
        raise BadRequest(
            "Upload-Metadata must be ASCII: keys are printable ASCII, values base64 (tus 1.0).",
            header="Upload-Metadata",
        )
    if len(raw) > METADATA_MAX:
        raise BadRequest(f"Upload-Metadata is limited to {METADATA_MAX} bytes.")
    name = None
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = pair.partition(" ")
        if not _METADATA_KEY.fullmatch(key):
            raise BadRequest("Upload-Metadata keys are printable ASCII without spaces.")
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"The Upload-Metadata value of {key!r} is not base64.") from None
        if key == "filename" and decoded:
            try:
                name = validate_file_name(decoded.decode())
            except UnicodeDecodeError:
                raise BadRequest("The filename in Upload-Metadata is not UTF-8.") from None
    return name


def _checksum(raw: str | None) -> tuple[Any, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>` as (a fresh hasher, the digest)."""
    if raw is None:
        return None
    algorithm, _, encoded = raw.strip().partition(" ")
    factory = CHECKSUMS.get(algorithm.lower())
    if factory is None:
        raise BadRequest(
            f"Unsupported checksum algorithm {algorithm!r}; use one of {', '.join(CHECKSUMS)}."
        )
    try:
        return factory(), base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("The Upload-Checksum digest is not base64.") from None


async def _owned(request: web.Request, services: Services, user: User) -> Upload:
    upload_id = request.match_info["id"]
    upload = await services.meta.get_upload(upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
    if upload is None:
        raise NotFound("No upload with this id.")
    if upload.user_id != user.id:
        raise Forbidden("Only the user who created an upload may use it.")
    if upload.expires_at <= datetime.now(UTC):
        raise Gone("This upload has expired; start a new one.")
    return upload


def _check_offset(upload: Upload, offset: int, declared: int | None) -> None:
    if upload.hash is not None or offset != upload.offset:
        raise Conflict(
            f"Upload-Offset is {offset} but the upload is at {upload.offset}.",
            offset=upload.offset,
        )
    if declared is not None and offset + declared > upload.length:
        raise PayloadTooLarge(
            f"The body would take the upload past its Upload-Length of {upload.length}.",
            limit=upload.length - offset,
        )


class _Cursor:
    """How many bytes of one PATCH are on disk (updated only after a write returned)."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = 0


async def _receive_into(
    request: web.Request,
    services: Services,
    files: TusFiles,
    fd: int,
    upload: Upload,
    checksum: tuple[Any, bytes] | None,
) -> tuple[int, datetime]:
    """Write the body at the upload's offset, fsync, commit the new offset; returns it and
    the expiry, moved only if bytes were added."""
    settings = services.settings
    room = upload.length - upload.offset
    cursor = _Cursor()
    pending: asyncio.Future[None] | None = None
    pending_size = 0
    received = 0
    buffer = bytearray()

    async def flush() -> None:
        nonlocal pending, pending_size
        position = upload.offset + cursor.written
        pending_size = len(buffer)
        pending = asyncio.ensure_future(
            files.write(fd, bytes(buffer), position, settings.min_free_space)
        )
        buffer.clear()
        await asyncio.shield(pending)  # a cancelled handler must not close fd under it
        cursor.written += pending_size
        pending = None

    content = request.content
    try:
        while True:
            # Before waiting for the client, write what it sent (if IDLE_WRITE or more):
            # a stalled PATCH holds less than that of its body, not up to WRITE_CHUNK.
            if len(buffer) >= IDLE_WRITE and would_wait(content):
                await flush()
            chunk = await receive(content.read(RECEIVE_CHUNK), settings.body_timeout)
            if not chunk:
                break
            received += len(chunk)
            if received > room:
                raise PayloadTooLarge(
                    f"The body would take the upload past its Upload-Length of {upload.length}.",
                    limit=room,
                )
            if checksum is not None:
                checksum[0].update(chunk)
            buffer += chunk
            if len(buffer) >= WRITE_CHUNK:
                await flush()
        if buffer:
            await flush()
    except BaseException:
        # Cut (client gone, stall, too long): keep what is on disk, as tus asks, unless a
        # checksum covers the whole body. Shielded: it must finish even when cancelled.
        task = asyncio.ensure_future(
            _keep_cut(services, files, fd, upload, cursor, pending, pending_size, checksum)
        )
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        raise
    await files.sync(fd)
    if checksum is not None and checksum[0].digest() != checksum[1]:
        await files.truncate(fd, upload.offset)
        raise ChecksumMismatch(
            "The body does not match Upload-Checksum; it was discarded.", offset=upload.offset
        )
    if not cursor.written:
        return upload.offset, upload.expires_at  # nothing added: the expiry stays
    new_offset = upload.offset + cursor.written
    return new_offset, await _advance(services, upload, new_offset)


async def _keep_cut(
    services: Services,
    files: TusFiles,
    fd: int,
    upload: Upload,
    cursor: _Cursor,
    pending: asyncio.Future[None] | None,
    pending_size: int,
    checksum: tuple[Any, bytes] | None,
) -> None:
    if pending is not None:
        await asyncio.wait([pending])
        if not pending.cancelled() and pending.exception() is None:
            cursor.written += pending_size
    try:
        if checksum is not None or not cursor.written:
            await files.truncate(fd, upload.offset)
            return
        await files.sync(fd)
        await _advance(services, upload, upload.offset + cursor.written)
    except (NotFound, Gone):
        pass  # the upload was removed or expired meanwhile: the handler removes its file
    except Exception:
        log.exception("could not keep the bytes of a cut PATCH of upload %s", upload.id)


async def _advance(services: Services, upload: Upload, new_offset: int) -> datetime:
    """Commit the new offset and a fresh expiry (bytes were added); the expiry."""
    expires_at = _expiry(services, datetime.now(UTC))
    moved = await services.meta.advance_upload(
        upload.id, old_offset=upload.offset, new_offset=new_offset, expires_at=expires_at
    )
    if not moved:
        current = await services.meta.get_upload(upload.id)
        if current is not None and current.expires_at <= datetime.now(UTC):
            # Expired while the body arrived: its reservation ended then, and a late
            # PATCH must not bring it back (the caller drops its bytes).
            raise Gone("This upload expired while the body arrived; start a new one.")
        raise NotFound("The upload was removed meanwhile.")
    return expires_at


async def _finish(services: Services, files: TusFiles, user: User, upload: Upload, fd: int) -> str:
    """Hash the complete file and store it like any upload; `fd` (and its lock) pass to
    the blob store. Over quota, the upload is removed with its bytes (413)."""
    try:
        staged = await services.blobs.adopt(fd, files.path_of(upload.id))
    except BaseException:
        await files.close(fd)
        raise
    try:
        record, _ = await services.files.store_staged(
            user, staged, name=upload.name, upload_id=upload.id
        )
    except QuotaExceeded:
        await services.meta.delete_upload(upload.id)
        raise
    await services.meta.finish_upload(upload.id, record.hash)
    return record.hash


def _patched(
    request: web.Request, offset: int, expires_at: datetime, hex_hash: str | None = None
) -> web.Response:
    headers = {"Upload-Offset": str(offset), "Upload-Expires": _http_date(expires_at)}
    if hex_hash is not None:
        headers.update(_file_headers(request, hex_hash))
    return web.Response(status=204, headers=headers)


def _file_headers(request: web.Request, hex_hash: str) -> dict[str, str]:
    return {"Filecask-Hash": hex_hash, "Filecask-File": f"{base_url(request)}/files/{hex_hash}"}


def _expiry(services: Services, now: datetime) -> datetime:
    return now + timedelta(seconds=services.settings.upload_expiry)


def _http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)
