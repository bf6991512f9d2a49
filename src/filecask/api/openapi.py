"""The OpenAPI 3.1 description of filecask's HTTP API, written by hand.

Why by hand: the handlers are plain aiohttp functions whose contracts (streamed uploads,
byte ranges, problem+json errors, HEAD everywhere a GET is) no framework would infer
correctly, and a generated document drifts silently. This one is kept true by tests
instead: `tests/api/test_openapi.py` checks that it names exactly the routes the app serves and
that real responses validate against it, and the schemathesis e2e test fuzzes a running
server with it. Change a handler, change this document in the same commit.

The document is built by a function (not a constant) because what is served depends on
`--file-api`: with the file API off only the archive and operations routes exist.
"""

from __future__ import annotations

import copy
from typing import Any

from filecask.archives.manifest import MAX_BYTES, MAX_ENTRIES, PATH_MAX_BYTES
from filecask.errors import PROBLEM_BASE
from filecask.names import NAME_MAX_BYTES
from filecask.storage.meta import QUOTA_MAX

_NAME_CHARACTERS = (
    "no control character (C0, DEL, C1), format character (bidi controls such as U+202E, "
    "zero-width characters, U+FEFF...), line or paragraph separator, lone surrogate or "
    "non-character (else 400, naming the `code_point`)."
)
_PATH_RULES = (
    "Safe to extract on Windows and macOS: no drive letter, no ':' or any of "
    "`< > \" | ? *`, no component ending with '.' or ' ', no device name (`CON`, `aux.txt`, "
    "`COM1`...), no component over 255 bytes, the same once NFKC or Windows best-fit "
    "conversion is applied (no U+FF0F FULLWIDTH SOLIDUS, U+2215 DIVISION SLASH, U+FF1A "
    "FULLWIDTH COLON, U+2025 TWO DOT LEADER, fullwidth `con`...: else 400 naming the "
    "`code_point`), and no two entries that are one file once "
    "case and Unicode forms are ignored (`Readme.txt`/`README.TXT`, NFC/NFD, `a` next to "
    "`A/b`): else 400."
)

Json = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
PROBLEM_JSON = "application/problem+json"

HASH_PATTERN = "^[0-9a-f]{64}$"
"""A SHA-256 id as the server writes it: always lower case."""
HASH_INPUT_PATTERN = "^[0-9a-fA-F]{64}$"
"""A SHA-256 id as the server reads it: upper case is accepted and normalised."""
USER_NAME_MAX = 64
LIST_MAX = 1000


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Json:
    return _ref("schemas", name)


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


# --------------------------------------------------------------------------- schemas


