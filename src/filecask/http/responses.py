"""Sending a body of known size whose bytes can be produced for any range: stored files
and ZIP archives alike, with one implementation of Range, If-Range and HEAD.

The writer is asked for exactly the bytes of each range and must produce exactly that
many; the count is checked, and a short or long body aborts the connection instead of
ending a response whose length is a lie.

Every body sent from here is bounded by `--send-timeout`: `send_body` puts it on the
request (`SEND_TIMEOUT`) before the response starts, and every write of it, ours, the
range writer's `write_within` and `send_file_range`, drops a client that takes nothing
for that long, so a non-reading client cannot pin fds and buffers.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from filecask.http.problem import STREAMING
from filecask.http.ranges import ByteRange, if_range_matches, parse_range, plan_multipart
from filecask.http.sendfile import SEND_TIMEOUT, write_within
from filecask.services import SERVICES
from filecask.storage.blobs import BlobStore

RangeWriter = Callable[[web.StreamResponse, int, int], Awaitable[int]]
"""Writes body[start:end] onto the response and returns how many bytes it wrote."""


class BodyLengthError(RuntimeError):
    """The body producer wrote more or fewer bytes than the response promised."""


async def send_body(
    request: web.Request,
    *,
    size: int,
    content_type: str,
    headers: dict[str, str],
    write: RangeWriter,
) -> web.StreamResponse:
    ranges: list[ByteRange] | None = None
    if if_range_matches(request.headers.get(hdrs.IF_RANGE), headers[hdrs.ETAG]):
        ranges = parse_range(request.headers.get(hdrs.RANGE), size)
    response = web.StreamResponse(headers=headers)
    parts: list[tuple[bytes, ByteRange]]
    trailer = b""
    if ranges is None:
        response.content_type = content_type
        response.content_length = size
        parts = [(b"", ByteRange(0, size - 1))] if size else []
    elif len(ranges) == 1:
        response.set_status(206)
        response.content_type = content_type
        response.content_length = ranges[0].length
        response.headers[hdrs.CONTENT_RANGE] = ranges[0].content_range(size)
        parts = [(b"", ranges[0])]
    else:
        plan = plan_multipart(ranges, size, content_type, secrets.token_hex(16))
        response.set_status(206)
        response.headers[hdrs.CONTENT_TYPE] = plan.content_type
        response.content_length = plan.content_length
        parts, trailer = plan.parts, plan.trailer
    request[STREAMING] = True
    request[SEND_TIMEOUT] = request.app[SERVICES].settings.send_timeout
    await response.prepare(request)
    if request.method != hdrs.METH_HEAD:
        for part_header, byte_range in parts:
            if part_header:
                await write_within(request, response, part_header)
            written = await write(response, byte_range.start, byte_range.end + 1)
            if written != byte_range.length:
                raise BodyLengthError(f"wrote {written} bytes for a range of {byte_range.length}")
        if trailer:
            await write_within(request, response, trailer)
    await response.write_eof()
    return response


async def write_blob_range(
    request: web.Request,
    response: web.StreamResponse,
    blobs: BlobStore,
    hex_hash: str,
    offset: int,
    length: int,
) -> int:
    """Copy a blob's range onto the response when there is no fd to sendfile (S3): each
    piece is written, within --send-timeout, before the next is read, so a slow client
    holds one piece and the store's stream is paced by the client. Returns bytes written."""
    written = 0
    pieces = blobs.read_range(hex_hash, offset, length)
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            await write_within(request, response, piece)
            written += len(piece)
    return written
