"""An upload's multipart/form-data body (RFC 7578 framing, RFC 2046 §5.1.1): the content of
its `file` part as a stream; every other part read, checked and dropped, within limits.

Written for hostile bodies. aiohttp's reader, used before, spent a few hundred microseconds
of CPU per part without giving the event loop a turn when the body was already buffered
(20,000 one-byte fields froze the whole server for seconds), read skipped fields without
any limit, and handed out the bytes of a body that ended without its closing boundary as
a complete file. Here:

- **Parts and form bytes are capped.** At most `max_parts` parts (the file included) and
  `max_form_size` bytes outside the file's content (a preamble, every part's boundary
  line and headers, the other fields): past either, `FormTooLarge` (413).
- **Fields are upload bytes.** The other parts (from their boundary line to the end of
  their content) and the preamble count with the file's bytes against `budget` (the upload
  size limit or what the quota leaves): past it, `PayloadTooLarge`, as for a file that
  large. The file part's own boundary line and headers and the closing boundary do not
  count, so `curl -F file=@x` costs exactly the file.
- **Only a closing boundary ends the file.** The stream of the file's content ends only
  once `--boundary--` has been read (skipping, within the limits, any parts after the
  file): a body that ends before is a 400 raised from inside the stream, so the staged
  copy is discarded and nothing is stored. The epilogue after it is not read.
- **The loop gets a turn after every part.** A part is never more than a buffer scan
  (`bytes.find`), and the reader yields (`asyncio.sleep(0)`) after each skipped part.
- **Strict framing** (400): a boundary of 1 to 70 printable ASCII characters; a boundary
  line followed by anything but spaces and tabs before its CRLF; part headers that are not
  `Name: value` lines of UTF-8 without C0 controls or DEL, a line over `max_line` bytes,
  more than `MAX_HEADER_LINES` lines.

Memory per upload is bounded: the buffer holds at most one read from the connection plus
a boundary's length (or, in headers, `max_line`).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from aiohttp.helpers import parse_mimetype
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from filecask.errors import BadRequest, FormTooLarge, PayloadTooLarge

__all__ = ["FormLimits", "FormReader", "boundary_of"]

MAX_HEADER_LINES = 32
"""Header lines of one part; a form part has one to three."""
BOUNDARY_MAX = 70
"""RFC 2046 §5.1.1: a boundary is 1 to 70 characters."""
UNTERMINATED = "The multipart body ends before its closing boundary; nothing was stored."

Read = Callable[[], Awaitable[bytes]]
"""The next bytes of the body (any amount); b"" at its end."""


@dataclass(frozen=True, slots=True)
class FormLimits:
    max_parts: int
    """Parts in the body, the file included."""
    max_form_size: int
    """Bytes of the body outside the file's content."""
    max_line: int
    """Longest part header line (and boundary line), in bytes."""


class _Kind(Enum):
    FIELD = "field"
    """Bytes that count as upload bytes: the preamble, the other parts."""
    ENVELOPE = "envelope"
    """A boundary line or headers, counted once it is known whose they are."""
    FILE = "file"
    """The file's content."""


def boundary_of(content_type: str) -> str:
    """The boundary of a `multipart/form-data` Content-Type; 400 if it has none or a bad one."""
    boundary = parse_mimetype(content_type).parameters.get("boundary", "")
    if (
        not 1 <= len(boundary) <= BOUNDARY_MAX
        or not boundary.isascii()
        or not boundary.isprintable()
        or boundary.endswith(" ")
    ):
        raise BadRequest("A multipart upload needs a boundary of 1 to 70 ASCII characters.")
    return boundary