def _schemas() -> Json:
    timestamp = {
        "type": "string",
        "description": "ISO 8601 timestamp of the metadata store (`datetime.isoformat()`).",
    }
    quota = {
        "type": ["integer", "null"],
        "minimum": 0,
        "maximum": QUOTA_MAX,
        "description": "Most bytes the user may keep (`bytes`) and reserve (`reserved`) "
        "together, or null for no limit.",
    }
    usage = {
        "files": {"type": "integer", "minimum": 0, "description": "The user's files."},
        "bytes": {
            "type": "integer",
            "minimum": 0,
            "description": "What the user keeps alive: every distinct content of their files "
            "and of the bundles they hold, counted once. This is what the quota bounds.",
        },
        "bundles": {"type": "integer", "minimum": 0, "description": "Bundles the user holds."},
        "reserved": {
            "type": "integer",
            "minimum": 0,
            "description": "Upload-Length of the user's unfinished resumable uploads, "
            "reserved against the quota until they complete, are deleted or expire.",
        },
    }
    return {
        "Hash": {
            "type": "string",
            "pattern": HASH_PATTERN,
            "description": "The 64 lower-case hexadecimal characters of a SHA-256.",
        },
        "Problem": {
            "type": "object",
            "description": (
                "An RFC 9457 problem. `type` is a URI under "
                f"{PROBLEM_BASE} naming the kind of error (e.g. `invalid-hash`, "
                "`hash-mismatch`, `quota-exceeded`); members beyond the five standard ones "
                "are extensions that identify what was wrong."
            ),
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "instance": {"type": "string", "description": "The request's path."},
                "hash": {"type": "string", "description": "The offending hash (first 100 chars)."},
                "expected": {"type": "string"},
                "actual": {"type": "string"},
                "limit": {
                    "type": "integer",
                    "description": "The limit exceeded: bytes for sizes, else a count "
                    "(bundles per user, open uploads per user).",
                },
                "max_entries": {"type": "integer", "description": "Most files per bundle."},
                "hashes": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "A bundle's hashes the caller holds no file for "
                    "(`not-held`; at most 100 listed).",
                },
                "count": {"type": "integer", "description": "How many there are in all."},
                "reserved": {
                    "type": "integer",
                    "description": "Bytes reserved by the user's unfinished uploads.",
                },
                "retry_after": {"type": "integer", "description": "Seconds until retrying."},
                "field": {"type": "string", "description": "The JSON member that is wrong."},
                "parameter": {"type": "string", "description": "The query parameter."},
                "entry": {"type": "integer", "description": "Index of the bad bundle entry."},
                "path": {
                    "type": "string",
                    "description": "The refused bundle path, characters that are not "
                    "printable shown as \\uXXXX escapes.",
                },
                "conflicts_with": {
                    "type": "string",
                    "description": "The bundle path the refused one collides with once case "
                    "and Unicode forms are ignored (as on Windows and macOS).",
                },
                "code_point": {
                    "type": "string",
                    "description": "The refused character of a name or path, e.g. `U+202E`.",
                },
                "position": {
                    "type": "integer",
                    "description": "Where in the file name the refused character is.",
                },
                "id": {"type": "string"},
                "user": {"type": "string"},
                "quota": {"type": "integer", "description": "The user's quota, in bytes."},
                "used": {"type": "integer", "description": "Bytes the user keeps now."},
                "size": {"type": "integer", "description": "Bytes of the refused upload."},
            },
            "additionalProperties": True,
        },
        "FileInfo": {
            "type": "object",
            "required": ["hash", "size", "name", "content_type", "uploaded_at", "url"],
            "properties": {
                "hash": _schema("Hash"),
                "size": {"type": "integer", "minimum": 0},
                "name": {"type": "string", "description": "The caller's name for the file."},
                "content_type": {"type": "string"},
                "uploaded_at": timestamp,
                "url": {"type": "string", "format": "uri"},
            },
            "additionalProperties": False,
        },
        "FileList": {
            "type": "object",
            "required": ["files", "next_cursor"],
            "properties": {
                "files": {"type": "array", "items": _schema("FileInfo")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "pattern": "^[0-9]+$",
                    "description": "Pass as `?cursor=` for the next page; null on the last.",
                },
            },
            "additionalProperties": False,
        },
        "Me": {
            "type": "object",
            "required": ["name", "is_admin", "files", "bytes", "bundles", "reserved", "quota"],
            "properties": {
                "name": {"type": "string"},
                "is_admin": {"type": "boolean"},
                **usage,
                "quota": quota,
            },
            "additionalProperties": False,
        },
        "UserSummary": {
            "type": "object",
            "required": [
                "name",
                "is_admin",
                "created_at",
                "files",
                "bytes",
                "bundles",
                "reserved",
                "quota",
            ],
            "properties": {
                "name": {"type": "string"},
                "is_admin": {"type": "boolean"},
                "created_at": timestamp,
                **usage,
                "quota": quota,
            },
            "additionalProperties": False,
        },
        "FileDeleted": {
            "type": "object",
            "required": ["hash", "held_by_bundles"],
            "description": "The caller's reference is gone, but bundles they hold still name "
            "the content: it stays stored, downloadable and counted in their usage until "
            "those bundles are deleted.",
            "properties": {
                "hash": _schema("Hash"),
                "held_by_bundles": {
                    "type": "array",
                    "minItems": 1,
                    "items": _schema("BundleCreated"),  # the same id, name and link
                },
            },
            "additionalProperties": False,
        },
        "UserList": {
            "type": "object",
            "required": ["users"],
            "properties": {"users": {"type": "array", "items": _schema("UserSummary")}},
            "additionalProperties": False,
        },
        "QuotaInput": {
            "description": (
                "Bytes as an integer, a size string with binary units (`512M`, `10G`, "
                "`1.5GiB`), or null for no limit. Out of range or malformed: 400."
            ),
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": QUOTA_MAX},
                {
                    "type": "string",
                    "pattern": "^\\s*[0-9]{1,20}(\\.[0-9]{1,9})?\\s*[KMGTkmgt]?([iI]?[bB])?\\s*$",
                },
                {"type": "null"},
            ],
        },
        "NewUser": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": USER_NAME_MAX,
                    "description": (
                        "Letters, digits, '.', '_' or '-', starting with a letter or digit."
                        " Unique once NFKC-normalised and case-folded: `Admin` or a"
                        " fullwidth `admin` next to `admin` is a 409."
                    ),
                },
                "password": {
                    "type": "string",
                    "minLength": 8,
                    "description": "At least 8 characters, at most 1024 bytes; omit (or "
                    "send an empty string) to have one generated.",
                },
                "is_admin": {"type": "boolean", "default": False},
                "quota": _schema("QuotaInput"),
            },
        },
        "CreatedUser": {
            "type": "object",
            "required": ["name", "is_admin", "quota"],
            "properties": {
                "name": {"type": "string"},
                "is_admin": {"type": "boolean"},
                "password": {
                    "type": "string",
                    "description": "The generated password, only when none was given.",
                },
                "quota": quota,
            },
            "additionalProperties": False,
        },
        "UserUpdate": {
            "type": "object",
            "required": ["quota"],
            "properties": {"quota": _schema("QuotaInput")},
            "additionalProperties": False,
            "description": "Only the quota can be changed; any other member is a 400.",
        },
        "Manifest": {
            "type": "object",
            "required": ["files"],
            "properties": {
                "name": {
                    "type": "string",
                    "default": "archive.zip",
                    "description": f"The ZIP's file name: one segment, at most "
                    f"{NAME_MAX_BYTES} bytes, no '/' or '\\\\'; {_NAME_CHARACTERS}",
                },
                "files": {
                    "type": "array",
                    "minItems": 1,
                    "description": f"Each hash must be one of the caller's files (403 "
                    f"`not-held`). At most `--max-bundle-entries` (default {MAX_ENTRIES}) "
                    f"entries and `--max-bundle-size` (default {MAX_BYTES} bytes) of body "
                    "and of canonical manifest (413).",
                    "items": {
                        "type": "object",
                        "required": ["hash", "path"],
                        "properties": {
                            "hash": {"type": "string", "pattern": HASH_INPUT_PATTERN},
                            "path": {
                                "type": "string",
                                "description": f"Relative, '/'-separated, at most "
                                f"{PATH_MAX_BYTES} bytes, no empty, '.' or '..' component; "
                                f"{_NAME_CHARACTERS} {_PATH_RULES}",
                            },
                        },
                    },
                },
            },
        },
        "BundleCreated": {
            "type": "object",
            "required": ["id", "name", "url"],
            "properties": {
                "id": _schema("Hash"),
                "name": {"type": "string"},
                "url": {"type": "string", "format": "uri"},
            },
            "additionalProperties": False,
        },
        "BundleList": {
            "type": "object",
            "required": ["archives"],
            "properties": {
                "archives": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "name", "files", "bytes", "created_at", "url"],
                        "properties": {
                            "id": _schema("Hash"),
                            "name": {"type": "string"},
                            "files": {"type": "integer", "minimum": 1},
                            "bytes": {"type": "integer", "minimum": 0},
                            "created_at": timestamp,
                            "url": {"type": "string", "format": "uri"},
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok", "ready"]}},
            "additionalProperties": False,
        },
    }


