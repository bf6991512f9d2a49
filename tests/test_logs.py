"""Log lines: `--log-format json` gives one parseable object per line with the access
fields as keys; the text format is unchanged; a client hanging up is not an error."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from filecask.logs import FIELDS, ClientDisconnectFilter, JsonFormatter, quiet_client_disconnects
from tests.e2e.conftest import ADMIN_CREDENTIALS, HOST, Server, ServerLauncher

AUTH = "Basic " + base64.b64encode(ADMIN_CREDENTIALS.encode()).decode()
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+ ")
ACCESS_TEXT = re.compile(
    r'^127\.0\.0\.1 admin "GET /me HTTP/1\.1" 200 \d+ \d+\.\d{4} "python-http"$'
)


def test_json_formatter_puts_fields_and_traceback_in_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "filecask.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    record.__dict__[FIELDS] = {"status": 500, "user": "bob", "message": "not overridden"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "filecask.x"
    assert entry["message"] == "failed here"
    assert entry["status"] == 500
    assert entry["user"] == "bob"
    assert "ValueError: boom" in entry["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["timestamp"])


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ServerLauncher]:
    started = ServerLauncher(tmp_path)
    try:
        yield started
    finally:
        started.close()


def get(server: Server, path: str, *, auth: bool = False) -> int:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    headers = {"User-Agent": "python-http"}
    if auth:
        headers["Authorization"] = AUTH
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def upload(server: Server, body: bytes) -> str:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request("PUT", "/files", body=body, headers={"Authorization": AUTH})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 201, answer
        digest: str = answer["hash"]
        return digest
    finally:
        conn.close()


def hang_up_midway(server: Server, path: str) -> None:
    """Ask for a big body, take a little of it, then reset the connection."""
    with socket.create_connection((HOST, server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def stopped_stderr(server: Server, until: str) -> str:
    deadline = time.monotonic() + 5
    while until not in server.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()
    return server.stderr()


@pytest.mark.e2e
def test_json_format_every_line_is_an_object_and_access_lines_carry_fields(
    launcher: ServerLauncher,
) -> None:
    server = launcher("--log-format", "json")
    assert get(server, "/me", auth=True) == 200
    digest = upload(server, os.urandom(16 << 20))
    folder = server.data_dir / "archives" / "big"
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(os.urandom(16 << 20))
    hang_up_midway(server, f"/files/{digest}")
    hang_up_midway(server, "/archive/big/")
    assert get(server, "/healthz") == 200  # still serving
    stderr = stopped_stderr(server, '"/healthz"')

    entries = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert all({"timestamp", "level", "logger", "message"} <= e.keys() for e in entries)
    me = [e for e in entries if e["logger"] == "filecask.access" and e.get("path") == "/me"]
    assert len(me) == 1
    assert me[0]["method"] == "GET"
    assert me[0]["status"] == 200
    assert me[0]["user"] == "admin"
    assert me[0]["client"] == "127.0.0.1"
    assert me[0]["bytes"] > 0
    assert 0 <= me[0]["duration"] < 5
    assert me[0]["user_agent"] == "python-http"
    assert any("Running on" in e["message"] for e in entries)
    errors = [e for e in entries if e["level"] in ("ERROR", "CRITICAL") or "exception" in e]
    assert errors == []


@pytest.mark.e2e
def test_text_format_is_unchanged(launcher: ServerLauncher) -> None:
    server = launcher()
    assert get(server, "/me", auth=True) == 200
    stderr = stopped_stderr(server, '"GET /me')
    access = [
        line.split(" filecask.access ", 1)[1]
        for line in stderr.splitlines()
        if " filecask.access " in line
    ]
    assert any(ACCESS_TEXT.match(line) for line in access), access
    assert all(TEXT_LINE.match(line) for line in stderr.splitlines() if " INFO " in line)
    assert "======== Running on http://" in stderr
    assert "{" not in "".join(access)


async def test_a_client_hanging_up_on_a_stock_aiohttp_stream_is_an_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp's own error path logs the write that finds the client gone as an ERROR
    with a traceback; with the filter installed it is one INFO line without one."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:
            await response.write(b"x" * 65536)
            await asyncio.sleep(0.001)

    async def hang_up(filtered: bool) -> list[logging.LogRecord]:
        app = web.Application()
        app.router.add_get("/", endless)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        installed: ClientDisconnectFilter | None = None
        if filtered:
            installed = quiet_client_disconnects()
        caplog.clear()
        try:
            with caplog.at_level(logging.DEBUG, logger="aiohttp"):
                reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.read(1024)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                writer.close()
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if any(r.name == "aiohttp.server" for r in caplog.records):
                        break
        finally:
            if installed is not None:
                for name in ("aiohttp.server", "aiohttp.web"):
                    logging.getLogger(name).removeFilter(installed)
            await runner.cleanup()
        return [r for r in caplog.records if r.name == "aiohttp.server"]

    unfiltered = await hang_up(filtered=False)
    assert any(r.levelno >= logging.ERROR and r.exc_info for r in unfiltered), unfiltered
    filtered = await hang_up(filtered=True)
    assert filtered, "aiohttp logged nothing at all"
    assert all(r.levelno <= logging.INFO and not r.exc_info for r in filtered)
    assert any("client went away" in r.getMessage() for r in filtered)
