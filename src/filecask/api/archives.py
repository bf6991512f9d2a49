"""/archive/{id}/: a folder of the archive root or a saved bundle, streamed as a ZIP;
/archives: create, list and delete bundles.

An archive is never written anywhere: its exact layout is planned from metadata, then
any byte range of it is produced on demand (headers from the plan, file data by zero-copy
sendfile), so Content-Length is exact and downloads resume.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from email.utils import formatdate

from aiohttp import hdrs, web

from filecask.api.common import base_url, read_json_object, require_user
from filecask.api.files import content_disposition
from filecask.api.models import BundleCreated, BundleInfo, BundleList, Manifest, reply
from filecask.api.spec import (
    DOWNLOAD_ERRORS,
    IF_NONE_MATCH,
    LOCATION,
    RANGE_PARAMETERS,
    SIGNED_IN,
    download_replies,
    hash_param,
    operation,
    param,
)
from filecask.archives.manifest import parse_manifest
from filecask.archives.plans import (
    Archive,
    ArchiveChanged,
    DirectoryFile,
    directory_archive,
    open_directory_file,
)
from filecask.archives.zipplan import DataSlice, HeaderBytes, ZipPlan
from filecask.errors import InvalidHash
from filecask.hashes import parse_hash
from filecask.http.ranges import if_none_match_matches
from filecask.http.responses import send_body, write_blob_range
from filecask.http.sendfile import send_file_range, write_within
from filecask.offload import run_owned
from filecask.services import SERVICES, Services
from filecask.storage.meta import BundleSummary

archive_routes = web.RouteTableDef()
bundle_routes = web.RouteTableDef()

DELAYED_CHUNK = 64 << 10
"""With a delay configured, file data goes out in pieces this big, one pause after each."""
BATCH = 128 << 10
"""Headers and small files are written in buffers of about this size (one per client in
flight, so 1,000 slow clients hold at most ~128 MiB of them; larger batches measured
faster still, but the memory under many slow clients is the limit)."""
BATCH_PIECES = 256
"""...or of at most this many pieces: planning a piece is CPU on the event loop, so a
batch of tiny members (a bundle of 11,500 16-byte files) still gives the loop a turn
every few milliseconds."""
SMALL_SLICE = 16 << 10
"""Folder files' data up to this size is read into the batch instead of sendfile()d."""


@archive_routes.get("/archive/{id}", allow_head=True)
@archive_routes.get("/archive/{id}/", allow_head=True)
@operation(
    "downloadArchive",
    download_replies(archive=True),
    DOWNLOAD_ERRORS,
    parameters=[
        param(
            "id",
            "path",
            "A bundle id (64 hex digits, if such a bundle exists) or the name of a sub-folder "
            "of the archive root: one plain path segment of at most 255 bytes, not starting "
            "with '.', without '/', '\\\\' or control characters (else 400).",
            {"type": "string", "minLength": 1},
        ),
        *RANGE_PARAMETERS,
        IF_NONE_MATCH,
    ],
    variants={"GET /archive/{id}": "downloadArchiveNoSlash"},
)
async def download_archive(request: web.Request) -> web.StreamResponse:
    """A folder of the archive root (or, with the file API, a saved bundle), as a ZIP."""
    services = request.app[SERVICES]
    archive = await _resolve(services, request.match_info["id"])
    headers = {
        hdrs.ETAG: archive.etag,
        hdrs.ACCEPT_RANGES: "bytes",
        # A folder can change under the same URL: caches must revalidate (cheap: ETag).
        hdrs.CACHE_CONTROL: "no-cache",
        hdrs.CONTENT_DISPOSITION: content_disposition("attachment", archive.filename),
        "X-Content-Type-Options": "nosniff",
    }
    if archive.last_modified is not None:
        headers[hdrs.LAST_MODIFIED] = _http_date(archive.last_modified)
    if if_none_match_matches(request.headers.get(hdrs.IF_NONE_MATCH), archive.etag):
        return web.Response(status=304, headers={hdrs.ETAG: archive.etag})
    writer = _ZipRangeWriter(request, services, archive.plan)
    return await send_body(
        request,
        size=archive.plan.size,
        content_type="application/zip",
        headers=headers,
        write=writer.write,
    )


async def _resolve(services: Services, archive_id: str) -> Archive:
    """A 64-hex id names a bundle if one exists; anything else is a folder name."""
    if len(archive_id) == 64 and services.settings.file_api:
        try:
            planned = await services.bundle_plans.get(services.meta, parse_hash(archive_id))
        except InvalidHash:  # 64 characters but not hex: a folder name
            planned = None
        if planned is not None:
            return planned
    return await directory_archive(
        services.settings.archives_dir, archive_id, services.meta, services.plans
    )