# --------------------------------------------------------------------------- responses

_PROBLEMS: dict[str, tuple[int, str]] = {
    "BadRequest": (400, "The request is malformed: a bad hash, name, parameter or body."),
    "Unauthorized": (401, "No, malformed or wrong Basic credentials."),
    "Forbidden": (
        403,
        "Signed in, but not allowed (not an administrator, not the holder; `not-held`: a "
        "bundle names content the caller holds no file for, with `hashes`).",
    ),
    "NotFound": (404, "No such file, bundle, folder or user (or no such route)."),
    "RequestTimeout": (408, "The request body stalled longer than `--body-timeout`."),
    "Conflict": (
        409,
        "The name is taken (also by a look-alike: `Admin` next to `admin`), the last "
        "administrator would be removed, or the caller holds `--max-bundles-per-user` "
        "bundles already (`too-many-bundles`, with `limit`).",
    ),
    "PayloadTooLarge": (
        413,
        "Larger than `--max-upload-size` (`payload-too-large`, with `limit`), beyond the "
        "user's quota (`quota-exceeded`, with `quota`, `used`, `size` and `reserved`), a "
        "multipart form with more parts or more bytes besides its file than allowed "
        "(`payload-too-large`, with `limit`), a JSON body over 1 MiB, or a bundle over "
        "`--max-bundle-size` (`limit`) or `--max-bundle-entries` (`max_entries`).",
    ),
    "RangeNotSatisfiable": (416, "No requested range overlaps the body."),
    "TooManyRequests": (
        429,
        "Too many failed sign-ins from this client address, or for this user name from it.",
    ),
    "ServiceUnavailable": (503, "The database or the store is unusable."),
    "InsufficientStorage": (507, "The store's disk is full (or would dip into its reserve)."),
}

