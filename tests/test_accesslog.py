"""The access log names the client, the signed-in user, the request and its outcome."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp.test_utils import TestServer

from filecask.accesslog import AccessLogger
from filecask.app import create_app
from filecask.settings import Settings
from tests.conftest import ADMIN, AppClient


async def test_access_log_line_has_user_status_and_size(
    aiohttp_client: Callable[..., Awaitable[AppClient]],
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # aiohttp's TestServer takes runner options in start_server(), not in its constructor.
    server = TestServer(create_app(settings))
    await server.start_server(
        access_log_class=AccessLogger, access_log=logging.getLogger("filecask.access")
    )
    client = await aiohttp_client(server)
    with caplog.at_level(logging.INFO, logger="filecask.access"):
        assert (await client.get("/me", headers=ADMIN)).status == 200
        assert (await client.get("/me")).status == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "filecask.access"]
    assert len(lines) == 2
    assert lines[0].startswith('127.0.0.1 admin "GET /me HTTP/1.1" 200 ')
    assert lines[1].startswith('127.0.0.1 - "GET /me HTTP/1.1" 401 ')