class _ZipRangeWriter:
    """Produces archive[start:end]: header bytes from the plan, member data by sendfile.

    Headers and the data of small members are gathered into one buffer of up to BATCH bytes
    (small files, of a folder or of the disk store, read together in one worker-thread
    hop) and written at once: one write per few dozen 4 KiB files instead of a flush, an
    open and a sendfile for each (a bundle of 11,500 tiny files was 2.5 s of event-loop
    work per GET). Larger members go by sendfile; one file stays open across consecutive
    slices of the same source, and every fd is closed when the range ends, the client
    leaves or the handler is cancelled.
    """

    def __init__(self, request: web.Request, services: Services, plan: ZipPlan) -> None:
        self._request = request
        self._services = services
        self._plan = plan
        self._delay = services.settings.archive_delay
        self._pending: list[HeaderBytes | DataSlice] = []
        self._pending_size = 0
        self._open_blob = services.blobs.blob_opener()

    async def write(self, response: web.StreamResponse, start: int, end: int) -> int:
        written = 0
        open_source: object = None
        fd: int | None = None
        try:
            for segment in self._plan.segments(start, end):
                if self._batches(segment):
                    self._pending.append(segment)
                    self._pending_size += _length(segment)
                    if self._pending_size >= BATCH or len(self._pending) >= BATCH_PIECES:
                        written += await self._flush(response)
                    continue
                written += await self._flush(response)
                assert isinstance(segment, DataSlice)
                if segment.member.source != open_source:
                    if fd is not None:
                        os.close(fd)
                        fd = None
                    fd = await self._open(segment)
                    open_source = segment.member.source
                written += await self._send_slice(response, fd, segment)
            written += await self._flush(response)
        finally:
            if fd is not None:
                os.close(fd)
        return written

    def _batches(self, segment: HeaderBytes | DataSlice) -> bool:
        """Headers always (unless pausing between pieces), file data when it is small and
        can be read in a worker thread (a folder's file, a blob on disk)."""
        if isinstance(segment, HeaderBytes):
            return True
        if self._delay or segment.length > SMALL_SLICE:
            return False
        source = segment.member.source
        return isinstance(source, DirectoryFile) or (
            isinstance(source, str) and self._open_blob is not None
        )

    async def _flush(self, response: web.StreamResponse) -> int:
        if not self._pending:
            return 0
        pending, self._pending, self._pending_size = self._pending, [], 0
        if any(isinstance(p, DataSlice) for p in pending):
            data = await asyncio.get_running_loop().run_in_executor(
                None, _gather, pending, self._open_blob
            )
        else:
            data = b"".join(p.data for p in pending if isinstance(p, HeaderBytes))
        # Bounded by --send-timeout: a client that stops reading is dropped, and with it
        # the batch this write holds.
        await write_within(self._request, response, data)
        await self._pause()
        return len(data)

    async def _send_slice(
        self, response: web.StreamResponse, fd: int | None, piece: DataSlice
    ) -> int:
        """By sendfile from `fd`, or, for a blob store without fds (S3), streamed."""
        step = DELAYED_CHUNK if self._delay else piece.length
        written = 0
        for offset in range(piece.offset, piece.offset + piece.length, max(step, 1)):
            length = min(step, piece.offset + piece.length - offset)
            if fd is None:
                source = piece.member.source
                assert isinstance(source, str)
                blobs = self._services.blobs
                written += await write_blob_range(
                    self._request, response, blobs, source, offset, length
                )
            else:
                await send_file_range(self._request, response, fd, offset, length)
                written += length
            await self._pause()
        return written

    async def _open(self, piece: DataSlice) -> int | None:
        source = piece.member.source
        if isinstance(source, DirectoryFile):
            return await run_owned(open_directory_file, source, release=os.close)
        assert isinstance(source, str)
        blobs = self._services.blobs
        if not blobs.gives_fds:  # ranged reads follow; a missing blob fails the first one
            return None
        opened = await blobs.open_blob(source)
        return opened.fd

    async def _pause(self) -> None:
        if self._delay:
            await asyncio.sleep(self._delay)


def _length(segment: HeaderBytes | DataSlice) -> int:
    return len(segment.data) if isinstance(segment, HeaderBytes) else segment.length


