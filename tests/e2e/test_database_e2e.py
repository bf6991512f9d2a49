"""The database under trouble, with a real server: a brief lock only delays requests; a
corrupt, lost or unreachable database makes `serve` (and `fsck`) refuse to start with a
clear message and no traceback."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, HOST, ServerLauncher, free_port, run_filecask

AUTH = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}
LOCK_SECONDS = 1.5


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=AUTH)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_brief_exclusive_lock_delays_requests_but_fails_none(
    start_server: ServerLauncher,
) -> None:
    server = start_server()
    status, body = call(server.port, "POST", "/files", b"before the lock")
    assert status == 201
    kept = json.loads(body)["hash"]
    locked = threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(server.data_dir / "filecask.db", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")  # no reader or writer gets in, WAL or not
        locked.set()
        time.sleep(LOCK_SECONDS)
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    locked.wait(5)
    started = time.monotonic()
    results = [
        call(server.port, "POST", "/files", b"during the lock")[0],
        call(server.port, "GET", "/files")[0],
        call(server.port, "DELETE", f"/files/{kept}")[0],
    ]
    waited = time.monotonic() - started
    holder.join()
    assert results == [201, 200, 204]
    assert waited >= LOCK_SECONDS * 0.8  # they really met the lock, and waited it out


def test_a_corrupt_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "filecask.db").write_bytes(b"this is not a database file at all" * 100)
    for command in (["serve", "--port", str(free_port())], ["fsck"], ["user", "list"]):
        done = run_filecask([*command, "--data-dir", str(data_dir)], cwd=tmp_path)
        assert done.returncode == 1
        assert "file is not a database" in done.stderr
        assert "restore it from a backup" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_lost_database_beside_stored_files_is_refused(
    start_server: ServerLauncher, tmp_path: Path
) -> None:
    server = start_server()
    assert call(server.port, "POST", "/files", b"a stored file")[0] == 201
    server.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{server.data_dir / 'filecask.db'}{suffix}").unlink(missing_ok=True)
    for command in (["serve", "--port", str(free_port())], ["fsck", "--repair"], ["gc"]):
        done = run_filecask([*command, "--data-dir", str(server.data_dir)], cwd=tmp_path)
        assert done.returncode == 1, done.stdout
        assert "is missing" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (server.data_dir / "filecask.db").exists()  # nothing created in its place
    assert len(list((server.data_dir / "store").glob("*/*"))) == 1  # and nothing deleted


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://filecask:secret-pw@127.0.0.1:1/filecask",
        "sqlite+aiosqlite:////nonexistent-dir/filecask.db",
    ],
)
def test_an_unreachable_database_is_refused_without_showing_its_password(
    tmp_path: Path, url: str
) -> None:
    done = run_filecask(
        [
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "d"),
            "--database-url",
            url,
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: cannot ")
    assert "secret-pw" not in done.stderr
    assert "Traceback" not in done.stderr


def _store_one_file(start_server: ServerLauncher) -> Path:
    server = start_server()
    assert call(server.port, "POST", "/files", b"a stored file")[0] == 201
    server.stop()
    return server.data_dir


def _refused_everywhere(data_dir: Path, tmp_path: Path, *extra: str) -> None:
    commands = (["serve", "--port", str(free_port())], ["fsck", "--repair"], ["gc", "--grace", "0"])
    for command in commands:
        done = run_filecask([*command, "--data-dir", str(data_dir), *extra], cwd=tmp_path)
        assert done.returncode == 1, done.stdout
        assert "is empty but" in done.stderr
        assert "Traceback" not in done.stderr
    assert len(list((data_dir / "store").glob("*/*"))) == 1  # nothing deleted


def test_an_emptied_database_beside_stored_files_is_refused(
    start_server: ServerLauncher, tmp_path: Path
) -> None:
    """A zero-byte file where the database was (a failed restore, `cp /dev/null`) would be
    set up afresh, and then every stored file would be an orphan for gc to delete."""
    data_dir = _store_one_file(start_server)
    for suffix in ("-wal", "-shm"):
        Path(f"{data_dir / 'filecask.db'}{suffix}").unlink(missing_ok=True)
    (data_dir / "filecask.db").write_bytes(b"")
    _refused_everywhere(data_dir, tmp_path)


def test_a_fresh_postgresql_database_beside_stored_files_is_refused(
    start_server: ServerLauncher, tmp_path: Path
) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("needs psql and the PostgreSQL server on 127.0.0.1 (CI has both)")
    name = f"filecask_empty_{os.getpid()}"
    admin = [psql, "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"]
    subprocess.run([*admin, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    try:
        data_dir = _store_one_file(start_server)
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        _refused_everywhere(data_dir, tmp_path, "--database-url", url)
    finally:
        subprocess.run([*admin, f"DROP DATABASE {name}"], check=False, capture_output=True)
