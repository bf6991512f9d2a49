"""/me for every signed-in user; /users for administrators (no self-registration).

Quotas are set by administrators only (`POST /users` with `"quota"`, `PATCH /users/{name}`,
or `filecask user quota`), and shown to the user in /me so a client can tell how much room
is left before an upload is refused with 413 `quota-exceeded`: `quota - bytes - reserved`.
`bytes` counts every distinct content the user keeps alive, by file or by bundle, once."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from filecask.api.common import base_url, read_json_object, require_admin, require_user
from filecask.auth import generate_password, validate_password, validate_user_name
from filecask.errors import BadRequest, NotFound
from filecask.services import SERVICES
from filecask.storage.meta import UserSummary, parse_quota

routes = web.RouteTableDef()


@routes.get("/me")
async def me(request: web.Request) -> web.Response:
    """`bytes` is what the caller keeps alive: every distinct content of their files and
    of the bundles they hold, counted once; `reserved`, what their unfinished resumable
    uploads hold back. Both count against `quota`."""
    services = request.app[SERVICES]
    user = await require_user(request)
    usage = await services.meta.usage(user.id)
    _, reserved = await services.meta.open_uploads(user.id)
    return web.json_response(
        {
            "name": user.name,
            "is_admin": user.is_admin,
            "files": usage.files,
            "bytes": usage.bytes,
            "bundles": usage.bundles,
            "reserved": reserved,
            "quota": user.quota,
        }
    )


@routes.get("/users")
async def list_users(request: web.Request) -> web.Response:
    await require_admin(request)
    summaries = await request.app[SERVICES].meta.list_users()
    return web.json_response({"users": [_summary_json(s) for s in summaries]})


@routes.post("/users")
async def create_user(request: web.Request) -> web.Response:
    """`{"name": "bob", "password": "...", "is_admin": false, "quota": "10G"}`; without a
    password one is generated and returned once in the response. `quota` is optional (bytes,
    a size string, or null for no limit) and is checked before the costly password hash."""
    services = request.app[SERVICES]
    await require_admin(request)
    body = await read_json_object(request)
    name = validate_user_name(_field(body, "name", str, None))
    given = _field(body, "password", str, "")
    is_admin = _field(body, "is_admin", bool, False)
    quota = parse_quota(body.get("quota"))
    password = validate_password(given) if given else generate_password()
    password_hash = await services.auth.hash_password_async(password)
    await services.meta.create_user(name, password_hash, is_admin=is_admin, quota=quota)
    created: dict[str, Any] = {"name": name, "is_admin": is_admin, "quota": quota}
    if not given:
        created["password"] = password
    location = f"{base_url(request)}/users/{quote(name, safe='')}"
    return web.json_response(created, status=201, headers={"Location": location})


@routes.patch("/users/{name}")
async def update_user(request: web.Request) -> web.Response:
    """`{"quota": "10G"}` (or bytes, or null for no limit): the one thing changed here;
    any other member is refused rather than silently ignored, so nobody believes they
    changed a role or a password this way. Answers the user's summary as `GET /users` shows
    it. Lowering a quota below what the user stores deletes nothing: it refuses new uploads
    until they are back under it."""
    services = request.app[SERVICES]
    await require_admin(request)
    name = request.match_info["name"]
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"quota"})
    if unknown:
        raise BadRequest(f"Only 'quota' can be changed, not {unknown[0]!r}.", field=unknown[0])
    if "quota" not in body:
        raise BadRequest("The body needs a 'quota' member (bytes, e.g. '10G', or null).")
    quota = parse_quota(body["quota"])
    await services.meta.set_quota(name, quota)
    user = await services.meta.get_user(name)
    if user is None:  # removed between the two steps
        raise NotFound(f"No user named {name!r}.", user=name)
    usage = await services.meta.usage(user.id)
    _, reserved = await services.meta.open_uploads(user.id)
    summary = UserSummary(user.name, user.is_admin, user.created_at, usage, user.quota, reserved)
    return web.json_response(_summary_json(summary))


@routes.delete("/users/{name}")
async def delete_user(request: web.Request) -> web.Response:
    """Removes the user and every reference they hold; contents nobody else references
    leave the disk. The last administrator cannot be removed."""
    services = request.app[SERVICES]
    await require_admin(request)
    await services.files.remove_user(request.match_info["name"])
    return web.Response(status=204)


def _field(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if value is None or not isinstance(value, kind):
        raise BadRequest(f"Field {key!r} must be a {kind.__name__}.", field=key)
    return value


def _summary_json(summary: UserSummary) -> dict[str, Any]:
    return {
        "name": summary.name,
        "is_admin": summary.is_admin,
        "created_at": summary.created_at.isoformat(),
        "files": summary.usage.files,
        "bytes": summary.usage.bytes,
        "bundles": summary.usage.bundles,
        "reserved": summary.reserved,
        "quota": summary.quota,
    }