_PROBLEM_HEADERS: dict[str, Json] = {
    "Unauthorized": {
        "WWW-Authenticate": {
            "required": True,
            "description": 'Always `Basic realm="filecask", charset="UTF-8"`.',
            "schema": {"type": "string"},
        }
    },
    "TooManyRequests": {
        "Retry-After": {
            "required": True,
            "description": "Seconds to wait before the next attempt.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
    "RangeNotSatisfiable": {
        "Content-Range": {
            "required": True,
            "description": "`bytes */<size>` (RFC 9110 §15.5.17).",
            "schema": {"type": "string", "pattern": "^bytes \\*/[0-9]+$"},
        }
    },
}


def _problem_response(status: int, description: str) -> Json:
    return {
        "description": description
        + " A client whose Accept names text/html gets a short HTML page instead.",
        "content": {
            PROBLEM_JSON: {
                "schema": {
                    "allOf": [
                        _schema("Problem"),
                        {"type": "object", "properties": {"status": {"const": status}}},
                    ]
                }
            },
            "text/html": {"schema": {"type": "string"}},
        },
    }


def _responses() -> Json:
    responses: Json = {}
    for name, (status, description) in _PROBLEMS.items():
        response = _problem_response(status, description)
        if name in _PROBLEM_HEADERS:
            response["headers"] = _PROBLEM_HEADERS[name]
        responses[name] = response
    return responses


def _problems(*names: str) -> Json:
    return {str(_PROBLEMS[name][0]): _ref("responses", name) for name in names}


SIGNED_IN = ("Unauthorized", "TooManyRequests")
"""What any operation that needs Basic credentials can answer."""

# --------------------------------------------------------------------------- parameters


def _parameters() -> Json:
    return {
        "hash": {
            "name": "hash",
            "in": "path",
            "required": True,
            "description": "A file's SHA-256, 64 hex digits (upper case is accepted and "
            "normalised; anything else is 400).",
            "schema": {"type": "string", "pattern": HASH_INPUT_PATTERN},
        },
        "bundleId": {
            "name": "id",
            "in": "path",
            "required": True,
            "description": "A bundle's id: the SHA-256 of its canonical manifest.",
            "schema": {"type": "string", "pattern": HASH_INPUT_PATTERN},
        },
        "archiveId": {
            "name": "id",
            "in": "path",
            "required": True,
            "description": (
                "A bundle id (64 hex digits, if such a bundle exists) or the name of a "
                "sub-folder of the archive root: one plain path segment of at most 255 "
                "bytes, not starting with '.', without '/', '\\\\' or control characters "
                "(else 400)."
            ),
            "schema": {"type": "string", "minLength": 1},
        },
        "userName": {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
            "description": "The user's name, in any case or width (`BOB` is `bob`).",
        },
        "uploadName": {
            "name": "name",
            "in": "query",
            "required": False,
            "description": f"The caller's name for the file: one path segment of at most "
            f"{NAME_MAX_BYTES} bytes of UTF-8, without '/' or '\\\\'; {_NAME_CHARACTERS} "
            "A multipart upload falls back to the part's filename.",
            "schema": {"type": "string"},
        },
        "downloadName": {
            "name": "name",
            "in": "query",
            "required": False,
            "description": "The file name for Content-Disposition (same rules as upload "
            "names); without it the name is the hash.",
            "schema": {"type": "string"},
        },
        "Range": {
            "name": "Range",
            "in": "header",
            "required": False,
            "description": "`bytes=` ranges, single or several (RFC 9110 §14.2); a "
            "malformed one is ignored (200).",
            "schema": {"type": "string"},
        },
        "If-Range": {
            "name": "If-Range",
            "in": "header",
            "required": False,
            "description": "Honour Range only if this is the current ETag.",
            "schema": {"type": "string"},
        },
        "If-None-Match": {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "description": "304 when it names the current ETag (or is `*`).",
            "schema": {"type": "string"},
        },
    }


def _param(name: str) -> Json:
    return _ref("parameters", name)


# --------------------------------------------------------------------------- headers


def _header(description: str, pattern: str | None = None, *, required: bool = True) -> Json:
    schema: Json = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = pattern
    return {"required": required, "description": description, "schema": schema}


_LOCATION = _header("The URL of the stored file or bundle.")
_ETAG = _header('A strong entity tag: `"<hex>"`.', '^"[0-9a-f]{64}"$')
_CONTENT_RANGE = _header("`bytes <first>-<last>/<size>`.", "^bytes [0-9]+-[0-9]+/[0-9]+$")
_CONTENT_DISPOSITION = _header(
    "`inline` or `attachment` with `filename` and, for non-ASCII names, RFC 5987 `filename*`."
)


def _download_headers(*, ranged: bool, archive: bool) -> Json:
    headers: Json = {
        "ETag": _ETAG,
        "Accept-Ranges": _header("Always `bytes`.", "^bytes$"),
        "Cache-Control": _header(
            "`no-cache` (a folder can change under its URL)"
            if archive
            else "`public, max-age=31536000, immutable`: content never changes under a hash."
        ),
        "Content-Disposition": _CONTENT_DISPOSITION,
        "X-Content-Type-Options": _header("Always `nosniff`.", "^nosniff$"),
    }
    if archive:
        headers["Last-Modified"] = _header("The newest member's modification time.", required=False)
    else:
        headers["Content-Security-Policy"] = _header("Always `sandbox`.", "^sandbox$")
    if ranged:
        headers["Content-Range"] = _header(
            "Present for a single range; several ranges come as multipart/byteranges.",
            "^bytes [0-9]+-[0-9]+/[0-9]+$",
            required=False,
        )
    return headers


# --------------------------------------------------------------------------- operations

BASIC: list[Json] = [{"basicAuth": []}]
ANONYMOUS: list[Json] = []


def _upload_body() -> Json:
    return {
        "required": True,
        "description": "The file's bytes as the raw body (any Content-Type but "
        "multipart/form-data; the stored type is decided from the name and the content), "
        "or a multipart form whose field `file` holds them. The body is streamed, never "
        "buffered. A form's other fields are ignored but count toward the upload size and "
        "the quota; it may have `--multipart-max-parts` parts and "
        "`--multipart-max-form-size` bytes besides the file, and must end with its closing "
        "boundary (else 400, nothing stored).",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                },
                "encoding": {"file": {"contentType": "application/octet-stream"}},
            },
        },
    }


def _upload_operation(operation_id: str, summary: str, *, with_hash: bool) -> Json:
    stored = {
        "description": "Stored; the body describes the caller's reference.",
        "headers": {"Location": _LOCATION},
        "content": _json(_schema("FileInfo")),
    }
    description = (
        "Upload a file. 413 is answered before the body is read when Content-Length "
        "exceeds the limit (and before `100 Continue`)."
    )
    if with_hash:
        description += (
            " The server verifies the content against the hash in the URL: a mismatch is "
            "400 `hash-mismatch` and nothing is stored."
        )
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": ["files"],
        "security": BASIC,
        "parameters": [_param("uploadName")],
        "requestBody": _upload_body(),
        "responses": {
            "200": {**stored, "description": "The caller already held this content."},
            "201": stored,
            **_problems(
                "BadRequest",
                *SIGNED_IN,
                "RequestTimeout",
                "PayloadTooLarge",
                "InsufficientStorage",
            ),
        },
    }


