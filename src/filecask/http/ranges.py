"""HTTP byte ranges (RFC 9110 §14) and the conditional headers that gate them (§13.1).

Pure functions over header strings, so every rule can be tested exhaustively without a
server; the handler only maps their results onto a 200, 206, 304 or 416 response.
Malformed input degrades to "ignore the header" (a full 200) rather than an error, because
RFC 9110 §14.2 lets a server ignore any Range it does not like, and a full response is
always a correct answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import attrgetter

from filecask.errors import RangeNotSatisfiable

# RFC 9110 §5.6.3: optional whitespace is spaces and horizontal tabs, nothing else.
_OWS = " \t"

# RFC 9110 §14.1.2: for the bytes unit only int-range (`first-"-"[last]`) and suffix-range
# (`"-"suffix-length`) mean anything; other-range is treated as garbage. [0-9] (not \d)
# keeps out other scripts' digits, which int() would happily accept.
_SPEC = r"(?:[0-9]+-[0-9]*|-[0-9]+)"

# RFC 9110 §14.1.1 ranges-specifier with the §5.6.1 list rule for `1#range-spec`:
#   *( "," OWS ) element *( OWS "," [ OWS element ] )
# so OWS is allowed only next to commas and empty elements are tolerated. Range units are
# case-insensitive (§14.1); re.ASCII stops IGNORECASE from letting U+017F (long s) pass
# for "s".
_RANGES_SPECIFIER = re.compile(
    rf"bytes=(?:,[ \t]*)*{_SPEC}(?:[ \t]*,(?:[ \t]*{_SPEC})?)*",
    re.ASCII | re.IGNORECASE,
)

# RFC 9110 §8.8.3: entity-tag = [ %s"W/" ] DQUOTE *etagc DQUOTE, where etagc is any visible
# character but DQUOTE, plus obs-text (non-ASCII once the header is decoded).
_ENTITY_TAG = r'(?:W/)?"[^"\x00-\x20\x7f]*"'
_ENTITY_TAG_LIST = re.compile(rf"(?:,[ \t]*)*{_ENTITY_TAG}(?:[ \t]*,(?:[ \t]*{_ENTITY_TAG})?)*")
_OPAQUE_TAG = re.compile(r'"[^"]*"')

# RFC 2046 §5.1.1: 1 to 70 bchars, the last one not a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 9110 §5.6.2: a parameter value that is a token needs no quotes.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: CR, LF and NUL in a field value are "invalid and dangerous".
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable range of one representation, both ends inclusive as on the wire."""

    start: int
    end: int

    def __post_init__(self) -> None:
        # An empty or inverted range cannot be expressed in a Content-Range (§14.4).
        if not 0 <= self.start <= self.end:
            raise ValueError(f"not a byte range: {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """RFC 9110 §14.4: `bytes first-last/complete-length`."""
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int, *, max_ranges: int = 64) -> list[ByteRange] | None:
    """The ranges to send, sorted and coalesced; None means "ignore Range, send 200".

    Raises RangeNotSatisfiable (416) when the header is valid but no range overlaps the
    `size` bytes of the representation (RFC 9110 §14.1.2, §15.5.17).
    """
    specs = None if header is None else _range_specs(header)
    if specs is None:
        return None
    satisfiable = [r for first, last in specs if (r := _resolve(first, last, size)) is not None]
    if not satisfiable:
        raise RangeNotSatisfiable(size, f"No requested range starts before byte {size}.")
    # RFC 9110 §14.2 warns that many small, overlapping or unordered ranges are a denial of
    # service vector, and §14.6 lets a server coalesce regardless of the requested order.
    ranges = _coalesce(satisfiable)
    return ranges if len(ranges) <= max_ranges else None


def _range_specs(header: str) -> list[tuple[str, str]] | None:
    """(first-pos, last-pos) digit strings, "" where absent; None if the syntax is invalid."""
    value = header.strip(_OWS)  # §5.5: a field value excludes surrounding whitespace.
    if not _RANGES_SPECIFIER.fullmatch(value):
        return None
    elements = (e.strip(_OWS) for e in value[len("bytes=") :].split(","))
    specs = [(first, last) for first, _, last in (e.partition("-") for e in elements if e)]
    # §14.1.1: an int-range whose last-pos is below its first-pos makes the whole
    # ranges-specifier invalid, not merely that range unsatisfiable.
    if any(first and last and _digits_less(last, first) for first, last in specs):
        return None
    return specs


def _resolve(first: str, last: str, size: int) -> ByteRange | None:
    """RFC 9110 §14.1.2 against the current length; None when unsatisfiable.

    A zero-length representation has no byte a range could name, so everything is
    unsatisfiable there (a suffix-range would otherwise describe the empty range `0--1`).
    """
    if not first:  # suffix-range: the last N bytes, or all of them if N exceeds size.
        count = _saturating_int(last, size)
        return ByteRange(size - count, size - 1) if count else None
    start = _saturating_int(first, size)
    if start >= size:
        return None
    end = _saturating_int(last, size - 1) if last else size - 1
    return ByteRange(start, end)


def _saturating_int(digits: str, ceiling: int) -> int:
    """min(int(digits), ceiling) without int() on a hostile number.

    Python refuses to convert strings of over 4300 digits (the CVE-2020-10735 guard), and
    any number longer than `ceiling` is above it anyway.
    """
    significant = digits.lstrip("0")
    if len(significant) > len(str(ceiling)):
        return ceiling
    return min(int(significant or "0"), ceiling)


def _digits_less(a: str, b: str) -> bool:
    """Numeric a < b on decimal strings of any length, for the same reason as above."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) < (len(b), b)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """Merge overlapping and adjacent ranges, so no byte is sent twice (§14.6)."""
    merged: list[ByteRange] = []
    for r in sorted(ranges, key=attrgetter("start")):
        if merged and r.start <= merged[-1].end + 1:
            merged[-1] = ByteRange(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return merged


def if_range_matches(if_range: str | None, etag: str) -> bool:
    """Whether a Range may be honoured: RFC 9110 §13.1.5.

    Only a strong comparison (§8.8.3.2) counts: a weak tag never matches, and an HTTP-date
    never does either because we offer no date a client could use as a strong validator.
    A False answer means "send the whole representation with 200".
    """
    if if_range is None:
        return True
    return etag.startswith('"') and if_range.strip(_OWS) == etag


def if_none_match_matches(header: str | None, etag: str) -> bool:
    """Whether the client's copy is current, so a 304 is due: RFC 9110 §13.1.2.

    The comparison is weak (§8.8.3.2: W/ is ignored on both sides). "*" matches because
    the caller only asks about a representation that exists. A malformed list matches
    nothing, so the client gets a full response, which is always safe.
    """
    if header is None:
        return False
    value = header.strip(_OWS)
    if value == "*":
        return True
    if not _ENTITY_TAG_LIST.fullmatch(value):
        return False
    # Once the list is valid every DQUOTE opens or closes a tag (commas may sit inside).
    return etag.removeprefix("W/") in _OPAQUE_TAG.findall(value)


@dataclass(frozen=True, slots=True)
class MultipartPlan:
    """Everything but the file data of a multipart/byteranges body, computed up front.

    Knowing the exact length before streaming lets the response carry Content-Length
    instead of chunked encoding, so clients can show progress and detect truncation.
    """

    boundary: str
    parts: list[tuple[bytes, ByteRange]]
    trailer: bytes
    content_length: int
    content_type: str


def plan_multipart(
    ranges: list[ByteRange], size: int, content_type: str, boundary: str
) -> MultipartPlan:
    """The 206 multipart/byteranges layout: RFC 9110 §14.6 and RFC 2046 §5.1.1.

    Each part is `CRLF --boundary CRLF headers CRLF CRLF data`, then `CRLF --boundary--
    CRLF` closes the body. The CRLF before a delimiter belongs to the delimiter (RFC 2046),
    so the data is never altered; leading with it on the first part is what nginx does.
    """
    _check_multipart_arguments(ranges, size, content_type, boundary)
    parts = [(_part_header(r, size, content_type, boundary), r) for r in ranges]
    trailer = f"\r\n--{boundary}--\r\n".encode("ascii")
    return MultipartPlan(
        boundary=boundary,
        parts=parts,
        trailer=trailer,
        content_length=sum(len(head) + r.length for head, r in parts) + len(trailer),
        content_type=f"multipart/byteranges; boundary={_parameter_value(boundary)}",
    )


def _check_multipart_arguments(
    ranges: list[ByteRange], size: int, content_type: str, boundary: str
) -> None:
    """Refuse inputs that would produce a body the client cannot parse or that lies."""
    if not ranges:
        raise ValueError("a multipart body needs at least one part (RFC 2046 §5.1.1)")
    if any(r.end >= size for r in ranges):
        raise ValueError(f"a range extends past the {size} bytes of the representation")
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"not an RFC 2046 boundary: {boundary!r}")
    if _FORBIDDEN_IN_FIELD.search(content_type):
        raise ValueError("a Content-Type with CR, LF or NUL would inject part headers")


def _part_header(r: ByteRange, size: int, content_type: str, boundary: str) -> bytes:
    """Delimiter and headers of one part.

    §14.6: Content-Range is mandatory in every part; Content-Type is sent when a 200 would
    have carried one. UTF-8 matches how aiohttp encodes the response's own header fields.
    """
    lines = [f"--{boundary}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Range: {r.content_range(size)}")
    return ("\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()


def _parameter_value(value: str) -> str:
    """A token as is, anything else as a quoted-string (RFC 9110 §5.6.4, §5.6.6).

    Boundary characters include no DQUOTE or backslash, so quoting needs no escapes.
    """
    return value if _TOKEN.fullmatch(value) else f'"{value}"'
