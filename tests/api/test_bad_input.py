"""Issue 14, bad input, in process: error bodies that always encode, `Expect` values aiohttp
would answer itself, a body that lies about its `Content-Encoding` after the answer was
sent, and tus `Upload-Metadata` that is not ASCII. (`filecask.http.jsonbody` has its own tests;
the same requests against a real server are in tests/e2e/test_hostile_input_e2e.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from filecask.app import create_app
from filecask.errors import BadRequest
from filecask.http.problem import (
    html_response,
    problem_bytes,
    problem_middleware,
    problem_response,
    utf8_text,
)
from filecask.http.protocol import make_runner
from filecask.settings import Settings
from tests.conftest import ADMIN, AppClient, MakeSettings, assert_problem

HOST = "127.0.0.1"
AUTH = f"Authorization: {ADMIN['Authorization']}\r\n".encode()


# -- error bodies encode whatever they repeat ------------------------------------------------


@given(st.text(st.characters(exclude_categories=[]), max_size=30))
def test_any_text_becomes_utf8(text: str) -> None:
    encoded = utf8_text(text)
    decoded = encoded.decode("utf-8")  # valid UTF-8, always
    assert len(decoded) == len(text)
    assert all(a == b or b == "\ufffd" for a, b in zip(text, decoded, strict=True))


def test_a_problem_repeating_a_lone_surrogate_is_sent_with_a_replacement() -> None:
    error = BadRequest("The name '\udcff' is not valid.", name="a\udcffb", more=["\ud800"])
    body = json.loads(problem_bytes(error.to_problem("/x")).decode("utf-8"))
    assert body["name"] == "a\ufffdb"
    assert body["more"] == ["\ufffd"]
    response = problem_response(400, error.to_problem("/x"))
    assert isinstance(response.body, bytes)
    assert json.loads(response.body)["status"] == 400


def test_an_html_error_page_repeating_a_lone_surrogate_is_sent() -> None:
    response = html_response(400, "Bad \udcff", "detail \udcff <b>")
    assert isinstance(response.body, bytes)
    page = response.body.decode("utf-8")
    assert "Bad \ufffd" in page
    assert "&lt;b&gt;" in page
    assert response.content_type == "text/html"
    assert response.charset == "utf-8"


async def test_a_surrogate_in_a_json_body_is_a_400_in_json_and_in_html(
    client: AppClient,
) -> None:
    for accept, kind in (("*/*", "application/problem+json"), ("text/html", "text/html")):
        response = await client.post(
            "/archives",
            data=b'{"name": "\\udcff.zip", "files": []}',
            headers={**ADMIN, "Content-Type": "application/json", "Accept": accept},
        )
        assert response.status == 400
        assert response.content_type == kind
        (await response.read()).decode("utf-8")


# -- on the real protocol --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[int]:
    runner = make_runner(create_app(settings), settings, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request with `Connection: close`; the answer, read to the end of the connection."""
    sock = socket.create_connection((HOST, port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(request)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


async def test_an_expectation_other_than_100_continue_is_a_417_problem(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    async with serving(settings) as port:
        for expect in (b"x-magic", b"100-continue-please", b"\xff\xfe", b"\xc3\xa9"):
            for target in (b"/files", b"/me", b"/no/such/route", b"/healthz"):
                status, headers, body = await exchange(
                    port,
                    b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Expect: "
                    + expect + b"\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
                )  # fmt: skip
                assert status == 417, (expect, target)
                assert headers["content-type"] == "application/problem+json"
                assert_problem(json.loads(body), 417)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_100_continue_still_continues(make_settings: MakeSettings) -> None:
    settings = make_settings()
    async with serving(settings) as port:
        status, _, body = await exchange(
            port,
            b"POST /files?name=c.txt HTTP/1.1\r\nHost: x\r\n" + AUTH
            + b"Expect: 100-Continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )  # fmt: skip
    assert status == 100  # the interim answer first; the upload's 201 follows it
    assert b"HTTP/1.1 201 Created" in body


async def test_a_body_lying_about_its_encoding_after_the_answer_logs_no_error(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer (405, 404) needed no body; aiohttp reads the rest of it before the next
    request and finds it undecodable: a debug line, not an ERROR traceback."""
    settings = make_settings()
    caplog.set_level(logging.DEBUG)
    lies = [(b"gzip", b"not gzip at all"), (b"deflate", b"\x78\x9cnot deflate either")]
    async with serving(settings) as port:
        for encoding, junk in lies:
            for request_line in (b"POST /me", b"PUT /healthz", b"POST /nowhere"):
                status, _, _ = await exchange(
                    port,
                    request_line + b" HTTP/1.1\r\nHost: x\r\nContent-Encoding: " + encoding
                    + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(junk)
                    + junk,
                )  # fmt: skip
                assert 400 <= status < 500
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text
    assert "malformed request body" in caplog.text  # the debug line


async def test_a_json_body_lying_about_its_encoding_is_a_400(client: AppClient) -> None:
    response = await client.post(
        "/archives",
        data=b"not gzip",
        headers={**ADMIN, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    body = await response.json(content_type=None)
    assert response.status == 400
    assert body["detail"] == "Malformed request body: Can not decode content-encoding: gzip."


async def test_a_body_the_parser_refuses_is_a_400_wherever_it_is_read(
    make_settings: MakeSettings,
) -> None:
    """A handler reading the body itself (not through `connections.receive`)."""

    async def reads(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="read")

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_post("/reads", reads)
    settings = make_settings()
    runner = make_runner(app, settings, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        status, headers, body = await exchange(
            runner.addresses[0][1],
            b"POST /reads HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: 8\r\nConnection: close\r\n\r\nnot gzip",
        )
    finally:
        await runner.cleanup()
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert "content-encoding: gzip" in json.loads(body)["detail"]


# -- tus Upload-Metadata ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        b"filename \xff",
        b"filename YS50eHQ=,note \xc3\xa9",
        b"\xc3\xa9 YS50eHQ=",
        b"filename \xe3\x80\x80",
    ],
    ids=["latin-1", "utf-8-value", "utf-8-key", "ideographic-space"],
)
async def test_upload_metadata_that_is_not_ascii_is_a_400(
    make_settings: MakeSettings, metadata: bytes
) -> None:
    settings = make_settings()
    async with serving(settings) as port:
        status, headers, body = await exchange(
            port,
            b"POST /uploads/ HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Tus-Resumable: 1.0.0\r\n"
            b"Upload-Length: 3\r\nUpload-Metadata: " + metadata + b"\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n",
        )  # fmt: skip
    assert status == 400
    assert json.loads(body)["header"] == "Upload-Metadata"
    assert headers["tus-resumable"] == "1.0.0"


# -- a Host header that is not UTF-8 ---------------------------------------------------------


async def test_answers_naming_a_url_from_a_host_that_is_not_utf8_are_sent(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp decodes header bytes with `surrogateescape`, so `url` (built from the Host
    header when no --public-url is set) can hold lone surrogates: the JSON answer still
    goes out (as `json.dumps` writes them, `\\udcff`), it is no 500."""
    settings = make_settings()

    async def send(method: bytes, target: bytes, body: bytes = b"") -> tuple[int, Any]:
        status, _, raw = await exchange(
            port,
            method + b" " + target + b" HTTP/1.1\r\nHost: h\xffx\r\n" + AUTH
            + b"Content-Type: application/json\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body,
        )  # fmt: skip
        return status, json.loads(raw)

    async with serving(settings) as port:
        status, file = await send(b"PUT", b"/files?name=a.txt", b"abc")
        assert status == 201, file
        assert file["url"] == f"http://h\udcffx/files/{file['hash']}"
        manifest = {"files": [{"hash": file["hash"], "path": "a.txt"}]}
        status, bundle = await send(b"POST", b"/archives", json.dumps(manifest).encode())
        assert status == 201, bundle
        assert bundle["url"].startswith("http://h\udcffx/archive/")
        status, files = await send(b"GET", b"/files")
        assert status == 200, files
        assert [f["url"] for f in files["files"]] == [file["url"]]
        status, bundles = await send(b"GET", b"/archives")
        assert status == 200, bundles
        assert [b["url"] for b in bundles["archives"]] == [bundle["url"]]
        status, deleted = await send(b"DELETE", b"/files/" + file["hash"].encode())
        assert status == 200, deleted
        assert deleted["held_by_bundles"] == [bundle]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