def _download_operation(
    operation_id: str, summary: str, *, archive: bool, parameters: list[Json]
) -> Json:
    content_type = "application/zip" if archive else "*/*"
    body_schema: Json = {"type": "string", "format": "binary"}
    not_found = "NotFound"
    redirect: Json = {}
    if not archive:
        redirect["307"] = {
            "description": "With S3 storage and `--s3-presign`: fetch the bytes from the "
            "presigned URL in `Location` (valid that long; it answers with the Content-Type "
            "and Content-Disposition a download from filecask would have).",
            "headers": {
                "Location": _header("A presigned URL of the object store."),
                "Cache-Control": _header("Always `no-store`: the URL expires.", "^no-store$"),
            },
        }
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["archives" if archive else "files"],
        "security": ANONYMOUS,
        "parameters": [
            *parameters,
            _param("Range"),
            _param("If-Range"),
            _param("If-None-Match"),
        ],
        "responses": {
            "200": {
                "description": "The whole body"
                + (" (a ZIP streamed as it is sent)." if archive else "."),
                "headers": _download_headers(ranged=False, archive=archive),
                "content": {content_type: {"schema": body_schema}},
            },
            "206": {
                "description": "The requested range, or several as multipart/byteranges.",
                "headers": _download_headers(ranged=True, archive=archive),
                "content": {
                    content_type: {"schema": body_schema},
                    "multipart/byteranges": {"schema": body_schema},
                },
            },
            "304": {
                "description": "If-None-Match named the current ETag.",
                "headers": {"ETag": _ETAG},
            },
            **redirect,
            **_problems("BadRequest", not_found, "RangeNotSatisfiable"),
        },
    }


def _head_of(get: Json) -> Json:
    """HEAD answers what GET would, headers only: aiohttp adds it to every GET route."""
    head = copy.deepcopy(get)
    head["operationId"] = get["operationId"] + "Head"
    head["summary"] = "Headers of: " + get["summary"][0].lower() + get["summary"][1:]
    head.pop("description", None)
    for response in head["responses"].values():
        response.pop("content", None)
    return head


def _get_and_head(get: Json) -> Json:
    return {"get": get, "head": _head_of(get)}


def _ops_paths() -> Json:
    def probe(operation_id: str, summary: str, statuses: Json) -> Json:
        return {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["operations"],
            "security": ANONYMOUS,
            "responses": statuses,
        }

    ok = {"description": "Up.", "content": _json(_schema("Status"))}
    metrics_unauthorized = copy.deepcopy(_responses()["Unauthorized"])
    metrics_unauthorized["description"] = (
        "No credentials, a wrong bearer token, or wrong Basic credentials."
        " A client whose Accept names text/html gets a short HTML page instead."
    )
    metrics_unauthorized["headers"]["WWW-Authenticate"]["description"] = (
        'Without credentials `Bearer realm="filecask metrics", Basic realm="filecask",'
        ' charset="UTF-8"`; with a wrong token `Bearer realm="filecask metrics",'
        ' error="invalid_token"`; with wrong Basic credentials `Basic realm="filecask",'
        ' charset="UTF-8"`.'
    )
    return {
        "/healthz": _get_and_head(probe("healthz", "Liveness: the process answers.", {"200": ok})),
        "/readyz": _get_and_head(
            probe(
                "readyz",
                "Readiness: the database and the store are usable.",
                {
                    "200": {"description": "Ready.", "content": _json(_schema("Status"))},
                    **_problems("ServiceUnavailable"),
                },
            )
        ),
        "/openapi.json": _get_and_head(
            probe(
                "openapi",
                "This document.",
                {
                    "200": {
                        "description": "The OpenAPI 3.1 description of this server's API.",
                        "content": _json({"type": "object", "required": ["openapi", "paths"]}),
                    }
                },
            )
        ),
        "/metrics": _get_and_head(
            {
                **probe(
                    "metrics",
                    "Prometheus metrics: requests, latency, bytes, work in flight, store size.",
                    {
                        "200": {
                            "description": "The Prometheus text format (OpenMetrics if the"
                            " Accept header asks for it), totals over every worker.",
                            "content": {
                                media: {"schema": {"type": "string"}}
                                for media in ("text/plain", "application/openmetrics-text")
                            },
                        },
                        "401": metrics_unauthorized,
                        **_problems("Forbidden", "TooManyRequests"),
                    },
                ),
                "description": "For the metrics bearer token (`FILECASK_METRICS_TOKEN`,"
                " `--metrics-token-file`) or an administrator's Basic credentials; for"
                " anyone with `--metrics-public true`.",
                "security": [{"metricsToken": []}, {"basicAuth": []}],
            }
        ),
    }


def _archive_paths(*, file_api: bool) -> Json:
    summary = "A folder of the archive root" + (
        " or a saved bundle, as a streamed ZIP." if file_api else ", as a streamed ZIP."
    )
    paths: Json = {}
    for path, suffix in (("/archive/{id}/", ""), ("/archive/{id}", "NoSlash")):
        get = _download_operation(
            "downloadArchive" + suffix,
            summary,
            archive=True,
            parameters=[_param("archiveId")],
        )
        paths[path] = _get_and_head(get)
    return paths


