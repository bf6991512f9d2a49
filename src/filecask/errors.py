"""The domain errors of filecask, mapped to HTTP in exactly one place (`problem.py`).

Domain modules raise these and never import aiohttp. Each class carries the RFC 9457
problem fields its meaning implies; an instance adds a human `detail`, optional extension
members and response headers (``WWW-Authenticate``, ``Retry-After``, ``Content-Range``).

    FilecaskError                    500
    ├── BadRequest                   400
    │   ├── InvalidHash              400
    │   ├── InvalidName              400
    │   └── HashMismatch             400
    ├── Unauthorized                 401
    ├── Forbidden                    403
    │   └── NotHeld                  403
    ├── NotFound                     404
    ├── RequestTimeout               408
    ├── Conflict                     409
    │   └── TooManyBundles           409
    ├── Gone                         410
    ├── PreconditionFailed           412
    ├── PayloadTooLarge              413
    │   ├── QuotaExceeded            413
    │   └── FormTooLarge             413
    ├── UnsupportedMediaType         415
    ├── RangeNotSatisfiable          416
    ├── Locked                       423
    ├── RateLimited                  429
    ├── TooManyUploads               429
    ├── ChecksumMismatch             460
    ├── InsufficientStorage          507
    ├── ServiceUnavailable           503
    │   └── TooManyConnections       503
    ├── HeadTooLarge                 431
    └── VersionNotSupported          505
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

PROBLEM_BASE = "https://filecask.dev/problems/"


class FilecaskError(Exception):
    """Base of every error filecask reports to a client."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers: dict[str, str] = dict(headers or {})
        self.extensions: dict[str, Any] = extensions

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body: the standard members first, then our extensions."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class BadRequest(FilecaskError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class InvalidHash(BadRequest):
    slug = "invalid-hash"
    title = "Invalid hash"


class InvalidName(BadRequest):
    slug = "invalid-name"
    title = "Invalid name"


class HashMismatch(BadRequest):
    slug = "hash-mismatch"
    title = "Content does not match the hash"


class Unauthorized(FilecaskError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        # RFC 7617 §2.1: the charset parameter tells clients to send UTF-8 credentials.
        super().__init__(
            detail,
            headers={"WWW-Authenticate": 'Basic realm="filecask", charset="UTF-8"'},
            **extensions,
        )


class Forbidden(FilecaskError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(FilecaskError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(FilecaskError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class PayloadTooLarge(FilecaskError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class FormTooLarge(PayloadTooLarge):
    """A multipart upload with more parts, or more bytes besides its file, than allowed
    (`--multipart-max-parts`, `--multipart-max-form-size`): a limit on the form, never
    turned into a quota refusal."""


class RequestTimeout(FilecaskError):
    """The client stalled sending its request (headers or body) for longer than allowed;
    the connection is closed after this answer (RFC 9110 §15.5.9)."""

    status = 408
    slug = "request-timeout"
    title = "Request timeout"


class RangeNotSatisfiable(FilecaskError):
    status = 416
    slug = "range-not-satisfiable"
    title = "Range not satisfiable"

    def __init__(self, size: int, detail: str | None = None) -> None:
        # RFC 9110 §15.5.17: a 416 carries the current length as `bytes */length`.
        super().__init__(detail, headers={"Content-Range": f"bytes */{size}"})


class RateLimited(FilecaskError):
    status = 429
    slug = "rate-limited"
    title = "Too many failed attempts"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(
            detail or f"Too many failed sign-in attempts; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )


class InsufficientStorage(FilecaskError):
    status = 507
    slug = "insufficient-storage"
    title = "Insufficient storage"


class ServiceUnavailable(FilecaskError):
    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"


class QuotaExceeded(PayloadTooLarge):
    """An upload that would take the user past their quota (`filecask user quota`).

    A 413 like any oversized upload (the request is too large *for this user*), with its own
    slug so clients can tell "ask an administrator for more room" from "split the file"."""

    slug = "quota-exceeded"
    title = "Quota exceeded"

    def __init__(
        self, *, quota: int, used: int, size: int, cut: bool = False, reserved: int = 0
    ) -> None:
        """`cut`: the stream was stopped at `size` bytes, the upload was at least that.
        `reserved`: bytes held for the user's unfinished resumable uploads (named only when
        there are some)."""
        human = self.human_size
        amount = f"at least {human(size)}" if cut else human(size)
        held = f", {human(reserved)} reserved by unfinished uploads" if reserved else ""
        extensions: dict[str, Any] = {"quota": quota, "used": used, "size": size}
        if reserved:
            extensions["reserved"] = reserved
        super().__init__(
            f"The upload of {amount} would exceed your quota of {human(quota)}"
            f" ({human(used)} used{held}).",
            **extensions,
        )

    @staticmethod
    def human_size(size: int) -> str:
        """`12.0 MiB`: binary units, as quotas are given (`10G` is 10 GiB)."""
        if size < 1024:
            return f"{size} bytes"
        value = float(size)
        for unit in ("KiB", "MiB", "GiB", "TiB"):
            value /= 1024
            if value < 1024 or unit == "TiB":
                break
        return f"{value:.1f} {unit}"


class Gone(FilecaskError):
    """A resumable upload that expired (or whose data was lost): start a new one."""

    status = 410
    slug = "gone"
    title = "Gone"


class PreconditionFailed(FilecaskError):
    """A tus request for a protocol version we do not speak (tus 1.0 §Tus-Resumable)."""

    status = 412
    slug = "precondition-failed"
    title = "Precondition failed"


class UnsupportedMediaType(FilecaskError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class Locked(FilecaskError):
    """Another request is writing to the same resumable upload right now."""

    status = 423
    slug = "locked"
    title = "Locked"


class ChecksumMismatch(FilecaskError):
    """tus checksum extension: the PATCH body does not match `Upload-Checksum`; its bytes
    were discarded and the offset is unchanged."""

    status = 460
    slug = "checksum-mismatch"
    title = "Checksum mismatch"


# Issue 14 §1 (quotas and disk): what a user keeps alive is what a user pays for.


class NotHeld(Forbidden):
    """A bundle names content the caller holds no file reference to. Content nobody stores
    gets the same answer, so creating bundles tells nobody what others store."""

    slug = "not-held"
    title = "Content not held"


class TooManyBundles(Conflict):
    """The user holds `--max-bundles-per-user` bundles already: delete one first."""

    slug = "too-many-bundles"
    title = "Too many bundles"


class TooManyUploads(FilecaskError):
    """The user has `--max-open-uploads` unfinished resumable uploads: finish, delete or
    let one expire first (`Retry-After`: until the soonest expires)."""

    status = 429
    slug = "too-many-uploads"
    title = "Too many open uploads"


class TooManyConnections(ServiceUnavailable):
    """A new connection past the open-connection limits (in all, or from one address),
    answered at once and closed, like nginx's `limit_conn` (also a 503)."""

    slug = "too-many-connections"
    title = "Too many connections"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class HeadTooLarge(FilecaskError):
    """A request line, a header field or the request head as a whole over its limit
    (RFC 6585 §5); the connection is closed after the answer."""

    status = 431
    slug = "request-header-fields-too-large"
    title = "Request Header Fields Too Large"


class VersionNotSupported(FilecaskError):
    """A request in an HTTP version other than 1.0 and 1.1 (RFC 9110 §15.6.6), answered
    in HTTP/1.1; the connection is closed after the answer."""

    status = 505
    slug = "http-version-not-supported"
    title = "HTTP Version Not Supported"
