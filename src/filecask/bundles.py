"""Bundle manifests: validation and the content-derived id.

A bundle's id is the SHA-256 of its canonical manifest (entries sorted by path, compact
JSON with sorted keys), so the same name and files always give the same id, whoever
creates it and in whatever order the entries were listed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from filecask.errors import BadRequest, InvalidHash, PayloadTooLarge
from filecask.hashes import parse_hash
from filecask.names import validate_file_name

MAX_ENTRIES = 10_000
"""`--max-bundle-entries`' default."""
MAX_BYTES = 1 << 20
"""`--max-bundle-size`'s default."""
PATH_MAX_BYTES = 1024
DEFAULT_NAME = "archive.zip"


@dataclass(frozen=True, slots=True)
class Manifest:
    id: str
    name: str
    entries: list[tuple[str, str]]
    """(path, hash), sorted by path: the archive's order."""


def parse_manifest(
    body: dict[str, Any], *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES
) -> Manifest:
    """The manifest of a `POST /archives` body. More than `max_entries` files, or a
    canonical manifest (what is stored) over `max_bytes`, is a 413: the bundle is too large,
    not malformed."""
    name = body.get("name", DEFAULT_NAME)
    if not isinstance(name, str):
        raise BadRequest("'name' must be a string.", field="name")
    validate_file_name(name)
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise BadRequest("'files' must be a non-empty list of {hash, path}.", field="files")
    if len(files) > max_entries:
        raise PayloadTooLarge(
            f"A bundle names at most {max_entries} files, not {len(files)}.",
            field="files",
            max_entries=max_entries,
        )
    entries = sorted(_entry(i, item) for i, item in enumerate(files))
    _reject_duplicates(entries)
    canonical = json.dumps(
        {"name": name, "files": [{"path": p, "hash": h} for p, h in entries]},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    encoded = canonical.encode()
    if len(encoded) > max_bytes:
        raise PayloadTooLarge(
            f"The bundle's manifest takes {len(encoded)} bytes, more than {max_bytes}.",
            limit=max_bytes,
        )
    return Manifest(hashlib.sha256(encoded).hexdigest(), name, entries)


def _entry(index: int, item: Any) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise BadRequest(f"files[{index}] must be an object with hash and path.", entry=index)
    path, raw_hash = item.get("path"), item.get("hash")
    if not isinstance(raw_hash, str):
        raise BadRequest(f"files[{index}].hash must be a string.", entry=index)
    try:
        hex_hash = parse_hash(raw_hash)
    except InvalidHash:
        raise BadRequest(f"files[{index}].hash is not a SHA-256 hex id.", entry=index) from None
    if not isinstance(path, str):
        raise BadRequest(f"files[{index}].path must be a string.", entry=index)
    problem = path_problem(path)
    if problem:
        raise BadRequest(f"files[{index}].path {path!r}: {problem}.", entry=index, path=path)
    return path, hex_hash


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file inside an archive, or None if it can."""
    if not path:
        return "is empty"
    if len(path.encode()) > PATH_MAX_BYTES:
        return f"is longer than {PATH_MAX_BYTES} bytes"
    if path.startswith("/") or "\\" in path:
        return "must be relative, with '/' separators"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "contains control characters"
    parts = path.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        return "has an empty, '.' or '..' component"
    return None


def _reject_duplicates(entries: list[tuple[str, str]]) -> None:
    paths = [p for p, _ in entries]
    folded = set()
    for path in paths:
        if path in folded:
            raise BadRequest(f"The path {path!r} appears more than once.", path=path)
        folded.add(path)
    for path in paths:
        for i in range(1, path.count("/") + 1):
            parent = path.rsplit("/", i)[0]
            if parent in folded:
                raise BadRequest(
                    f"{parent!r} is both a file and a folder in this bundle.", path=parent
                )
