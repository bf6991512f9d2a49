"""The access log names the client, the signed-in user, the request and its outcome."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from filecask.app import create_app
from filecask.http.accesslog import AccessLogger
from filecask.http.protocol import make_runner
from filecask.settings import Settings
from tests.conftest import ADMIN, AppClient

ADMIN_HEADER = f"Authorization: {ADMIN['Authorization']}\r\n".encode()


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


async def test_a_request_refused_before_routing_is_logged_without_a_traceback(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A header over the size limit never reaches the app: its line is still written, and
    nothing is logged as an unhandled exception."""
    runner = make_runner(
        create_app(settings.replace(max_header_size=1024)),
        settings.replace(max_header_size=1024),
        access_log_class=AccessLogger,
        access_log=logging.getLogger("filecask.access"),
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with caplog.at_level(logging.DEBUG):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /me HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
            status_line = await reader.readline()
            await reader.read()
            writer.close()
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    assert b" 431 " in status_line
    lines = [r.getMessage() for r in caplog.records if r.name == "filecask.access"]
    assert len(lines) == 1
    assert " 431 " in lines[0]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_download_cut_by_its_client_still_gets_its_line(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """nginx's 499: the client left before the response was complete; the line says how
    much did go out."""
    logged = settings.replace(access_log=True)
    runner = make_runner(
        create_app(logged),
        logged,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("filecask.access"),
        handler_cancellation=True,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"x" * (32 << 20)
        head = f"POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + ADMIN_HEADER + b"\r\n" + body)
        answer = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(answer.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
        hex_hash = hashlib.sha256(body).hexdigest()
        with caplog.at_level(logging.INFO, logger="filecask.access"):
            writer.write(f"GET /files/{hex_hash} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await reader.readexactly(1 << 20)
            writer.transport.abort()
            for _ in range(100):
                if any(" 499 " in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()
    lines = [r.getMessage() for r in caplog.records if r.name == "filecask.access"]
    gone = [line for line in lines if f'"GET /files/{hex_hash} HTTP/1.1" 499 ' in line]
    assert len(gone) == 1, lines
    sent = int(gone[0].split(" 499 ")[1].split()[0])
    assert (1 << 20) <= sent < len(body)
