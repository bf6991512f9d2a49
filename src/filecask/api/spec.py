"""What a handler declares about itself for the OpenAPI document: `@operation(...)` next to
its route. `filecask.api.openapi` assembles the document from these and the models' JSON
Schemas (it also gives each operation its route table's tag); this module imports no handler.

The declarations are compact; the assembler spells them out:
- an answer (`replies={status: ...}`) is its description, or `(description, body)` or
  `(description, body, headers)`: `body` is a `filecask.api.models` type (a JSON body), a
  media map `{media type: schema}`, or None. An answer from 400 up is a problem+json body;
- `errors` lists shared problems (`PROBLEMS`) by status;
- headers map a name (with a trailing `?` when optional) to a description, or to
  `(description, pattern)`;
- an operation that may answer 401 needs Basic credentials, unless it says otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from filecask import errors
from filecask.hashes import HASH_INPUT_PATTERN

Json = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
Headers = Mapping[str, str | tuple[str, str]]
Reply = str | tuple[str, object] | tuple[str, object, Headers]
BINARY: Json = {"type": "string", "format": "binary"}
OPERATION = "__openapi__"


def param(
    name: str, where: str, description: str, schema: Json | None = None, required: bool = False
) -> Json:
    """A parameter (without `description` if it is empty); a path parameter is required."""
    found: Json = {"name": name, "in": where, "required": required or where == "path"}
    return (
        found
        | ({"description": description} if description else {})
        | {"schema": schema or {"type": "string"}}
    )


def hash_param(name: str, description: str, where: str = "path") -> Json:
    return param(name, where, description, {"type": "string", "pattern": HASH_INPUT_PATTERN})


@dataclass(frozen=True)
class Operation:
    """One operation's declaration; as a decorator, it attaches itself to the handler,
    whose docstring gives the summary (its first paragraph) and the description (the rest)
    unless they are given."""

    operation_id: str
    replies: Mapping[int, Reply]
    errors: Sequence[int] = ()
    summary: str = ""
    description: str = ""
    parameters: Sequence[Json] = ()
    body: object = None
    """A models type (a JSON body), or the `requestBody` itself as a dict."""
    security: list[Json] | None = None
    variants: Mapping[str, str | tuple[str, str]] = field(default_factory=dict)
    """`"METHOD /path"` of another route of the same handler: its operation id (and summary)."""

    def __call__(self, handler: F) -> F:
        summary, *rest = [
            " ".join(p.split()) for p in inspect.cleandoc(handler.__doc__ or "").split("\n\n")
        ]
        found = replace(
            self, summary=self.summary or summary, description=self.description or "\n\n".join(rest)
        )
        setattr(handler, OPERATION, found)
        return handler


operation = Operation
PROBLEMS: dict[str, tuple[type[errors.FilecaskError], str]] = {
    "BadRequest": (
        errors.BadRequest,
        "The request is malformed: a bad hash, name, parameter or body.",
    ),
    "Unauthorized": (errors.Unauthorized, "No, malformed or wrong Basic credentials."),
    "Forbidden": (
        errors.Forbidden,
        "Signed in, but not allowed (not an administrator, not the holder; `not-held`: a "
        "bundle names content the caller holds no file for, with `hashes`).",
    ),
    "NotFound": (errors.NotFound, "No such file, bundle, folder or user (or no such route)."),
    "RequestTimeout": (
        errors.RequestTimeout,
        "The request body stalled longer than `--body-timeout`.",
    ),
    "Conflict": (
        errors.Conflict,
        "The name is taken (also by a look-alike: `Admin` next to `admin`), the last "
        "administrator would be removed, or the caller holds `--max-bundles-per-user` "
        "bundles already (`too-many-bundles`, with `limit`).",
    ),
    "PayloadTooLarge": (
        errors.PayloadTooLarge,
        "Larger than `--max-upload-size` (`payload-too-large`, with `limit`), beyond the "
        "user's quota (`quota-exceeded`, with `quota`, `used`, `size` and `reserved`), a "
        "multipart form with more parts or more bytes besides its file than allowed "
        "(`payload-too-large`, with `limit`), a JSON body over 1 MiB, or a bundle over "
        "`--max-bundle-size` (`limit`) or `--max-bundle-entries` (`max_entries`).",
    ),
    "RangeNotSatisfiable": (errors.RangeNotSatisfiable, "No requested range overlaps the body."),
    "TooManyRequests": (
        errors.RateLimited,
        "Too many failed sign-ins from this client address, or for this user name from it.",
    ),
    "ServiceUnavailable": (errors.ServiceUnavailable, "The database or the store is unusable."),
    "InsufficientStorage": (
        errors.InsufficientStorage,
        "The store's disk is full (or would dip into its reserve).",
    ),
}
PROBLEM_HEADERS: dict[str, Headers] = {
    "Unauthorized": {"WWW-Authenticate": 'Always `Basic realm="filecask", charset="UTF-8"`.'},
    "TooManyRequests": {"Retry-After": ("Seconds to wait before the next attempt.", "^[0-9]+$")},
    "RangeNotSatisfiable": {
        "Content-Range": ("`bytes */<size>` (RFC 9110 §15.5.17).", "^bytes \\*/[0-9]+$")
    },
}
SIGNED_IN = (401, 429)
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
ETAG = ('A strong entity tag: `"<hex>"`.', '^"[0-9a-f]{64}"$')
LOCATION = "The URL of the stored file or bundle."
NOSNIFF = ("Always `nosniff`.", "^nosniff$")


def download_replies(*, archive: bool) -> dict[int, Reply]:
    """200, 206, 304 (and 307 for a file) of a download, with their headers."""
    media = "application/zip" if archive else "*/*"
    headers: dict[str, str | tuple[str, str]] = {
        "ETag": ETAG,
        "Accept-Ranges": ("Always `bytes`.", "^bytes$"),
        "Cache-Control": "`no-cache` (a folder can change under its URL)"
        if archive
        else "`public, max-age=31536000, immutable`: content never changes under a hash.",
        "Content-Disposition": "`inline` or `attachment` with `filename` and, for non-ASCII "
        "names, RFC 5987 `filename*`.",
        "X-Content-Type-Options": NOSNIFF,
    }
    if archive:
        headers["Last-Modified?"] = "The newest member's modification time."
    else:
        headers["Content-Security-Policy"] = ("Always `sandbox`.", "^sandbox$")
    ranged = headers | {
        "Content-Range?": (
            "Present for a single range; several ranges come as multipart/byteranges.",
            "^bytes [0-9]+-[0-9]+/[0-9]+$",
        )
    }
    whole = " (a ZIP streamed as it is sent)." if archive else "."
    replies: dict[int, Reply] = {
        200: ("The whole body" + whole, {media: BINARY}, headers),
        206: (
            "The requested range, or several as multipart/byteranges.",
            {media: BINARY, "multipart/byteranges": BINARY},
            ranged,
        ),
        304: ("If-None-Match named the current ETag.", None, {"ETag": ETAG}),
    }
    if not archive:
        replies[307] = (
            "With S3 storage and `--s3-presign`: fetch the bytes from the presigned URL in "
            "`Location` (valid that long; it answers with the Content-Type and "
            "Content-Disposition a download from filecask would have).",
            None,
            {
                "Location": "A presigned URL of the object store.",
                "Cache-Control": ("Always `no-store`: the URL expires.", "^no-store$"),
            },
        )
    return replies


DOWNLOAD_ERRORS = (400, 404, 416)
