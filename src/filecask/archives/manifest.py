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
from filecask.names import (
    PATH_MAX_BYTES,
    Collision,
    check_collisions,
    fold,
    lookalike_character,
    parents,
    path_problem,
    refused_character,
    shown,
    validate_file_name,
)

__all__ = [
    "DEFAULT_NAME",
    "MAX_ENTRIES",
    "PATH_MAX_BYTES",
    "Manifest",
    "parse_manifest",
    "path_problem",
]

MAX_ENTRIES = 10_000
"""`--max-bundle-entries`' default."""
MAX_BYTES = 1 << 20
"""`--max-bundle-size`'s default."""
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
    indexed = sorted((*_entry(i, item), i) for i, item in enumerate(files))
    _reject_collisions(indexed)
    entries = [(path, hex_hash) for path, hex_hash, _ in indexed]
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
        error = BadRequest(f"files[{index}].path '{shown(path)}' {problem}.", entry=index)
        error.extensions["path"] = shown(path)
        found = refused_character(path) or lookalike_character(path)
        if found is not None and found.code in problem:
            error.extensions["code_point"] = found.code
        raise error
    return path, hex_hash


def _reject_collisions(indexed: list[tuple[str, str, int]]) -> None:
    """Entries that would be one file once extracted on a case-insensitive, normalising
    file system (Windows, macOS) are refused: 400, naming both."""
    paths = [path for path, _, _ in indexed]
    try:
        check_collisions(paths)
    except Collision as clash:
        first, second = paths[clash.first], paths[clash.second]
        entry = indexed[clash.second][2]
        if clash.folder:
            folder = next(p for p in parents(first) if fold(p) == fold(second))
            detail = f"'{shown(second)}' is both a file and a folder in this bundle."
            if folder != second:
                detail = (
                    f"The file '{shown(second)}' and the folder '{shown(folder)}' of "
                    f"'{shown(first)}' are one name on Windows and macOS (case and Unicode "
                    "forms are ignored there)."
                )
        elif first == second:
            detail = f"The path '{shown(second)}' appears more than once."
        else:
            detail = (
                f"The paths '{shown(first)}' and '{shown(second)}' are the same file on "
                "Windows and macOS (case and Unicode forms are ignored there)."
            )
        raise BadRequest(
            detail, entry=entry, path=shown(second), conflicts_with=shown(first)
        ) from None
