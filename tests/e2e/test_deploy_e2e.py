"""The files in deploy/: nginx.conf run for real in front of `filecask serve`, and the
Dockerfile's CMD and the systemd unit's ExecStart checked against the `serve` flags.

nginx runs unprivileged from a temporary prefix; deploy/nginx.conf is included as it is
but for its two addresses (the lines it marks "the test changes this line"). The client
connects from 127.0.0.5 (all of 127/8 is loopback on Linux) while nginx reaches filecask
from 127.0.0.1, so the address in filecask's access log shows X-Forwarded-For was used.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import shlex
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from filecask.settings import SETTINGS
from tests.e2e.conftest import (
    ADMIN_CREDENTIALS,
    HOST,
    Server,
    StartServer,
    free_port,
    run_nginx,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CLIENT_ADDRESS = "127.0.0.5"
AUTH = {"Authorization": "Basic " + base64.b64encode(ADMIN_CREDENTIALS.encode()).decode()}
MiB = 1 << 20
METRICS_TOKEN = "deploy-metrics-token-0123456789"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}
"""What a Prometheus behind the proxy sends (/metrics is not public)."""


def serve_flags() -> set[str]:
    return {s.flag for s in SETTINGS if not s.secret}


def flags_of(command: list[str]) -> list[str]:
    assert command[1:2] == ["serve"], command
    return [word.split("=", 1)[0] for word in command[2:] if word.startswith("--")]


def test_dockerfile_cmd_names_only_serve_flags_that_exist() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "no exec-form CMD in the Dockerfile"
    command = json.loads(match.group(1))
    assert Path(command[0]).name == "filecask"
    flags = flags_of(command)
    assert {"--host", "--data-dir"} <= set(flags)
    assert set(flags) <= serve_flags(), set(flags) - serve_flags()
    assert "0.0.0.0" in command
    assert re.search(r"^HEALTHCHECK [^\n]*(\\\n[^\n]*)*/healthz", text, re.MULTILINE)
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)


def test_systemd_unit_execstart_names_only_serve_flags_that_exist() -> None:
    text = (DEPLOY / "filecask.service").read_text()
    lines = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    command = shlex.split(lines["ExecStart"])
    assert Path(command[0]).name == "filecask"
    flags = flags_of(command)
    assert set(flags) <= serve_flags(), set(flags) - serve_flags()
    data_dir = command[command.index("--data-dir") + 1]
    assert data_dir in lines["ReadWritePaths"].split()
    assert lines["ProtectSystem"] == "strict"
    assert lines["NoNewPrivileges"] == "yes"
    assert lines["Restart"] == "on-failure"
    assert lines["EnvironmentFile"].startswith("/")


def proxy_config(upstream_port: int, listen_port: int, *more_upstreams: int) -> str:
    """deploy/nginx.conf with only its two addresses changed (and, for several instances
    behind one address, more upstream servers)."""
    text = (DEPLOY / "nginx.conf").read_text()
    servers = "".join(f"server {HOST}:{p}; " for p in (upstream_port, *more_upstreams))
    for old, new in (
        ("server 127.0.0.1:8080;", servers.strip()),
        ("listen 80;", f"listen {HOST}:{listen_port};"),
    ):
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    return text


@pytest.fixture
def proxied(
    start_server: StartServer, nginx_binary: str, tmp_path: Path
) -> Iterator[tuple[Server, int]]:
    server = start_server(
        "--trusted-proxies",
        "127.0.0.1",
        "--archive-delay",
        "0.02",
        env={"FILECASK_METRICS_TOKEN": METRICS_TOKEN},
    )
    port = free_port()
    config = proxy_config(server.port, port)
    with run_nginx(nginx_binary, tmp_path / "nginx", config, port):
        yield server, port


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(HOST, port, timeout=30, source_address=(CLIENT_ADDRESS, 0))


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = connect(port)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except (OSError, http.client.HTTPException):
        return 0, {}, b""
    finally:
        conn.close()


def metric(port: int, name: str) -> float:
    status, _, body = request(port, "GET", "/metrics", SCRAPER)
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_30_mib_upload_streams_through_the_proxy(proxied: tuple[Server, int]) -> None:
    """Half the body is sent, then the client pauses: filecask is already receiving it
    (an upload in flight in its /metrics), which nginx's request buffering would prevent
    until the last byte had arrived."""
    server, port = proxied
    body = os.urandom(30 * MiB)
    half = len(body) // 2
    conn = connect(port)
    conn.putrequest("PUT", "/files?name=big.bin")
    for name, value in {**AUTH, "Content-Length": str(len(body))}.items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(body[:half])
    deadline = time.monotonic() + 10
    while metric(port, "filecask_uploads_in_flight") != 1:
        assert time.monotonic() < deadline, "filecask never saw the upload start"
        time.sleep(0.05)
    conn.send(body[half:])
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 201, answer
    assert answer["hash"] == hashlib.sha256(body).hexdigest()
    assert server.blob_path(answer["hash"]).stat().st_size == len(body)
    assert metric(port, "filecask_uploads_in_flight") == 0

    # A range of it comes back through the proxy, and so does a resumed tail.
    status, headers, part = request(
        port, "GET", f"/files/{answer['hash']}", {"Range": "bytes=100-1123"}
    )
    assert status == 206
    assert headers["Content-Range"] == f"bytes 100-1123/{len(body)}"
    assert part == body[100:1124]
    status, _, tail = request(port, "GET", f"/files/{answer['hash']}", {"Range": f"bytes={half}-"})
    assert status == 206
    assert tail == body[half:]


def test_an_archive_streams_through_the_proxy(proxied: tuple[Server, int]) -> None:
    """The archive server pauses between chunks: the first bytes reach the client through
    nginx long before the last is produced (nothing waits for the whole ZIP)."""
    server, port = proxied
    folder = server.data_dir / "archives" / "holiday"
    folder.mkdir(parents=True)
    content = {"a.bin": os.urandom(MiB), "b/c.txt": b"hello " * 1000}
    for name, data in content.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    conn = connect(port)
    started = time.monotonic()
    conn.request("GET", "/archive/holiday/")
    response = conn.getresponse()
    assert response.status == 200
    first = response.read(1024)
    first_at = time.monotonic() - started
    rest = response.read()
    total = time.monotonic() - started
    conn.close()
    assert first_at < total / 2, (first_at, total)
    assert len(first) + len(rest) == int(response.headers["Content-Length"])
    with zipfile.ZipFile(io.BytesIO(first + rest)) as archive:
        files = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
        assert files == content


def test_the_client_address_reaches_the_access_log_and_metrics_answer(
    proxied: tuple[Server, int],
) -> None:
    server, port = proxied
    # What a client claims on its own is ignored: nginx appends the address it sees.
    status, _, _ = request(port, "GET", "/me", {**AUTH, "X-Forwarded-For": "6.6.6.6"})
    assert status == 200
    status, headers, body = request(port, "GET", "/metrics", SCRAPER)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert b"filecask_http_requests_total" in body
    # The bearer token passes through the proxy; without it, no metrics.
    status, _, body = request(port, "GET", "/metrics")
    assert status == 401
    assert b"filecask_http_requests_total" not in body
    lines = wait_for_log(server, '"GET /me HTTP/1.1" 200')
    assert lines[-1].split()[4] == CLIENT_ADDRESS, lines[-1]
    assert lines[-1].split()[5] == "admin"


def wait_for_log(server: Server, needle: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.stderr().splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            assert lines, server.stderr()
            return lines
        time.sleep(0.05)
