"""/me for every signed-in user; /users for administrators."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from aiohttp import ClientResponse, web

from filecask.app import create_app
from filecask.settings import Settings
from tests.conftest import (
    ADMIN,
    AppClient,
    Auth,
    MakeSettings,
    MakeUser,
    StoreView,
    assert_problem,
    basic,
)

AiohttpClient = Callable[[web.Application], Awaitable[AppClient]]
PROBLEM_JSON = "application/problem+json"


async def problem(response: ClientResponse, status: int, slug: str | None = None) -> None:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_JSON
    assert_problem(await response.json(content_type=PROBLEM_JSON), status, slug)


async def upload(client: AppClient, auth: Auth, content: bytes, name: str = "f.bin") -> str:
    response = await client.post("/files", params={"name": name}, data=content, headers=auth)
    assert response.status in (200, 201), await response.text()
    h = (await response.json())["hash"]
    assert h == hashlib.sha256(content).hexdigest()
    return str(h)


async def me(client: AppClient, auth: Auth) -> dict[str, Any]:
    response = await client.get("/me", headers=auth)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert isinstance(body, dict)
    return body


async def users(client: AppClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/users", headers=ADMIN)
    assert response.status == 200, await response.text()
    return {u["name"]: u for u in (await response.json())["users"]}


# --- /me ----------------------------------------------------------------------------------


async def test_me_counts_files_and_bytes(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")
    assert await me(client, bob) == {
        "name": "bob",
        "is_admin": False,
        "files": 0,
        "bytes": 0,
        "bundles": 0,
        "reserved": 0,
        "quota": None,
    }

    await upload(client, bob, b"a" * 100)
    await upload(client, bob, b"b" * 250)
    assert await me(client, bob) == {
        "name": "bob",
        "is_admin": False,
        "files": 2,
        "bytes": 350,
        "bundles": 0,
        "reserved": 0,
        "quota": None,
    }

    # The same content again, even under another name, is the same file.
    again = await client.post("/files?name=copy.bin", data=b"a" * 100, headers=bob)
    assert again.status == 200
    assert await me(client, bob) == {
        "name": "bob",
        "is_admin": False,
        "files": 2,
        "bytes": 350,
        "bundles": 0,
        "reserved": 0,
        "quota": None,
    }

    # Another user holding the same content counts it for themselves only.
    carol = await make_user("carol")
    await upload(client, carol, b"a" * 100)
    assert (await me(client, carol))["files"] == 1
    assert (await me(client, carol))["bytes"] == 100
    assert (await me(client, bob))["files"] == 2

    admin = await me(client, ADMIN)
    assert admin == {
        "name": "admin",
        "is_admin": True,
        "files": 0,
        "bytes": 0,
        "bundles": 0,
        "reserved": 0,
        "quota": None,
    }


async def test_me_requires_sign_in(client: AppClient) -> None:
    await problem(await client.get("/me"), 401, "unauthorized")


# --- POST /users --------------------------------------------------------------------------


async def test_admin_creates_a_user(client: AppClient) -> None:
    response = await client.post(
        "/users", json={"name": "bob", "password": "bob-password"}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    assert await response.json() == {"name": "bob", "is_admin": False, "quota": None}
    location = response.headers["Location"]
    assert location == f"http://{response.url.host}:{response.url.port}/users/bob"

    assert (await me(client, basic("bob", "bob-password")))["is_admin"] is False
    # Not an administrator: may not list users.
    await problem(await client.get("/users", headers=basic("bob", "bob-password")), 403)


async def test_admin_creates_an_admin(client: AppClient) -> None:
    response = await client.post(
        "/users",
        json={"name": "root2", "password": "root2-password", "is_admin": True},
        headers=ADMIN,
    )
    assert response.status == 201
    assert await response.json() == {"name": "root2", "is_admin": True, "quota": None}
    root2 = basic("root2", "root2-password")
    assert (await me(client, root2))["is_admin"] is True
    assert (await client.get("/users", headers=root2)).status == 200


@pytest.mark.parametrize("body", [{"name": "bob"}, {"name": "bob", "password": ""}])
async def test_password_is_generated_when_none_given(
    client: AppClient, body: dict[str, Any]
) -> None:
    response = await client.post("/users", json=body, headers=ADMIN)
    assert response.status == 201, await response.text()
    created = await response.json()
    assert created["name"] == "bob"
    password = created["password"]
    assert isinstance(password, str)
    assert len(password) >= 16
    assert (await me(client, basic("bob", password)))["name"] == "bob"


async def test_location_uses_public_url(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    client = await aiohttp_client(create_app(make_settings(public_url="https://files.example/")))
    response = await client.post(
        "/users", json={"name": "bob", "password": "bob-password"}, headers=ADMIN
    )
    assert response.status == 201
    assert response.headers["Location"] == "https://files.example/users/bob"


async def test_location_of_a_non_ascii_name_is_a_valid_uri(client: AppClient) -> None:
    """RFC 9110 §10.2.2: Location is a URI reference, so non-ASCII is percent-encoded."""
    response = await client.post(
        "/users", json={"name": "zoë", "password": "zoe-password"}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    location = response.headers["Location"]
    assert location.isascii(), location
    assert unquote(urlsplit(location).path) == "/users/zoë"


async def test_duplicate_user_is_a_conflict(client: AppClient, make_user: MakeUser) -> None:
    await make_user("bob", password="bob-password")
    response = await client.post(
        "/users", json={"name": "bob", "password": "other-password"}, headers=ADMIN
    )
    await problem(response, 409, "conflict")
    # The first account is untouched.
    assert (await me(client, basic("bob", "bob-password")))["name"] == "bob"
    await problem(await client.get("/me", headers=basic("bob", "other-password")), 401)


async def refused_with_400(
    client: AppClient, cases: dict[str, bytes | dict[str, Any]]
) -> list[str]:
    """The ids of the cases that were *not* answered with a 400 problem."""
    wrong = []
    for case_id, body in cases.items():
        if isinstance(body, bytes):
            headers = {**ADMIN, "Content-Type": "application/json"}
            response = await client.post("/users", data=io.BytesIO(body), headers=headers)
        else:
            response = await client.post("/users", json=body, headers=ADMIN)
        if response.status != 400 or response.content_type != PROBLEM_JSON:
            wrong.append(f"{case_id}: {response.status}")
            continue
        assert_problem(await response.json(content_type=PROBLEM_JSON), 400, "bad-request")
    return wrong


BAD_NAMES = {
    "empty": "",
    "dotdot-slash": "../x",
    "space": "a b",
    "65-chars": "x" * 65,
    "slash": "a/b",
    "colon": "a:b",
    "newline": "a\nb",
    "percent": "bob%2F",
    "nul": "a\x00b",
    # "." and ".." are no usable path segment: /users/.. is /, so they could never be
    # deleted over the API.
    "dot": ".",
    "dotdot": "..",
}


async def test_bad_user_names_are_400(client: AppClient) -> None:
    cases: dict[str, bytes | dict[str, Any]] = {
        case_id: {"name": name, "password": "good-password"} for case_id, name in BAD_NAMES.items()
    }
    assert await refused_with_400(client, cases) == []
    assert set(await users(client)) == {"admin"}


async def test_longest_user_name(client: AppClient) -> None:
    name = "x" * 64
    response = await client.post(
        "/users", json={"name": name, "password": "good-password"}, headers=ADMIN
    )
    assert response.status == 201, await response.text()


async def test_bad_fields_are_400(client: AppClient) -> None:
    cases: dict[str, bytes | dict[str, Any]] = {
        "short-password": {"name": "bob", "password": "short12"},
        "long-password": {"name": "bob", "password": "é" * 513},
        "int-password": {"name": "bob", "password": 12345678},
        "null-password": {"name": "bob", "password": None},
        "admin-str": {"name": "bob", "password": "good-password", "is_admin": "yes"},
        "admin-int": {"name": "bob", "password": "good-password", "is_admin": 1},
        "no-name": {"password": "good-password"},
        "null-name": {"name": None, "password": "good-password"},
        "list-name": {"name": ["bob"], "password": "good-password"},
    }
    assert await refused_with_400(client, cases) == []
    assert set(await users(client)) == {"admin"}


async def test_body_that_is_not_a_json_object_is_400(client: AppClient) -> None:
    cases: dict[str, bytes | dict[str, Any]] = {
        "empty": b"",
        "text": b"not json",
        "truncated": b'{"name": ',
        "array": b'["bob"]',
        "string": b'"bob"',
        "null": b"null",
        "not-utf8": b"\xff\xfe{}",
    }
    assert await refused_with_400(client, cases) == []
    assert set(await users(client)) == {"admin"}


async def test_only_admins_create_users(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")
    body = {"name": "eve", "password": "eve-password", "is_admin": True}
    await problem(await client.post("/users", json=body, headers=bob), 403, "forbidden")
    await problem(await client.post("/users", json=body), 401, "unauthorized")
    assert set(await users(client)) == {"admin", "bob"}


# --- GET /users ---------------------------------------------------------------------------


async def test_list_users(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")
    await make_user("carol", admin=True)
    await upload(client, bob, b"12345")
    listed = await users(client)
    assert list(listed) == ["admin", "bob", "carol"]
    assert listed["bob"]["is_admin"] is False
    assert listed["carol"]["is_admin"] is True
    assert (listed["bob"]["files"], listed["bob"]["bytes"]) == (1, 5)
    assert (listed["carol"]["files"], listed["carol"]["bytes"]) == (0, 0)
    created = datetime.fromisoformat(listed["bob"]["created_at"])
    assert created.tzinfo is not None
    assert "password" not in str(listed)


async def test_list_users_is_admin_only(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")
    await problem(await client.get("/users", headers=bob), 403, "forbidden")
    await problem(await client.get("/users"), 401, "unauthorized")


# --- DELETE /users/{name} -----------------------------------------------------------------


async def test_delete_user_drops_their_files(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    bob = await make_user("bob")
    carol = await make_user("carol")
    only_bob = await upload(client, bob, b"only bob has this")
    shared = await upload(client, bob, b"both have this")
    assert await upload(client, carol, b"both have this") == shared
    view = StoreView(settings)
    assert view.exists(only_bob)
    assert view.exists(shared)

    response = await client.delete("/users/bob", headers=ADMIN)
    assert response.status == 204, await response.text()
    assert await response.read() == b""

    assert not view.exists(only_bob)
    await problem(await client.get(f"/files/{only_bob}"), 404, "not-found")
    assert view.exists(shared)
    download = await client.get(f"/files/{shared}")
    assert download.status == 200
    assert await download.read() == b"both have this"
    assert await me(client, carol) == {
        "name": "carol",
        "is_admin": False,
        "files": 1,
        "bytes": len(b"both have this"),
        "bundles": 0,
        "reserved": 0,
        "quota": None,
    }
    assert set(await users(client)) == {"admin", "carol"}
    await problem(await client.get("/me", headers=bob), 401)


async def test_delete_missing_user_is_404(client: AppClient) -> None:
    await problem(await client.delete("/users/ghost", headers=ADMIN), 404, "not-found")


async def test_last_admin_cannot_be_deleted(client: AppClient, make_user: MakeUser) -> None:
    await problem(await client.delete("/users/admin", headers=ADMIN), 409, "conflict")
    assert (await me(client, ADMIN))["is_admin"] is True

    # With a second administrator, the first may go.
    root2 = await make_user("root2", admin=True)
    assert (await client.delete("/users/admin", headers=root2)).status == 204
    await problem(await client.delete("/users/root2", headers=root2), 409, "conflict")


async def test_only_admins_delete_users(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")
    await make_user("carol")
    await problem(await client.delete("/users/carol", headers=bob), 403, "forbidden")
    await problem(await client.delete("/users/bob", headers=bob), 403, "forbidden")
    await problem(await client.delete("/users/carol"), 401, "unauthorized")
    assert set(await users(client)) == {"admin", "bob", "carol"}


# --- quotas -------------------------------------------------------------------------------


async def patch_quota(client: AppClient, name: str, body: object, auth: Auth = ADMIN) -> Any:
    return await client.patch(f"/users/{name}", json=body, headers=auth)


@pytest.mark.parametrize(
    ("given", "stored"),
    [(1234, 1234), ("10G", 10 << 30), ("1.5M", 3 << 19), (0, 0), (None, None)],
)
async def test_admin_creates_a_user_with_a_quota(
    client: AppClient, given: object, stored: int | None
) -> None:
    response = await client.post(
        "/users", json={"name": "bob", "password": "bob-password", "quota": given}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    assert await response.json() == {"name": "bob", "is_admin": False, "quota": stored}
    assert (await users(client))["bob"]["quota"] == stored
    assert (await me(client, basic("bob", "bob-password")))["quota"] == stored


BAD_QUOTAS: dict[str, object] = {
    "negative": -1,
    "bool": True,
    "float": 1.5,
    "word": "lots",
    "unit-only": "G",
    "negative-size": "-5G",
    "list": [10],
    "object": {"bytes": 10},
    "too-big": 1 << 63,
    "too-big-size": "99999999999T",
    # Issue 14: digits of other scripts were read as digits (ARABIC-INDIC DIGIT ONE then M
    # was a 1 MiB quota).
    "arabic-indic-digit": "\u0661M",
    "fullwidth-digits": "\uff11\uff10G",
    "devanagari-digits": "\u0967\u0966\u0966",
}


async def test_bad_quotas_are_400_when_creating(client: AppClient) -> None:
    cases: dict[str, bytes | dict[str, Any]] = {
        case_id: {"name": "bob", "password": "good-password", "quota": quota}
        for case_id, quota in BAD_QUOTAS.items()
    }
    assert await refused_with_400(client, cases) == []
    assert set(await users(client)) == {"admin"}


async def test_patch_sets_and_clears_a_quota(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")
    await upload(client, bob, b"12345")
    response = await patch_quota(client, "bob", {"quota": "1K"})
    assert response.status == 200, await response.text()
    summary = await response.json()
    assert summary == {**(await users(client))["bob"], "quota": 1024}
    assert (summary["name"], summary["files"], summary["bytes"]) == ("bob", 1, 5)
    assert (await me(client, bob))["quota"] == 1024

    response = await patch_quota(client, "bob", {"quota": 2048})
    assert (await response.json())["quota"] == 2048
    assert (await users(client))["bob"]["quota"] == 2048

    response = await patch_quota(client, "bob", {"quota": None})
    assert response.status == 200
    assert (await response.json())["quota"] is None
    assert (await me(client, bob))["quota"] is None
    assert (await users(client))["admin"]["quota"] is None


async def test_patch_of_an_unknown_user_is_404(client: AppClient) -> None:
    await problem(await patch_quota(client, "ghost", {"quota": 10}), 404, "not-found")


async def test_patch_with_a_bad_body_is_400_and_changes_nothing(
    client: AppClient, make_user: MakeUser
) -> None:
    bob = await make_user("bob")
    assert (await patch_quota(client, "bob", {"quota": 500})).status == 200
    bodies: dict[str, object] = {
        **{case_id: {"quota": quota} for case_id, quota in BAD_QUOTAS.items()},
        "no-quota": {},
        "other-member": {"quota": 10, "is_admin": True},
        "only-other-member": {"password": "new-password"},
        "array": [{"quota": 10}],
        "null": None,
    }
    wrong = []
    for case_id, body in bodies.items():
        response = await patch_quota(client, "bob", body)
        if response.status != 400 or response.content_type != PROBLEM_JSON:
            wrong.append(f"{case_id}: {response.status}")
    assert wrong == []
    assert await me(client, bob) == {
        "name": "bob",
        "is_admin": False,
        "files": 0,
        "bytes": 0,
        "bundles": 0,
        "reserved": 0,
        "quota": 500,
    }


async def test_only_admins_set_quotas(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")
    await problem(await patch_quota(client, "bob", {"quota": None}, bob), 403, "forbidden")
    response = await client.patch("/users/bob", json={"quota": None})
    await problem(response, 401, "unauthorized")
    assert (await me(client, bob))["quota"] is None


async def test_list_users_shows_quotas(client: AppClient, make_user: MakeUser) -> None:
    await make_user("bob")
    await make_user("carol")
    await patch_quota(client, "carol", {"quota": "5M"})
    listed = await users(client)
    assert {name: u["quota"] for name, u in listed.items()} == {
        "admin": None,
        "bob": None,
        "carol": 5 << 20,
    }


# --- issue 14: look-alike names, lone surrogates -------------------------------------------

FULLWIDTH_ADMIN = "\uff41\uff44\uff4d\uff49\uff4e"


async def test_look_alike_names_conflict(client: AppClient) -> None:
    """Names are unique by NFKC + case-fold: `Admin`, `ADMIN` and a fullwidth `admin`
    cannot sit next to `admin`; `ädmin` is another name."""
    for name in ("Admin", "ADMIN", FULLWIDTH_ADMIN):
        response = await client.post(
            "/users", json={"name": name, "password": "good-password"}, headers=ADMIN
        )
        await problem(response, 409, "conflict")
        body = await response.json(content_type=PROBLEM_JSON)
        assert "'admin'" in body["detail"], body
    response = await client.post(
        "/users", json={"name": "ädmin", "password": "good-password"}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    assert set(await users(client)) == {"admin", "ädmin"}


async def test_sign_in_and_manage_by_any_spelling_of_a_name(
    client: AppClient, make_user: MakeUser
) -> None:
    """Like most logins, `Admin` signs in as `admin` (and is counted as `admin` by the
    throttle); /users/BOB is bob."""
    for spelling in ("ADMIN", "Admin", FULLWIDTH_ADMIN):
        assert (await me(client, basic(spelling, "admin-password")))["name"] == "admin"
    await make_user("bob")
    response = await client.patch("/users/BOB", json={"quota": "1M"}, headers=ADMIN)
    assert response.status == 200, await response.text()
    assert (await response.json())["name"] == "bob"
    assert (await users(client))["bob"]["quota"] == 1 << 20
    assert (await client.delete("/users/Bob", headers=ADMIN)).status == 204
    assert set(await users(client)) == {"admin"}


async def test_lone_surrogates_in_user_name_or_password_are_400(client: AppClient) -> None:
    """JSON allows `"\\udcff"`; such text cannot be stored or hashed (UTF-8). It was a 500
    with a traceback, the problem body itself failing to encode."""
    cases: dict[str, bytes | dict[str, Any]] = {
        "name": b'{"name": "\\udcff", "password": "good-password"}',
        "name-inside": b'{"name": "bo\\udcffb", "password": "good-password"}',
        "password": b'{"name": "bob", "password": "good-\\udcff-password"}',
    }
    assert await refused_with_400(client, cases) == []
    assert set(await users(client)) == {"admin"}