class FormReader:
    """Reads one multipart body from `read`: `open_file` skips to the `file` part and
    returns its filename, then `file_content` streams its content and checks the rest."""

    def __init__(self, read: Read, boundary: str, limits: FormLimits, *, budget: int) -> None:
        self._read = read
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        # A CRLF in front of the body: the first boundary may start it (RFC 2046 §5.1.1),
        # so every boundary is then "\r\n--boundary". It is not counted (`_take`).
        self._buffer = bytearray(b"\r\n")
        self._virtual = 2
        self._eof = False
        self._limits = limits
        self._budget = budget
        self.parts = 0
        self.form_bytes = 0
        """Body bytes outside the file's content, read so far."""
        self.field_bytes = 0
        """Of those, the ones that count as upload bytes (preamble, other parts)."""
        self.file_bytes = 0
        self._envelope = 0
        self._opened = False

    async def open_file(self) -> str | None:
        """Read up to the content of the first part named `file`; its filename, if any.
        400 if the body has no such part."""
        if self._opened:
            raise RuntimeError("open_file() runs once")
        self._opened = True
        await self._skip_preamble()
        while True:
            if await self._boundary_line():
                raise BadRequest("A multipart upload needs a form field named 'file'.")
            name, filename = await self._part_head()
            if name == "file":
                self._envelope = 0  # the file's own framing is free
                return filename
            await self._skip_part()

    async def file_content(self) -> AsyncIterator[bytes]:
        """The file's content; ends only after the closing boundary was read (parts after
        the file are skipped), so a body cut short raises instead of ending the stream."""
        if not self._opened:
            raise RuntimeError("open_file() first")
        async for piece in self._content(_Kind.FILE):
            yield piece
        while not await self._boundary_line():
            await self._part_head()
            await self._skip_part()

    # -- framing ----------------------------------------------------------------------

    async def _skip_preamble(self) -> None:
        async for _ in self._content(_Kind.FIELD, first=True):
            pass

    async def _boundary_line(self) -> bool:
        """At a boundary: read its line. True for the closing boundary (`--` after it)."""
        after = len(self._delimiter)
        while len(self._buffer) < after + 2:
            await self._fill()
        if self._buffer[after : after + 2] == b"--":
            self._take(after + 2, _Kind.ENVELOPE)
            return True
        while (end := self._buffer.find(b"\r\n", after)) < 0:
            if len(self._buffer) - after > self._limits.max_line:
                raise BadRequest("A multipart boundary line is too long.")
            await self._fill()
        if self._buffer[after:end].strip(b" \t"):
            raise BadRequest("A multipart boundary is followed by something else on its line.")
        self._take(end + 2, _Kind.ENVELOPE)
        return False

    async def _part_head(self) -> tuple[str | None, str | None]:
        """Count the part and read its headers: its form field name and filename."""
        self.parts += 1
        if self.parts > self._limits.max_parts:
            raise FormTooLarge(
                f"A multipart upload may have at most {self._limits.max_parts} parts.",
                limit=self._limits.max_parts,
            )
        disposition: str | None = None
        for lines in range(MAX_HEADER_LINES + 1):
            line = await self._line()
            if not line:
                break
            if lines == MAX_HEADER_LINES:
                raise BadRequest(
                    f"A multipart part may have at most {MAX_HEADER_LINES} header lines."
                )
            name, value = _header(line)
            if name == "content-disposition" and disposition is None:
                disposition = value
        if disposition is None:
            return None, None
        with warnings.catch_warnings():  # aiohttp warns of a malformed one: it has no name
            warnings.simplefilter("ignore")
            _kind, params = parse_content_disposition(disposition)
            return params.get("name"), content_disposition_filename(params, "filename")

    async def _line(self) -> bytes:
        """The next header line, without its CRLF."""
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > self._limits.max_line:
                raise BadRequest("A multipart part header is too long.")
            await self._fill()
        if end > self._limits.max_line:
            raise BadRequest("A multipart part header is too long.")
        line = bytes(self._buffer[:end])
        self._take(end + 2, _Kind.ENVELOPE)
        return line

    async def _skip_part(self) -> None:
        """Drop a part that is not the file (its framing counts as field bytes), then give
        the event loop a turn."""
        self._count_field(self._envelope)
        self._envelope = 0
        async for _ in self._content(_Kind.FIELD):
            pass
        await asyncio.sleep(0)

    async def _content(self, kind: _Kind, *, first: bool = False) -> AsyncIterator[bytes]:
        """Everything up to the next boundary (left in the buffer), in pieces; 400 if the
        body ends first."""
        keep = len(self._delimiter) - 1  # a boundary may begin in the last bytes
        while True:
            at = self._buffer.find(self._delimiter)
            if at >= 0:
                if at:
                    yield self._take(at, kind)
                return
            if len(self._buffer) > keep:
                yield self._take(len(self._buffer) - keep, kind)
            if self._eof and first:
                raise BadRequest("The multipart body has no boundary (or not the one declared).")
            await self._fill()

    async def _fill(self) -> None:
        """Read more of the body; at its end, once more is a 400 (the end came too soon)."""
        if self._eof:
            raise BadRequest(UNTERMINATED)
        chunk = await self._read()
        if chunk:
            self._buffer += chunk
        else:
            self._eof = True

    # -- accounting -------------------------------------------------------------------

    def _take(self, size: int, kind: _Kind) -> bytes:
        """Remove the first `size` bytes of the buffer, counted as `kind`; returned if they
        are the file's (anything else is dropped uncopied)."""
        piece = b""
        if kind is _Kind.FILE:
            with memoryview(self._buffer) as view:
                piece = bytes(view[:size])
        del self._buffer[:size]
        if self._virtual:
            virtual = min(size, self._virtual)
            self._virtual -= virtual
            size -= virtual
        if kind is _Kind.FILE:
            self.file_bytes += size
            self._check_budget()
            return piece
        self.form_bytes += size
        if self.form_bytes > self._limits.max_form_size:
            raise FormTooLarge(
                "The fields and framing of a multipart upload may take at most"
                f" {self._limits.max_form_size} bytes besides the file.",
                limit=self._limits.max_form_size,
            )
        if kind is _Kind.FIELD:
            self._count_field(size)
        else:
            self._envelope += size
        return piece

    def _count_field(self, size: int) -> None:
        self.field_bytes += size
        self._check_budget()

    def _check_budget(self) -> None:
        if self.field_bytes + self.file_bytes > self._budget:
            raise PayloadTooLarge(
                f"The upload exceeds the limit of {self._budget} bytes.", limit=self._budget
            )


def _header(line: bytes) -> tuple[str, str]:
    """A part header line as (lower-case name, value); 400 unless it is `Name: value`
    in UTF-8 (else lone surrogates) without C0 controls or DEL. Other characters a file
    name may not hold (C1 and bidi controls...) are for `names.validate_file_name` to
    refuse, naming them."""
    raw_name, colon, raw_value = line.partition(b":")
    try:
        name = raw_name.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("A multipart part header's name is not ASCII.") from None
    # Bytes that are not UTF-8 become lone surrogates, as in aiohttp's own header parsing:
    # a file name holding one is refused by `names.validate_file_name`, naming it.
    value = raw_value.decode("utf-8", "surrogateescape")
    if (
        not colon
        or not name
        or any(c in ' \t()<>@,;:\\"/[]?={}' or not c.isprintable() for c in name)
        or any(c != "\t" and (ord(c) < 32 or ord(c) == 127) for c in value)
    ):
        raise BadRequest("A multipart part header is not a `Name: value` line.")
    return name.lower(), value.strip(" \t")
