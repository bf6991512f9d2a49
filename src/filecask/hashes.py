"""SHA-256 content ids: validation, normalisation and the streaming hasher.

SHA-256 because it is collision-resistant (a content id must never name two contents),
universally available (`sha256sum`, browsers' SubtleCrypto) so clients can compute the id
before uploading, and fast enough to hash at disk speed.
"""

from __future__ import annotations

import hashlib
import re
import zlib

from filecask.errors import InvalidHash

HASH_PATTERN = "^[0-9a-f]{64}$"
"""A SHA-256 id as the server writes it: always lower case."""
HASH_INPUT_PATTERN = "^[0-9a-fA-F]{64}$"
"""A SHA-256 id as the server reads it (`parse_hash`): upper case is accepted and normalised."""
_HEX64 = re.compile(HASH_INPUT_PATTERN.strip("^$"))


def parse_hash(text: str) -> str:
    """The canonical (lower-case) form of a SHA-256 hex id, or InvalidHash."""
    if not _HEX64.fullmatch(text):
        raise InvalidHash(
            "A file id is the 64 hexadecimal characters of its SHA-256.",
            hash=text[:100],
        )
    return text.lower()


def fanout(hex_hash: str) -> str:
    """The store-relative path `ab/<hash>`: 256 directories keep each one small."""
    return f"{hex_hash[:2]}/{hex_hash}"


class StreamHasher:
    """SHA-256 and CRC-32 of a stream, updated chunk by chunk.

    CRC-32 is computed alongside so ZIP archives can put it in the local header before the
    data (no data descriptors) without reading the file again."""

    __slots__ = ("_crc", "_sha", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._crc = 0
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._sha.update(chunk)
        self._crc = zlib.crc32(chunk, self._crc)
        self.size += len(chunk)

    @property
    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    @property
    def crc32(self) -> int:
        return self._crc