def _file_api_paths() -> Json:
    signed_in = _problems(*SIGNED_IN)
    admin = _problems(*SIGNED_IN, "Forbidden")
    list_files = {
        "operationId": "listFiles",
        "summary": "The caller's files, newest first, a page at a time.",
        "tags": ["files"],
        "security": BASIC,
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"Page size, 1 to {LIST_MAX} (default 100); else 400.",
                "schema": {"type": "integer", "minimum": 1, "maximum": LIST_MAX},
            },
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "description": "`next_cursor` of the previous page (a positive integer).",
                "schema": {"type": "string", "pattern": "^[0-9]*[1-9][0-9]*$"},
            },
        ],
        "responses": {
            "200": {
                "description": "One page.",
                "headers": {
                    "Link": _header(
                        '`<url>; rel="next"` when there is a next page.', required=False
                    )
                },
                "content": _json(_schema("FileList")),
            },
            **_problems("BadRequest"),
            **signed_in,
        },
    }
    me = {
        "operationId": "me",
        "summary": "Who the caller is and how much they store.",
        "tags": ["users"],
        "security": BASIC,
        "responses": {"200": {"description": "You.", "content": _json(_schema("Me"))}, **signed_in},
    }
    list_users = {
        "operationId": "listUsers",
        "summary": "Every user with their file count and bytes (administrators).",
        "tags": ["users"],
        "security": BASIC,
        "responses": {
            "200": {"description": "The users.", "content": _json(_schema("UserList"))},
            **admin,
        },
    }
    list_bundles = {
        "operationId": "listBundles",
        "summary": "The caller's bundles.",
        "tags": ["archives"],
        "security": BASIC,
        "parameters": [
            {
                "name": "hash",
                "in": "query",
                "required": False,
                "description": "Only the bundles naming this content (what keeps it stored "
                "after the caller deletes the file). Checked before the credentials.",
                "schema": {"type": "string", "pattern": HASH_INPUT_PATTERN},
            }
        ],
        "responses": {
            "200": {"description": "The bundles.", "content": _json(_schema("BundleList"))},
            **_problems("BadRequest"),
            **signed_in,
        },
    }
    return {
        "/files": {
            "post": _upload_operation("uploadFile", "Upload a file.", with_hash=False),
            "put": _upload_operation("putFile", "Upload a file (as PUT).", with_hash=False),
            **_get_and_head(list_files),
        },
        "/files/{hash}": {
            "parameters": [_param("hash")],
            "put": _upload_operation(
                "putFileWithHash", "Upload a file whose hash is known.", with_hash=True
            ),
            **_get_and_head(
                _download_operation(
                    "downloadFile",
                    "Download a file (anyone with the hash).",
                    archive=False,
                    parameters=[_param("downloadName")],
                )
            ),
            "delete": {
                "operationId": "deleteFile",
                "summary": "Drop the caller's reference to a file.",
                "description": "The hash is checked before the credentials. When bundles "
                "the caller holds still name the content, the answer is 200 and says which: "
                "the content stays stored (its link keeps working) and counted in the "
                "caller's usage until those bundles are deleted.",
                "tags": ["files"],
                "security": BASIC,
                "responses": {
                    "200": {
                        "description": "Dropped, but the caller's own bundles keep the content.",
                        "content": _json(_schema("FileDeleted")),
                    },
                    "204": {
                        "description": "Dropped; nothing of the caller's keeps the content "
                        "(the bytes go when nothing names them)."
                    },
                    **_problems("BadRequest", *SIGNED_IN, "Forbidden", "NotFound"),
                },
            },
        },
        "/me": _get_and_head(me),
        "/users": {
            **_get_and_head(list_users),
            "post": {
                "operationId": "createUser",
                "summary": "Create a user (administrators).",
                "tags": ["users"],
                "security": BASIC,
                "requestBody": {"required": True, "content": _json(_schema("NewUser"))},
                "responses": {
                    "201": {
                        "description": "Created; the password is returned if it was generated.",
                        "headers": {"Location": _header("The user's URL.")},
                        "content": _json(_schema("CreatedUser")),
                    },
                    **_problems("BadRequest", "PayloadTooLarge", "Conflict"),
                    **admin,
                },
            },
        },
        "/users/{name}": {
            "parameters": [_param("userName")],
            "patch": {
                "operationId": "updateUser",
                "summary": "Set a user's quota (administrators).",
                "tags": ["users"],
                "security": BASIC,
                "requestBody": {"required": True, "content": _json(_schema("UserUpdate"))},
                "responses": {
                    "200": {
                        "description": "Updated; the user as `GET /users` shows them.",
                        "content": _json(_schema("UserSummary")),
                    },
                    **_problems("BadRequest", "NotFound", "PayloadTooLarge"),
                    **admin,
                },
            },
            "delete": {
                "operationId": "deleteUser",
                "summary": "Remove a user and every reference they hold (administrators).",
                "tags": ["users"],
                "security": BASIC,
                "responses": {
                    "204": {"description": "Removed."},
                    **_problems("NotFound", "Conflict"),
                    **admin,
                },
            },
        },
        "/archives": {
            "post": {
                "operationId": "createBundle",
                "summary": "Save a bundle of stored files, served at /archive/{id}/.",
                "tags": ["archives"],
                "security": BASIC,
                "requestBody": {"required": True, "content": _json(_schema("Manifest"))},
                "responses": {
                    "200": {
                        "description": "The caller already held this bundle.",
                        "headers": {"Location": _LOCATION},
                        "content": _json(_schema("BundleCreated")),
                    },
                    "201": {
                        "description": "Saved.",
                        "headers": {"Location": _LOCATION},
                        "content": _json(_schema("BundleCreated")),
                    },
                    **_problems("BadRequest", "Forbidden", "Conflict", "PayloadTooLarge"),
                    **signed_in,
                },
            },
            **_get_and_head(list_bundles),
        },
        "/archives/{id}": {
            "parameters": [_param("bundleId")],
            "delete": {
                "operationId": "deleteBundle",
                "summary": "Drop the caller's bundle.",
                "description": "The id is checked before the credentials.",
                "tags": ["archives"],
                "security": BASIC,
                "responses": {
                    "204": {"description": "Dropped."},
                    **_problems("BadRequest", *SIGNED_IN, "Forbidden", "NotFound"),
                },
            },
        },
    }


