"""/me for every signed-in user; /users for administrators (no self-registration)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from filecask.app import SERVICES
from filecask.auth import generate_password, validate_password, validate_user_name
from filecask.errors import BadRequest
from filecask.handlers import base_url, read_json_object, require_admin, require_user
from filecask.metastore import UserSummary

routes = web.RouteTableDef()


@routes.get("/me")
async def me(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    user = await require_user(request)
    usage = await services.meta.usage(user.id)
    return web.json_response(
        {"name": user.name, "is_admin": user.is_admin, "files": usage.files, "bytes": usage.bytes}
    )


@routes.get("/users")
async def list_users(request: web.Request) -> web.Response:
    await require_admin(request)
    summaries = await request.app[SERVICES].meta.list_users()
    return web.json_response({"users": [_summary_json(s) for s in summaries]})


@routes.post("/users")
async def create_user(request: web.Request) -> web.Response:
    """`{"name": "bob", "password": "...", "is_admin": false}`; without a password one is
    generated and returned once in the response."""
    services = request.app[SERVICES]
    await require_admin(request)
    body = await read_json_object(request)
    name = validate_user_name(_field(body, "name", str, None))
    given = _field(body, "password", str, "")
    is_admin = _field(body, "is_admin", bool, False)
    password = validate_password(given) if given else generate_password()
    password_hash = await services.auth.hash_password_async(password)
    await services.meta.create_user(name, password_hash, is_admin=is_admin)
    created: dict[str, Any] = {"name": name, "is_admin": is_admin}
    if not given:
        created["password"] = password
    location = f"{base_url(request)}/users/{quote(name, safe='')}"
    return web.json_response(created, status=201, headers={"Location": location})


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
    }
