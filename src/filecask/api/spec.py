"""What a handler declares about itself for the OpenAPI document: `@operation(...)` next to
the route, with its answers as `Reply` (a body type from `filecask.api.models`, headers)
and its errors by name (`PROBLEMS`). `filecask.api.openapi` assembles the document from
these and the models' JSON Schemas; this module imports no handler."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from filecask.errors import (
    BadRequest,
    Conflict,
    FilecaskError,
    Forbidden,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from filecask.hashes import HASH_INPUT_PATTERN

Json = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
PROBLEM_JSON = "application/problem+json"
BASIC: list[Json] = [{"basicAuth": []}]
ANONYMOUS: list[Json] = []
BINARY: Json = {"type": "string", "format": "binary"}


def header(description: str, pattern: str | None = None, *, required: bool = True) -> Json:
    schema: Json = {"type": "string"} if pattern is None else {"type": "string", "pattern": pattern}
    return {"required": required, "description": description, "schema": schema}


def param(name: str, where: str, description: str, schema: Json | None = None) -> Json:
    """A parameter; a path parameter is required, any other optional."""
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


def hash_param(name: str, description: str, where: str = "path") -> Json:
    return param(name, where, description, {"type": "string", "pattern": HASH_INPUT_PATTERN})


@dataclass(frozen=True)
class Reply:
    """One documented answer: `body` is a models type (JSON), or `content` a media map."""

    description: str
    body: object = None
    headers: Json = field(default_factory=dict)
    content: Json | None = None


@dataclass(frozen=True)
class Problem:
    """An error answer spelled out here rather than by its name in `PROBLEMS`."""

    status: int
    description: str
    headers: Json = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    operation_id: str
    summary: str
    tag: str
    security: list[Json]
    replies: Mapping[int, Reply | Problem | str]
    """By status: a `Reply`, a `Problem`, or the name of a shared problem in `PROBLEMS`."""
    description: str | None = None
    parameters: Sequence[Json] = ()
    body: object = None
    """A models type (a JSON body), or the `requestBody` itself as a dict."""
    variants: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """`"METHOD /path"` of another route of the same handler: its (operation id, summary)."""


OPERATION = "__openapi__"


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    *,
    replies: Mapping[int, Reply | Problem | str],
    problems: Sequence[str] = (),
    security: list[Json] = BASIC,
    **extra: Any,
) -> Callable[[F], F]:
    """Attach the operation's declaration to its handler; `problems` names shared
    problems (`PROBLEMS`), each under its status."""
    found = {PROBLEMS[name][0].status: name for name in problems}
    declared = Operation(operation_id, summary, tag, security, {**found, **replies}, **extra)

    def attach(handler: F) -> F:
        setattr(handler, OPERATION, declared)
        return handler

    return attach


PROBLEMS: dict[str, tuple[type[FilecaskError], str]] = {
    "BadRequest": (BadRequest, "The request is malformed: a bad hash, name, parameter or body."),
    "Unauthorized": (Unauthorized, "No, malformed or wrong Basic credentials."),
    "Forbidden": (
        Forbidden,
        "Signed in, but not allowed (not an administrator, not the holder; `not-held`: a "
        "bundle names content the caller holds no file for, with `hashes`).",
    ),
    "NotFound": (NotFound, "No such file, bundle, folder or user (or no such route)."),
    "RequestTimeout": (RequestTimeout, "The request body stalled longer than `--body-timeout`."),
    "Conflict": (
        Conflict,
        "The name is taken (also by a look-alike: `Admin` next to `admin`), the last "
        "administrator would be removed, or the caller holds `--max-bundles-per-user` "
        "bundles already (`too-many-bundles`, with `limit`).",
    ),
    "PayloadTooLarge": (
        PayloadTooLarge,
        "Larger than `--max-upload-size` (`payload-too-large`, with `limit`), beyond the "
        "user's quota (`quota-exceeded`, with `quota`, `used`, `size` and `reserved`), a "
        "multipart form with more parts or more bytes besides its file than allowed "
        "(`payload-too-large`, with `limit`), a JSON body over 1 MiB, or a bundle over "
        "`--max-bundle-size` (`limit`) or `--max-bundle-entries` (`max_entries`).",
    ),
    "RangeNotSatisfiable": (RangeNotSatisfiable, "No requested range overlaps the body."),
    "TooManyRequests": (
        RateLimited,
        "Too many failed sign-ins from this client address, or for this user name from it.",
    ),
    "ServiceUnavailable": (ServiceUnavailable, "The database or the store is unusable."),
    "InsufficientStorage": (
        InsufficientStorage,
        "The store's disk is full (or would dip into its reserve).",
    ),
}
PROBLEM_HEADERS: dict[str, Json] = {
    "Unauthorized": {
        "WWW-Authenticate": header('Always `Basic realm="filecask", charset="UTF-8"`.')
    },
    "TooManyRequests": {
        "Retry-After": header("Seconds to wait before the next attempt.", "^[0-9]+$")
    },
    "RangeNotSatisfiable": {
        "Content-Range": header("`bytes */<size>` (RFC 9110 §15.5.17).", "^bytes \\*/[0-9]+$")
    },
}
SIGNED_IN = ("Unauthorized", "TooManyRequests")
"""What any operation that needs Basic credentials can answer."""

# Downloads (a file, an archive): ranges, conditional requests.

RANGE_PARAMETERS = [
    param(
        "Range",
        "header",
        "`bytes=` ranges, single or several (RFC 9110 §14.2); a malformed one is ignored (200).",
    ),
    param("If-Range", "header", "Honour Range only if this is the current ETag."),
]
IF_NONE_MATCH = param("If-None-Match", "header", "304 when it names the current ETag (or is `*`).")
ETAG = header('A strong entity tag: `"<hex>"`.', '^"[0-9a-f]{64}"$')
LOCATION = header("The URL of the stored file or bundle.")


def download_replies(*, archive: bool) -> dict[int, Reply | Problem | str]:
    """200, 206, 304 (and 307 for a file) of a download, with their headers."""
    media = "application/zip" if archive else "*/*"
    headers: Json = {
        "ETag": ETAG,
        "Accept-Ranges": header("Always `bytes`.", "^bytes$"),
        "Cache-Control": header(
            "`no-cache` (a folder can change under its URL)"
            if archive
            else "`public, max-age=31536000, immutable`: content never changes under a hash."
        ),
        "Content-Disposition": header(
            "`inline` or `attachment` with `filename` and, for non-ASCII names, RFC 5987 "
            "`filename*`."
        ),
        "X-Content-Type-Options": header("Always `nosniff`.", "^nosniff$"),
    }
    if archive:
        headers["Last-Modified"] = header("The newest member's modification time.", required=False)
    else:
        headers["Content-Security-Policy"] = header("Always `sandbox`.", "^sandbox$")
    ranged = headers | {
        "Content-Range": header(
            "Present for a single range; several ranges come as multipart/byteranges.",
            "^bytes [0-9]+-[0-9]+/[0-9]+$",
            required=False,
        )
    }
    whole = " (a ZIP streamed as it is sent)." if archive else "."
    replies: dict[int, Reply | Problem | str] = {
        200: Reply("The whole body" + whole, headers=headers, content={media: {"schema": BINARY}}),
        206: Reply(
            "The requested range, or several as multipart/byteranges.",
            headers=ranged,
            content={media: {"schema": BINARY}, "multipart/byteranges": {"schema": BINARY}},
        ),
        304: Reply("If-None-Match named the current ETag.", headers={"ETag": ETAG}),
        400: "BadRequest",
        404: "NotFound",
        416: "RangeNotSatisfiable",
    }
    if not archive:
        replies[307] = Reply(
            "With S3 storage and `--s3-presign`: fetch the bytes from the presigned URL in "
            "`Location` (valid that long; it answers with the Content-Type and "
            "Content-Disposition a download from filecask would have).",
            headers={
                "Location": header("A presigned URL of the object store."),
                "Cache-Control": header("Always `no-store`: the URL expires.", "^no-store$"),
            },
        )
    return replies
