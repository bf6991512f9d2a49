"""`filecask serve --workers 2`: one port, two processes, one consistent store."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from filecask.http.workers import bind_sockets, close_sockets
from tests.e2e.conftest import (
    ADMIN_CREDENTIALS,
    HOST,
    Curl,
    Server,
    StartServer,
    run_filecask,
)

CONNECTIONS = 16


def workers_of(server: Server) -> list[psutil.Process]:
    children: list[psutil.Process] = psutil.Process(server.pid).children()
    return children


def wait_for(condition: object, timeout: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def open_connections(server: Server) -> list[http.client.HTTPConnection]:
    connections = []
    for _ in range(CONNECTIONS):
        conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
        conn.connect()
        connections.append(conn)
    return connections


def get(conn: http.client.HTTPConnection, path: str, auth: str | None = None) -> tuple[int, bytes]:
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


@pytest.fixture
def server(start_server: StartServer) -> Server:
    # Failures are counted per worker; this file is about cache coherence, not slow-down.
    return start_server("--workers", "2", "--access-log", "false", "--auth-max-failures", "100")


def test_two_workers_share_the_port_and_the_load(server: Server) -> None:
    workers = workers_of(server)
    assert len(workers) == 2
    connections = open_connections(server)
    try:
        for conn in connections:
            assert get(conn, "/healthz")[0] == 200
        busy = [w for w in workers if any(c.status == "ESTABLISHED" for c in w.net_connections())]
        assert len(busy) == 2, "SO_REUSEPORT should spread 16 connections over both workers"
    finally:
        for conn in connections:
            conn.close()


def test_a_delete_is_seen_by_every_worker_at_once(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    body = os.urandom(10_000)
    digest = hashlib.sha256(body).hexdigest()
    source = tmp_path / "small.bin"
    source.write_bytes(body)
    assert curl("-u", ADMIN_CREDENTIALS, "-T", str(source), server.url("/files")).status == 201
    connections = open_connections(server)
    try:
        for _ in range(2):  # twice: now in both workers' caches
            for conn in connections:
                assert get(conn, f"/files/{digest}") == (200, body)
        result = curl("-u", ADMIN_CREDENTIALS, "-X", "DELETE", server.url(f"/files/{digest}"))
        assert result.status == 204
        for conn in connections:
            assert get(conn, f"/files/{digest}")[0] == 404
    finally:
        for conn in connections:
            conn.close()


def test_a_password_changed_from_the_cli_stops_working_in_every_worker(
    server: Server, tmp_path: Path
) -> None:
    connections = open_connections(server)
    try:
        for conn in connections:  # the old password is now cached in both workers
            assert get(conn, "/me", ADMIN_CREDENTIALS)[0] == 200
        done = run_filecask(
            ["user", "passwd", "admin", "--password-stdin", "--data-dir", str(server.data_dir)],
            cwd=tmp_path,
            env={"FILECASK_ARGON2_MEMORY": "8M"},
            input_text="the-new-password\n",
        )
        assert done.returncode == 0, done.stderr
        for conn in connections:
            assert get(conn, "/me", ADMIN_CREDENTIALS)[0] == 401
            assert get(conn, "/me", "admin:the-new-password")[0] == 200
    finally:
        for conn in connections:
            conn.close()


def test_a_killed_worker_is_replaced_and_sigterm_stops_all(server: Server) -> None:
    first, second = workers_of(server)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    wait_for(lambda: len(workers_of(server)) == 2 and first.pid not in _pids(server))
    for _ in range(20):  # every new connection lands on a live worker
        conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
        assert get(conn, "/healthz")[0] == 200
        conn.close()
    assert "worker 0 exited" in server.stderr() or "worker 1 exited" in server.stderr()
    workers = workers_of(server)
    assert server.stop() == 0
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    assert second.pid in {w.pid for w in workers}


def test_workers_die_with_a_killed_master(server: Server) -> None:
    workers = workers_of(server)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "orphaned workers would keep the port and serve unsupervised"
    assert len(gone) == 2


def _pids(server: Server) -> set[int]:
    return {w.pid for w in workers_of(server)}


def test_bind_sockets_gives_every_worker_its_own_socket_on_one_port() -> None:
    sets = bind_sockets(HOST, 0, 3)
    try:
        ports = {sock.getsockname()[1] for socks in sets for sock in socks}
        assert len(ports) == 1
        assert ports != {0}
        assert len({sock.fileno() for socks in sets for sock in socks}) == 3
    finally:
        close_sockets(sets)


def test_an_address_in_use_fails_clearly(server: Server, tmp_path: Path) -> None:
    done = run_filecask(
        ["serve", "--workers", "2", "--host", HOST, "--port", str(server.port)],
        cwd=tmp_path,
        env={"FILECASK_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode != 0
    assert "cannot listen on" in done.stderr
