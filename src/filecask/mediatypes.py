"""Content types for stored blobs, and which of them a browser would execute.

The type is decided once, at the first upload of a blob: from the file name's extension,
else from the content's leading magic bytes, else text/plain for NUL-free UTF-8, else
application/octet-stream. Downloads send it with `nosniff`, so browsers never guess.
"""

from __future__ import annotations

import mimetypes

OCTET_STREAM = "application/octet-stream"

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
    (b"\x1aE\xdf\xa3", "video/webm"),
)

_ACTIVE = {
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
    "application/x-javascript",
    "text/css",
    "application/pdf",
    "text/xsl",
    "application/xslt+xml",
    "multipart/x-mixed-replace",
}


def guess_type(name: str | None, head: bytes) -> str:
    if name:
        by_name, _ = mimetypes.guess_type(name, strict=False)
        if by_name:
            return by_name
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head[:12].startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if _is_text(head):
        return "text/plain; charset=utf-8"
    return OCTET_STREAM


def is_active(media_type: str) -> bool:
    """True for types a browser renders with scripts or styles on our origin."""
    essence = media_type.split(";", 1)[0].strip().lower()
    return essence in _ACTIVE or essence.endswith("+xml")


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed window is still text.
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True