def _web_paths(*, file_api: bool) -> Json:
    """The pages for people (`filecask.api.pages`): Swagger UI at /docs always, the web
    page at / only with the file API, which it uses. Their assets are fixed lists of files,
    so each asset route takes exactly the names listed (anything else is 404)."""
    # Imported here: the handlers import the app, which the document does not need.
    import filecask.api.pages as pages

    etag = _header(
        'A strong entity tag: `"<hex>"`, `-gzip` for the gzipped form.', '^"[0-9a-f]{32}(-gzip)?"$'
    )
    cache = _header("`no-cache` for filecask's own files, a day for Swagger UI's.")
    nosniff = _header("Always `nosniff`.", "^nosniff$")

    def operation(
        operation_id: str, summary: str, sources: list[pages.Source], parameters: list[Json]
    ) -> Json:
        headers: Json = {"ETag": etag, "Cache-Control": cache, "X-Content-Type-Options": nosniff}
        if any(source.csp for source in sources):
            headers["Content-Security-Policy"] = _header(
                "Scripts from this origin only, never inline."
            )
        types = sorted({source.content_type for source in sources})
        string = (
            {"type": "string"} if types == ["text/html"] else {"type": "string", "format": "binary"}
        )
        responses: Json = {
            "200": {
                "description": "The file (gzipped when Accept-Encoding allows).",
                "headers": headers,
                "content": {media: {"schema": string} for media in types},
            },
            "304": {
                "description": "If-None-Match named the current ETag.",
                "headers": {"ETag": etag},
            },
        }
        if parameters:
            responses.update(_problems("NotFound"))
        return {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["pages"],
            "security": ANONYMOUS,
            "parameters": [*parameters, _param("If-None-Match")],
            "responses": responses,
        }

    def asset(table: dict[str, pages.Source], prefix: str) -> Json:
        return {
            "name": "asset",
            "in": "path",
            "required": True,
            "description": f"One of the files served under {prefix}.",
            "schema": {"type": "string", "enum": sorted(table)},
        }

    paths: Json = {
        "/docs": _get_and_head(
            operation(
                "docsPage",
                "Swagger UI for this document (served locally, no CDN).",
                [pages.DOCS_INDEX],
                [],
            )
        ),
        "/docs/{asset}": _get_and_head(
            operation(
                "docsAsset",
                "A file of the Swagger UI page.",
                list(pages.DOCS_ASSETS.values()),
                [asset(pages.DOCS_ASSETS, "/docs/")],
            )
        ),
    }
    if file_api:
        paths["/"] = _get_and_head(
            operation(
                "webPage", "The web page: sign in, upload, list, bundle files.", [pages.INDEX], []
            )
        )
        paths["/web/{asset}"] = _get_and_head(
            operation(
                "webAsset",
                "A file of the web page (script, style sheet, icon).",
                list(pages.PAGE_ASSETS.values()),
                [asset(pages.PAGE_ASSETS, "/web/")],
            )
        )
    return paths


