"""/me for every signed-in user; /users for administrators (no self-registration).

Quotas are set by administrators only (`POST /users` with `"quota"`, `PATCH /users/{name}`,
or `filecask user quota`), and shown to the user in /me so a client can tell how much room
is left before an upload is refused with 413 `quota-exceeded`: `quota - bytes - reserved`.
`bytes` counts every distinct content the user keeps alive, by file or by bundle, once."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from filecask.api import models
from filecask.api.common import base_url, read_json_object, require_admin, require_user
from filecask.api.models import CreatedUser, Me, NewUser, UserList, UserUpdate, reply, validate
from filecask.api.spec import SIGNED_IN, operation, param
from filecask.auth import generate_password
from filecask.errors import NotFound
from filecask.services import SERVICES
from filecask.storage.meta import UserSummary

routes = web.RouteTableDef()


ADMIN = (*SIGNED_IN, 403)
USER_NAME = param("name", "path", "The user's name, in any case or width (`BOB` is `bob`).")


@routes.get("/me")
@operation("me", {200: ("You.", Me)}, SIGNED_IN)
async def me(request: web.Request) -> web.Response:
    """Who the caller is and how much they store."""
    # `bytes` is what the caller keeps alive: every distinct content of their files and
    # of the bundles they hold, counted once; `reserved`, what their unfinished resumable
    # uploads hold back. Both count against `quota`.
    services = request.app[SERVICES]
    user = await require_user(request)
    usage = await services.meta.usage(user.id)
    _, reserved = await services.meta.open_uploads(user.id)
    body: Me = {
        "name": user.name,
        "is_admin": user.is_admin,
        "files": usage.files,
        "bytes": usage.bytes,
        "bundles": usage.bundles,
        "reserved": reserved,
        "quota": user.quota,
    }
    return reply(Me, body)


@routes.get("/users")
@operation("listUsers", {200: ("The users.", UserList)}, ADMIN)
async def list_users(request: web.Request) -> web.Response:
    """Every user with their file count and bytes (administrators)."""
    await require_admin(request)
    summaries = await request.app[SERVICES].meta.list_users()
    return reply(UserList, {"users": [_summary_json(s) for s in summaries]})


@routes.post("/users")
@operation(
    "createUser",
    {
        201: (
            "Created; the password is returned if it was generated.",
            CreatedUser,
            {"Location": "The user's URL."},
        )
    },
    (400, 413, 409, *ADMIN),
    body=NewUser,
)
async def create_user(request: web.Request) -> web.Response:
    """Create a user (administrators)."""
    # `{"name": "bob", "password": "...", "is_admin": false, "quota": "10G"}`; without a
    # password one is generated and returned once in the response. `quota` is optional
    # (bytes, a size string, or null for no limit) and is checked before the costly
    # password hash.
    services = request.app[SERVICES]
    await require_admin(request)
    new = validate(NewUser, await read_json_object(request))
    password = new.password or generate_password()
    password_hash = await services.auth.hash_password_async(password)
    await services.meta.create_user(new.name, password_hash, is_admin=new.is_admin, quota=new.quota)
    created: CreatedUser = {"name": new.name, "is_admin": new.is_admin, "quota": new.quota}
    if not new.password:
        created["password"] = password
    location = f"{base_url(request)}/users/{quote(new.name, safe='')}"
    return reply(CreatedUser, created, status=201, headers={"Location": location})


@routes.patch("/users/{name}")
@operation(
    "updateUser",
    {200: ("Updated; the user as `GET /users` shows them.", models.UserSummary)},
    (400, 404, 413, *ADMIN),
    parameters=[USER_NAME],
    body=UserUpdate,
)
async def update_user(request: web.Request) -> web.Response:
    """Set a user's quota (administrators)."""
    # `{"quota": "10G"}` (or bytes, or null for no limit): the one thing changed here;
    # any other member is refused rather than silently ignored, so nobody believes they
    # changed a role or a password this way. Answers the user's summary as `GET /users`
    # shows it. Lowering a quota below what the user stores deletes nothing: it refuses
    # new uploads until they are back under it.
    services = request.app[SERVICES]
    await require_admin(request)
    name = request.match_info["name"]
    update = validate(UserUpdate, await read_json_object(request))
    await services.meta.set_quota(name, update.quota)
    user = await services.meta.get_user(name)
    if user is None:  # removed between the two steps
        raise NotFound(f"No user named {name!r}.", user=name)
    usage = await services.meta.usage(user.id)
    _, reserved = await services.meta.open_uploads(user.id)
    summary = UserSummary(user.name, user.is_admin, user.created_at, usage, user.quota, reserved)
    return reply(models.UserSummary, _summary_json(summary))


@routes.delete("/users/{name}")
@operation(
    "deleteUser",
    {204: "Removed."},
    (404, 409, *ADMIN),
    parameters=[USER_NAME],
)
async def delete_user(request: web.Request) -> web.Response:
    """Remove a user and every reference they hold (administrators)."""
    # Contents nobody else references leave the disk. The last administrator cannot be
    # removed.
    services = request.app[SERVICES]
    await require_admin(request)
    await services.files.remove_user(request.match_info["name"])
    return web.Response(status=204)


def _summary_json(summary: UserSummary) -> models.UserSummary:
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