def _gather(
    pending: list[HeaderBytes | DataSlice], open_blob: Callable[[str], int] | None
) -> bytes:
    """Call from an executor: the pending headers and small files' data, in order (a file
    met in consecutive slices is opened once)."""
    parts: list[bytes] = []
    source: object = None
    fd: int | None = None
    try:
        for piece in pending:
            if isinstance(piece, HeaderBytes):
                parts.append(piece.data)
                continue
            if piece.member.source != source:
                if fd is not None:
                    os.close(fd)
                    fd = None
                source = piece.member.source
                if isinstance(source, DirectoryFile):
                    fd = open_directory_file(source)
                else:
                    assert isinstance(source, str)
                    assert open_blob is not None
                    fd = open_blob(source)
            assert fd is not None
            data = os.pread(fd, piece.length, piece.offset)
            if len(data) != piece.length:
                if isinstance(source, DirectoryFile):
                    raise ArchiveChanged(source.path)
                raise EOFError(f"blob {source} is shorter than its recorded size")
            parts.append(data)
    finally:
        if fd is not None:
            os.close(fd)
    return b"".join(parts)


@bundle_routes.post("/archives")
@operation(
    "createBundle",
    {
        200: ("The caller already held this bundle.", BundleCreated, {"Location": LOCATION}),
        201: ("Saved.", BundleCreated, {"Location": LOCATION}),
    },
    (400, 403, 409, 413, *SIGNED_IN),
    body=Manifest,
)
async def create_bundle(request: web.Request) -> web.Response:
    """Save a bundle of stored files, served at /archive/{id}/."""
    # `{"name": "holiday.zip", "files": [{"hash": ..., "path": "day1/1.jpg"}, ...]}`.
    # Every hash must be one of the caller's files (403 `not-held` otherwise, naming them):
    # a bundle keeps its content stored, counted in its holders' usage, so it may only keep
    # what its maker holds. Limits (settings): `--max-bundle-size` bytes of body and of
    # manifest and `--max-bundle-entries` files (413), `--max-bundles-per-user` (409).
    services = request.app[SERVICES]
    settings = services.settings
    user = await require_user(request)
    body = await read_json_object(request, limit=settings.max_bundle_size)
    # Checking 11,500 entries is 0.1 s of CPU: in a worker thread, not on the event loop.
    manifest = await asyncio.get_running_loop().run_in_executor(
        None,
        functools.partial(
            parse_manifest,
            body,
            max_entries=settings.max_bundle_entries,
            max_bytes=settings.max_bundle_size,
        ),
    )
    created = await services.files.create_bundle(
        user, manifest, max_bundles=settings.max_bundles_per_user
    )
    url = f"{base_url(request)}/archive/{manifest.id}/"
    answer: BundleCreated = {"id": manifest.id, "name": manifest.name, "url": url}
    return reply(BundleCreated, answer, status=201 if created else 200, headers={"Location": url})


@bundle_routes.get("/archives")
@operation(
    "listBundles",
    {200: ("The bundles.", BundleList)},
    (400, *SIGNED_IN),
    parameters=[
        hash_param(
            "hash",
            "Only the bundles naming this content (what keeps it stored after the caller "
            "deletes the file). Checked before the credentials.",
            "query",
        )
    ],
)
async def list_bundles(request: web.Request) -> web.Response:
    """The caller's bundles."""
    # With `?hash=`, only those that name this content (what keeps it stored, and counted
    # in the caller's usage, after they delete the file).
    services = request.app[SERVICES]
    raw_hash = request.query.get("hash")
    hex_hash = None if raw_hash is None else parse_hash(raw_hash)
    user = await require_user(request)
    bundles = await services.meta.list_bundles(user.id, hex_hash=hex_hash)
    base = base_url(request)
    return reply(BundleList, {"archives": [bundle_json(b, base) for b in bundles]})


@bundle_routes.delete("/archives/{id}")
@operation(
    "deleteBundle",
    {204: "Dropped."},
    (400, *SIGNED_IN, 403, 404),
    parameters=[hash_param("id", "A bundle's id: the SHA-256 of its canonical manifest.")],
)
async def delete_bundle(request: web.Request) -> web.Response:
    """Drop the caller's bundle.

    The id is checked before the credentials."""
    services = request.app[SERVICES]
    bundle_id = parse_hash(request.match_info["id"])
    user = await require_user(request)
    await services.files.delete_bundle(user, bundle_id)
    return web.Response(status=204)


def bundle_json(bundle: BundleSummary, base: str) -> BundleInfo:
    return {
        "id": bundle.id,
        "name": bundle.name,
        "files": bundle.files,
        "bytes": bundle.bytes,
        "created_at": bundle.created_at.isoformat(),
        "url": f"{base}/archive/{bundle.id}/",
    }


def _http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)