def _upload_paths() -> Json:
    """/uploads/: tus 1.0 resumable uploads (core, creation, termination, checksum,
    expiration). Every response, errors included, carries `Tus-Resumable: 1.0.0`."""
    tus = {"Tus-Resumable": _header("Always `1.0.0`.", "^1\\.0\\.0$")}
    version = {
        "name": "Tus-Resumable",
        "in": "header",
        "required": True,
        "description": "Must be `1.0.0` (else 412 with `Tus-Version`).",
        "schema": {"type": "string", "const": "1.0.0"},
    }
    upload_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "The upload's id, from the creation's `Location`.",
        "schema": {"type": "string"},
    }
    file_headers = {
        "Filecask-Hash": _header("The stored file's SHA-256, once complete.", required=False),
        "Filecask-File": _header("The stored file's URL, once complete.", required=False),
    }
    expires = _header("RFC 9110 HTTP-date after which the upload is gone.")

    def problems(*statuses: tuple[int, str]) -> Json:
        found = {}
        for status, description in statuses:
            response = _problem_response(status, description)
            response["headers"] = tus
            found[str(status)] = response
        return found

    common = ((400, "A malformed tus header."), (401, "Sign in."), (412, "Not tus 1.0.0."))
    owned = (*common, (403, "Not your upload."), (404, "No such upload."), (410, "Expired."))
    return {
        "/uploads/": {
            "options": {
                "operationId": "tusDiscover",
                "summary": "tus discovery: version, extensions, maximum size, checksums",
                "tags": ["files"],
                "security": ANONYMOUS,
                "responses": {
                    "204": {
                        "description": "What the server speaks.",
                        "headers": {
                            **tus,
                            "Tus-Version": _header("`1.0.0`."),
                            "Tus-Extension": _header("`creation,termination,checksum,expiration`."),
                            "Tus-Max-Size": _header("`--max-upload-size`, in bytes."),
                            "Tus-Checksum-Algorithm": _header("`sha1,sha256`."),
                        },
                    }
                },
            },
            "post": {
                "operationId": "tusCreate",
                "summary": "Create a resumable upload of Upload-Length bytes",
                "description": "`Upload-Metadata` may carry `filename` (base64), the stored "
                "file's name. Upload-Length is reserved against the user's quota until the "
                "upload completes, is deleted or expires: 413 when it exceeds "
                "`--max-upload-size`, or when the user's usage, the reservations of their "
                "open uploads and this one together exceed the quota; 429 when they have "
                "`--max-open-uploads` open already. Upload-Length 0 completes at once.",
                "tags": ["files"],
                "security": BASIC,
                "parameters": [
                    version,
                    {
                        "name": "Upload-Length",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    },
                    {
                        "name": "Upload-Metadata",
                        "in": "header",
                        "required": False,
                        "description": "Comma-separated `key base64(value)` pairs; ASCII"
                        " only (any other byte is 400).",
                        "schema": {"type": "string", "pattern": "^[ -~]*$"},
                    },
                ],
                "responses": {
                    "201": {
                        "description": "Created; `Location` is the upload's URL.",
                        "headers": {
                            **tus,
                            "Location": _header("The upload's URL."),
                            "Upload-Expires": expires,
                            **file_headers,
                        },
                    },
                    **problems(
                        *common,
                        (404, "The user was removed meanwhile."),
                        (413, "Too large, or over quota (reservations included)."),
                    ),
                    "429": {
                        **_problem_response(429, "Too many open uploads (`too-many-uploads`)."),
                        "headers": {
                            **tus,
                            "Retry-After": _header(
                                "Seconds until the soonest open upload expires.", "^[0-9]+$"
                            ),
                        },
                    },
                },
            },
        },
        "/uploads/{id}": {
            "parameters": [upload_id],
            "head": {
                "operationId": "tusStatus",
                "summary": "The durable offset (and, once complete, the stored file)",
                "tags": ["files"],
                "security": BASIC,
                "parameters": [version],
                "responses": {
                    "200": {
                        "description": "Upload-Offset bytes are stored durably.",
                        "headers": {
                            **tus,
                            "Upload-Offset": _header("Bytes received.", "^[0-9]+$"),
                            "Upload-Length": _header("Bytes announced.", "^[0-9]+$"),
                            "Upload-Expires": expires,
                            **file_headers,
                        },
                    },
                    **problems(*owned),
                },
            },
            "patch": {
                "operationId": "tusAppend",
                "summary": "Append bytes at Upload-Offset",
                "description": "The final byte stores the file like `POST /files` (hash, "
                "dedup, quota) and the answer carries `Filecask-Hash` and `Filecask-File`. "
                "A cut body keeps what arrived unless `Upload-Checksum` was given. Only a "
                "PATCH that adds bytes moves `Upload-Expires`.",
                "tags": ["files"],
                "security": BASIC,
                "parameters": [
                    version,
                    {
                        "name": "Upload-Offset",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    },
                    {
                        "name": "Upload-Checksum",
                        "in": "header",
                        "required": False,
                        "description": "`sha1 <base64>` or `sha256 <base64>` of the body.",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/offset+octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "204": {
                        "description": "Stored durably up to the new Upload-Offset.",
                        "headers": {
                            **tus,
                            "Upload-Offset": _header("The new offset.", "^[0-9]+$"),
                            "Upload-Expires": expires,
                            **file_headers,
                        },
                    },
                    **problems(
                        *owned,
                        (408, "The body stalled; what arrived is kept."),
                        (409, "Upload-Offset is not the upload's offset."),
                        (413, "Past Upload-Length, or over quota on completion."),
                        (415, "Not application/offset+octet-stream."),
                        (423, "Another PATCH is writing to this upload."),
                        (460, "The body does not match Upload-Checksum; discarded."),
                        (507, "The disk is full."),
                    ),
                },
            },
            "delete": {
                "operationId": "tusTerminate",
                "summary": "Remove the upload and its bytes",
                "tags": ["files"],
                "security": BASIC,
                "parameters": [version],
                "responses": {
                    "204": {"description": "Removed.", "headers": tus},
                    **problems(*owned, (423, "A PATCH is writing to this upload.")),
                },
            },
        },
    }


def openapi_document(*, file_api: bool = True) -> Json:
    """The OpenAPI 3.1 document of a server started with `--file-api` as given.

    A fresh dict each call, so a caller may change it (e.g. add `servers`) freely."""
    paths = {**_ops_paths(), **_archive_paths(file_api=file_api)}
    if file_api:
        paths.update(_file_api_paths())
        paths.update(_upload_paths())
    paths.update(_web_paths(file_api=file_api))
    responses = _responses()
    document: Json = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "filecask",
            "version": "0.1.0",
            "summary": "A self-hosted, content-addressed HTTP file store with streaming ZIPs.",
            "description": (
                "Files are stored once under the SHA-256 of their content. Downloads are "
                "public to anyone with the hash; uploads and listings need HTTP Basic "
                "credentials of a user an administrator created. Every error is an RFC "
                "9457 `application/problem+json` body."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [
            {"name": "files", "description": "Upload, download, list and delete files."},
            {"name": "archives", "description": "Folders and bundles as streamed ZIPs."},
            {"name": "users", "description": "The caller, and user administration."},
            {"name": "operations", "description": "Health, readiness, this document."},
            {"name": "pages", "description": "The web page and Swagger UI, for people."},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "UTF-8 user:password (RFC 7617); the user name in any "
                    "case or width (`Admin` signs in as `admin`). Repeated failures from one "
                    "client address are slowed down there and answered 429 with Retry-After; "
                    "they never refuse the right password from another address.",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The metrics token (`FILECASK_METRICS_TOKEN` or "
                    "`--metrics-token-file`), for /metrics only (RFC 6750).",
                },
            },
            "schemas": _schemas(),
            "responses": responses,
            "parameters": _parameters(),
        },
    }
    return document
