"""The JSON bodies of the API as types: what handlers encode, validate, and what the OpenAPI
document's schemas are generated from (docs/api-models.md says why).

Answers are TypedDicts: a handler builds a plain dict that mypy checks against the type,
and `reply` encodes it through the type's pydantic serializer (in Rust, no validation).
Request bodies are pydantic models that run the same checks, in the same order and with
the same errors (`BadRequest` naming the field), as the handlers did by hand. Error bodies
stay `filecask.errors`' problem dicts; `Problem` only describes them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, NotRequired, TypeVar, cast

from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    model_validator,
    with_config,
)
from pydantic import ValidationError as _ValidationError
from pydantic_core import PydanticSerializationError
from typing_extensions import TypeAliasType, TypedDict

from filecask.archives.manifest import DEFAULT_NAME, MAX_BYTES, MAX_ENTRIES
from filecask.auth import USER_NAME_MAX, validate_password, validate_user_name
from filecask.errors import PROBLEM_BASE, BadRequest
from filecask.hashes import HASH_INPUT_PATTERN, HASH_PATTERN
from filecask.names import NAME_MAX_BYTES, PATH_MAX_BYTES
from filecask.settings import SIZE_PATTERN
from filecask.storage.meta import QUOTA_MAX, parse_quota

CLOSED = ConfigDict(extra="forbid")
"""An answer has exactly the members its type names (`additionalProperties: false`)."""

Hash = TypeAliasType(
    "Hash",
    Annotated[
        str,
        Field(pattern=HASH_PATTERN, description="The 64 lower-case hex digits of a SHA-256."),
    ],
)
Timestamp = Annotated[
    str, Field(description="ISO 8601 timestamp of the metadata store (`datetime.isoformat()`).")
]
Url = Annotated[str, Field(json_schema_extra={"format": "uri"})]
Count = Annotated[int, Field(ge=0)]
Quota = Annotated[
    Annotated[int, Field(ge=0, le=QUOTA_MAX)] | None,
    Field(
        description="Most bytes the user may keep (`bytes`) and reserve (`reserved`) "
        "together, or null for no limit."
    ),
]
NAME_CHARACTERS = (
    "no control character (C0, DEL, C1), format character (bidi controls such as U+202E, "
    "zero-width characters, U+FEFF...), line or paragraph separator, lone surrogate or "
    "non-character (else 400, naming the `code_point`)."
)
PATH_RULES = (
    "Safe to extract on Windows and macOS: no drive letter, no ':' or any of "
    "`< > \" | ? *`, no component ending with '.' or ' ', no device name (`CON`, `aux.txt`, "
    "`COM1`...), no component over 255 bytes, the same once NFKC or Windows best-fit "
    "conversion is applied (no U+FF0F FULLWIDTH SOLIDUS, U+2215 DIVISION SLASH, U+FF1A "
    "FULLWIDTH COLON, U+2025 TWO DOT LEADER, fullwidth `con`...: else 400 naming the "
    "`code_point`), and no two entries that are one file once "
    "case and Unicode forms are ignored (`Readme.txt`/`README.TXT`, NFC/NFD, `a` next to "
    "`A/b`): else 400."
)


# ------------------------------------------------------------------------------ answers


@with_config(CLOSED)
class Status(TypedDict):
    status: Literal["ok", "ready"]


@with_config(CLOSED)
class FileInfo(TypedDict):
    hash: Hash
    size: Count
    name: Annotated[str, Field(description="The caller's name for the file.")]
    content_type: str
    uploaded_at: Timestamp
    url: Url


@with_config(CLOSED)
class FileList(TypedDict):
    files: list[FileInfo]
    next_cursor: Annotated[
        Annotated[str, Field(pattern="^[0-9]+$")] | None,
        Field(description="Pass as `?cursor=` for the next page; null on the last."),
    ]


@with_config(CLOSED)
class BundleCreated(TypedDict):
    id: Hash
    name: str
    url: Url


@with_config(CLOSED)
class BundleInfo(TypedDict):
    id: Hash
    name: str
    files: Annotated[int, Field(ge=1)]
    bytes: Count
    created_at: Timestamp
    url: Url


@with_config(CLOSED)
class BundleList(TypedDict):
    archives: list[BundleInfo]


@with_config(CLOSED)
class FileDeleted(TypedDict):
    """The caller's reference is gone, but bundles they hold still name the content: it
    stays stored, downloadable and counted in their usage until those bundles are deleted."""

    hash: Hash
    held_by_bundles: Annotated[list[BundleCreated], Field(min_length=1)]


_FILES = Field(ge=0, description="The user's files.")
_BYTES = Field(
    ge=0,
    description="What the user keeps alive: every distinct content of their files and of "
    "the bundles they hold, counted once. This is what the quota bounds.",
)
_BUNDLES = Field(ge=0, description="Bundles the user holds.")
_RESERVED = Field(
    ge=0,
    description="Upload-Length of the user's unfinished resumable uploads, reserved "
    "against the quota until they complete, are deleted or expire.",
)


@with_config(CLOSED)
class Me(TypedDict):
    name: str
    is_admin: bool
    files: Annotated[int, _FILES]
    bytes: Annotated[int, _BYTES]
    bundles: Annotated[int, _BUNDLES]
    reserved: Annotated[int, _RESERVED]
    quota: Quota


@with_config(CLOSED)
class UserSummary(TypedDict):
    name: str
    is_admin: bool
    created_at: Timestamp
    files: Annotated[int, _FILES]
    bytes: Annotated[int, _BYTES]
    bundles: Annotated[int, _BUNDLES]
    reserved: Annotated[int, _RESERVED]
    quota: Quota


@with_config(CLOSED)
class UserList(TypedDict):
    users: list[UserSummary]


@with_config(CLOSED)
class CreatedUser(TypedDict):
    name: str
    is_admin: bool
    password: NotRequired[
        Annotated[str, Field(description="The generated password, only when none was given.")]
    ]
    quota: Quota


@with_config(
    ConfigDict(
        extra="allow",
        json_schema_extra={
            "required": ["type", "title", "status", "detail"],
            "description": "An RFC 9457 problem. `type` is a URI under "
            f"{PROBLEM_BASE} naming the kind of error (e.g. `invalid-hash`, "
            "`hash-mismatch`, `quota-exceeded`); members beyond the five standard ones are "
            "extensions that identify what was wrong.",
        },
    )
)
class Problem(TypedDict, total=False):
    """An RFC 9457 problem, as `filecask.errors` builds it (this type only describes it)."""

    type: Url
    title: str
    status: Annotated[int, Field(ge=400, le=599)]
    detail: str
    instance: Annotated[str, Field(description="The request's path.")]
    hash: Annotated[str, Field(description="The offending hash (first 100 chars).")]
    expected: str
    actual: str
    limit: Annotated[
        int,
        Field(
            description="The limit exceeded: bytes for sizes, else a count (bundles per "
            "user, open uploads per user)."
        ),
    ]
    max_entries: Annotated[int, Field(description="Most files per bundle.")]
    hashes: Annotated[
        list[str],
        Field(
            description="A bundle's hashes the caller holds no file for (`not-held`; at "
            "most 100 listed)."
        ),
    ]
    count: Annotated[int, Field(description="How many there are in all.")]
    reserved: Annotated[int, Field(description="Bytes reserved by unfinished uploads.")]
    retry_after: Annotated[int, Field(description="Seconds until retrying.")]
    field: Annotated[str, Field(description="The JSON member that is wrong.")]
    parameter: Annotated[str, Field(description="The query parameter.")]
    entry: Annotated[int, Field(description="Index of the bad bundle entry.")]
    path: Annotated[
        str,
        Field(
            description="The refused bundle path, characters that are not printable shown "
            "as \\uXXXX escapes."
        ),
    ]
    conflicts_with: Annotated[
        str,
        Field(
            description="The bundle path the refused one collides with once case and "
            "Unicode forms are ignored (as on Windows and macOS)."
        ),
    ]
    code_point: Annotated[
        str, Field(description="The refused character of a name or path, e.g. `U+202E`.")
    ]
    position: Annotated[int, Field(description="Where in the file name the refused one is.")]
    id: str
    user: str
    quota: Annotated[int, Field(description="The user's quota, in bytes.")]
    used: Annotated[int, Field(description="Bytes the user keeps now.")]
    size: Annotated[int, Field(description="Bytes of the refused upload.")]


_ADAPTERS: dict[object, TypeAdapter[Any]] = {}


def adapter(kind: object) -> TypeAdapter[Any]:
    found = _ADAPTERS.get(kind)
    if found is None:
        found = _ADAPTERS[kind] = TypeAdapter(cast(Any, kind))
    return found


def reply(
    kind: object, body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """`body` as `kind` in JSON (`application/json; charset=utf-8`, as `web.json_response`).

    Text pydantic cannot write, lone surrogates (a Host header that is not UTF-8 ends up
    in every `url`: aiohttp decodes headers with `surrogateescape`), is written as
    `json.dumps` writes it, `\\udcff`, rather than failing with a 500."""
    found = adapter(kind)
    try:
        encoded = found.dump_json(body)
    except PydanticSerializationError:
        encoded = json.dumps(found.dump_python(body), separators=(",", ":")).encode()
    return web.Response(
        body=encoded,
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


# ------------------------------------------------------------------------------ requests


def _typed(key: str, kind: type) -> BeforeValidator:
    def check(value: object) -> object:
        if value is None or not isinstance(value, kind):
            raise BadRequest(f"Field {key!r} must be a {kind.__name__}.", field=key)
        return value

    return BeforeValidator(check)


def _user_name(value: object) -> str:
    if not isinstance(value, str):
        raise BadRequest("Field 'name' must be a str.", field="name")
    return validate_user_name(value)


QuotaInput = TypeAliasType(
    "QuotaInput",
    Annotated[
        Annotated[int, Field(ge=0, le=QUOTA_MAX)]
        | Annotated[str, Field(pattern=f"^{SIZE_PATTERN}$")]
        | None,
        Field(
            description="Bytes as an integer, a size string with binary units (`512M`, "
            "`10G`, `1.5GiB`), or null for no limit. Out of range or malformed: 400."
        ),
    ],
)
_Quota = Annotated[int | None, BeforeValidator(parse_quota, json_schema_input_type=QuotaInput)]


def _password_schema(schema: dict[str, Any]) -> None:
    """What `validate_password` asks for; no `default` (an empty string means generate)."""
    schema.pop("default", None)
    schema["minLength"] = 8


class NewUser(BaseModel):
    name: Annotated[
        str,
        BeforeValidator(_user_name),
        Field(
            min_length=1,
            max_length=USER_NAME_MAX,
            description="Letters, digits, '.', '_' or '-', starting with a letter or digit. "
            "Unique once NFKC-normalised and case-folded: `Admin` or a fullwidth `admin` "
            "next to `admin` is a 409.",
        ),
    ]
    password: Annotated[
        str,
        _typed("password", str),
        Field(
            json_schema_extra=_password_schema,
            description="At least 8 characters, at most 1024 bytes; omit (or send an empty "
            "string) to have one generated.",
        ),
    ] = ""
    is_admin: Annotated[bool, _typed("is_admin", bool)] = False
    quota: _Quota = None

    @model_validator(mode="before")
    @classmethod
    def _name_first(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data:
            raise BadRequest("Field 'name' must be a str.", field="name")
        return data

    @model_validator(mode="after")
    def _password_last(self) -> NewUser:
        if self.password:
            validate_password(self.password)
        return self


class UserUpdate(BaseModel):
    """Only the quota can be changed; any other member is a 400."""

    model_config = CLOSED
    quota: _Quota

    @model_validator(mode="before")
    @classmethod
    def _only_quota(cls, data: Any) -> Any:
        unknown = sorted(set(data) - {"quota"}) if isinstance(data, dict) else []
        if unknown:
            raise BadRequest(f"Only 'quota' can be changed, not {unknown[0]!r}.", field=unknown[0])
        if isinstance(data, dict) and "quota" not in data:
            raise BadRequest("The body needs a 'quota' member (bytes, e.g. '10G', or null).")
        return data


class ManifestEntry(BaseModel):
    hash: Annotated[str, Field(pattern=HASH_INPUT_PATTERN)]
    path: Annotated[
        str,
        Field(
            description=f"Relative, '/'-separated, at most {PATH_MAX_BYTES} bytes, no "
            f"empty, '.' or '..' component; {NAME_CHARACTERS} {PATH_RULES}"
        ),
    ]


class Manifest(BaseModel):
    # Described here, checked by `parse_manifest` (its own rules and errors).

    name: Annotated[
        str,
        Field(
            description=f"The ZIP's file name: one segment, at most {NAME_MAX_BYTES} bytes, "
            f"no '/' or '\\\\'; {NAME_CHARACTERS}"
        ),
    ] = DEFAULT_NAME
    files: Annotated[
        list[ManifestEntry],
        Field(
            min_length=1,
            description="Each hash must be one of the caller's files (403 `not-held`). At "
            f"most `--max-bundle-entries` (default {MAX_ENTRIES}) entries and "
            f"`--max-bundle-size` (default {MAX_BYTES} bytes) of body and of canonical "
            "manifest (413).",
        ),
    ]


Model = TypeVar("Model", bound=BaseModel)


def validate(model: type[Model], body: dict[str, Any]) -> Model:
    """`body` as `model`; the models' own checks raise `BadRequest` themselves, and
    anything pydantic refuses otherwise is a 400 naming the member too."""
    try:
        return model.model_validate(body)
    except _ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else None
        raise BadRequest(f"Field {key!r}: {first['msg']}.", field=key) from None
