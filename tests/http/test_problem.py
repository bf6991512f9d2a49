"""Every error leaves as RFC 9457 application/problem+json: domain errors, aiohttp's own
404/405/413, and unexpected exceptions (a bare 500 that reveals nothing)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse, web

from filecask.app import create_app
from filecask.errors import Conflict, RangeNotSatisfiable
from filecask.http.problem import STREAMING, problem_middleware
from filecask.settings import Settings
from tests.conftest import ADMIN, AppClient, MakeSettings, MakeUser, basic

AiohttpClient = Callable[[web.Application], Awaitable[AppClient]]

PROBLEM_JSON = "application/problem+json"
MISSING = "0" * 64
UPLOAD_LIMIT = 1024


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(max_upload_size=UPLOAD_LIMIT)


async def check_problem(
    response: ClientResponse, status: int, slug: str | None = None
) -> dict[str, Any]:
    """The full RFC 9457 shape, consistent with the response it came in."""
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_JSON
    body = await response.json(content_type=PROBLEM_JSON)
    assert isinstance(body, dict)
    assert {"type", "title", "status", "detail", "instance"} <= body.keys(), body
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["type"].startswith("https://")
    if slug is not None:
        assert body["type"].endswith("/" + slug), body["type"]
    for member in ("title", "detail"):
        assert isinstance(body[member], str)
        assert body[member].strip(), member
    assert body["instance"] == response.url.path
    return body


# --- aiohttp's own errors -----------------------------------------------------------------


async def test_unknown_route_is_a_404_problem(client: AppClient) -> None:
    body = await check_problem(await client.get("/no/such/route"), 404, "not-found")
    assert body["title"] == "Not Found"
    assert body["instance"] == "/no/such/route"


async def test_wrong_method_is_a_405_problem_keeping_allow(client: AppClient) -> None:
    response = await client.patch(f"/files/{MISSING}", headers=ADMIN, data=b"x")
    body = await check_problem(response, 405, "method-not-allowed")
    assert body["title"] == "Method Not Allowed"
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "PUT", "DELETE"} <= allowed
    assert "PATCH" not in allowed

    response = await client.post("/healthz")
    await check_problem(response, 405)
    assert "GET" in response.headers["Allow"]


async def test_oversized_json_body_is_a_413_problem(client: AppClient) -> None:
    big = json.dumps({"name": "bob", "password": "x" * (2 << 20)}).encode()
    headers = {**ADMIN, "Content-Type": "application/json"}
    response = await client.post("/users", data=io.BytesIO(big), headers=headers)
    await check_problem(response, 413)


# --- domain errors from handlers ----------------------------------------------------------


async def test_handler_errors_are_problems(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")

    body = await check_problem(await client.get("/files/not-a-hash"), 400, "invalid-hash")
    assert body["instance"] == "/files/not-a-hash"

    response = await client.get("/me")
    await check_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Basic ")

    await check_problem(await client.get("/users", headers=bob), 403, "forbidden")

    body = await check_problem(await client.get(f"/files/{MISSING}"), 404, "not-found")
    assert body["hash"] == MISSING

    duplicate = {"name": "bob", "password": "another-password"}
    body = await check_problem(await client.post("/users", json=duplicate, headers=ADMIN), 409)
    assert body["type"].endswith("/conflict")

    too_big = b"x" * (UPLOAD_LIMIT + 1)
    await check_problem(
        await client.post("/files", data=too_big, headers=bob), 413, "payload-too-large"
    )

    uploaded = await client.post("/files", data=b"0123456789", headers=bob)
    assert uploaded.status == 201
    h = (await uploaded.json())["hash"]
    response = await client.get(f"/files/{h}", headers={"Range": "bytes=500-"})
    await check_problem(response, 416, "range-not-satisfiable")
    assert response.headers["Content-Range"] == "bytes */10"


async def test_rate_limit_is_a_429_problem(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    client = await aiohttp_client(create_app(make_settings(auth_max_failures=1)))
    assert (await client.get("/me", headers=basic("admin", "wrong-password"))).status == 401
    response = await client.get("/me", headers=basic("admin", "wrong-password"))
    body = await check_problem(response, 429, "rate-limited")
    assert response.headers["Retry-After"] == str(body["retry_after"])


# --- unexpected errors, in a tiny app of our own ------------------------------------------


async def tiny_client(
    aiohttp_client: AiohttpClient, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AppClient:
    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/boom", handler)
    return await aiohttp_client(app)


SECRET = "secret-internals-/etc/filecask/db-password"


async def test_unexpected_exception_is_a_bare_500(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise RuntimeError(SECRET)

    client = await tiny_client(aiohttp_client, handler)
    with caplog.at_level(logging.ERROR, logger="filecask.errors"):
        response = await client.get("/boom")
    body = await check_problem(response, 500, "internal-error")
    text = await response.text()
    for leak in (SECRET, "RuntimeError", "Traceback", "problem.py"):
        assert leak not in text
    assert body["detail"] == body["title"]
    # ... while the operator gets the traceback in the log.
    logged = [r for r in caplog.records if r.name == "filecask.errors"]
    assert logged
    assert logged[0].exc_info is not None
    assert SECRET in str(logged[0].exc_info[1])


async def test_unexpected_os_error_is_a_bare_500(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise PermissionError(13, "Permission denied", SECRET)

    client = await tiny_client(aiohttp_client, handler)
    with caplog.at_level(logging.ERROR, logger="filecask.errors"):
        response = await client.get("/boom")
    await check_problem(response, 500, "internal-error")
    assert SECRET not in await response.text()


async def test_domain_error_keeps_its_headers_and_extensions(
    aiohttp_client: AiohttpClient,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.query.get("kind") == "range":
            raise RangeNotSatisfiable(42)
        raise Conflict("Already there.", user="bob")

    client = await tiny_client(aiohttp_client, handler)
    response = await client.get("/boom", params={"kind": "range"})
    await check_problem(response, 416, "range-not-satisfiable")
    assert response.headers["Content-Range"] == "bytes */42"
    body = await check_problem(await client.get("/boom"), 409, "conflict")
    assert body["detail"] == "Already there."
    assert body["user"] == "bob"


async def test_redirects_pass_through(aiohttp_client: AiohttpClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    client = await tiny_client(aiohttp_client, handler)
    response = await client.get("/boom", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"


async def test_error_after_streaming_started_truncates_instead_of_a_body(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        request[STREAMING] = True
        await response.prepare(request)
        await response.write(b"x" * 100)
        raise RuntimeError(SECRET)

    client = await tiny_client(aiohttp_client, handler)
    with caplog.at_level(logging.CRITICAL):
        response = await client.get("/boom")
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
