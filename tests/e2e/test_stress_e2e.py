"""Several server processes on one data directory (`--workers 3`) under mixed uploads,
downloads and deletes of overlapping content by several users, with `filecask fsck`
checking the live store meanwhile: every download is byte-exact or a clean 404, each
user ends with exactly the files their own sequence of operations says, and the database
and the disk agree exactly afterwards."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import random
import threading
from typing import Any

from tests.e2e.conftest import HOST, Server, ServerLauncher, run_filecask

USERS = [f"user{i}" for i in range(4)]
CONTENTS = [f"shared content {i} ".encode() * (997 * (i + 1)) for i in range(10)]
HASHES = [hashlib.sha256(c).hexdigest() for c in CONTENTS]
BY_HASH = dict(zip(HASHES, CONTENTS, strict=True))
OPS_PER_USER = 120


def auth(name: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{name}-password".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Client:
    """One keep-alive connection; the kernel spreads connections over the workers."""

    def __init__(self, server: Server, headers: dict[str, str]) -> None:
        self.server = server
        self.headers = headers
        self.conn = http.client.HTTPConnection(HOST, server.port, timeout=30)

    def __call__(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def fsck_report(server: Server) -> dict[str, Any]:
    done = run_filecask(
        ["fsck", "--json", "--data-dir", str(server.data_dir)], cwd=server.cwd, timeout=60
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_workers_under_mixed_load_keep_database_and_disk_in_exact_agreement(
    start_server: ServerLauncher,
) -> None:
    server = start_server("--workers", "3", "--argon2-memory", "1M", "--argon2-time-cost", "1")
    admin = Client(server, _admin_auth(server))
    for name in USERS:
        body = json.dumps({"name": name, "password": f"{name}-password"}).encode()
        assert admin("POST", "/users", body)[0] == 201
    admin.close()

    errors: list[str] = []
    expected: dict[str, set[str]] = {}
    stop = threading.Event()

    def user_load(name: str, seed: int) -> None:
        rng = random.Random(seed)
        client = Client(server, auth(name))
        holds: set[str] = set()
        try:
            for _ in range(OPS_PER_USER):
                index = rng.randrange(len(CONTENTS))
                hex_hash = HASHES[index]
                if rng.random() < 0.55:
                    status, body = client("POST", "/files", CONTENTS[index])
                    if status not in (200, 201) or json.loads(body)["hash"] != hex_hash:
                        errors.append(f"upload {status} {body[:200]!r}")
                    holds.add(hex_hash)
                else:
                    status, body = client("DELETE", f"/files/{hex_hash}")
                    # Not holding it: 403 if someone else does, 404 if nobody does.
                    wanted = {204} if hex_hash in holds else {403, 404}
                    if status not in wanted:
                        errors.append(f"delete {status} {body[:200]!r}")
                    holds.discard(hex_hash)
        finally:
            client.close()
        expected[name] = holds

    def download_load(seed: int) -> None:
        rng = random.Random(seed)
        client = Client(server, {})
        try:
            while not stop.is_set():
                hex_hash = rng.choice(HASHES)
                status, body = client("GET", f"/files/{hex_hash}")
                if status == 200 and body != BY_HASH[hex_hash]:
                    errors.append(f"download of {hex_hash} was not byte-exact")
                elif status == 404 and b"not-found" not in body:
                    errors.append(f"unclean 404: {body[:200]!r}")
                elif status not in (200, 404):
                    errors.append(f"download {status} {body[:200]!r}")
        finally:
            client.close()

    def live_fsck() -> None:
        while not stop.is_set():
            report = fsck_report(server)
            if report["findings"]:
                errors.append(f"fsck of the live store: {report['findings']}")

    users = [threading.Thread(target=user_load, args=(n, i)) for i, n in enumerate(USERS)]
    others = [threading.Thread(target=download_load, args=(i,)) for i in range(3)]
    others.append(threading.Thread(target=live_fsck))
    for thread in users + others:
        thread.start()
    for thread in users:
        thread.join(120)
    stop.set()
    for thread in others:
        thread.join(60)
    assert errors == []

    for name in USERS:
        client = Client(server, auth(name))
        listing = json.loads(client("GET", "/files?limit=1000")[1])
        client.close()
        assert {f["hash"] for f in listing["files"]} == expected[name], name
    held = set().union(*expected.values())
    stored = {p.name for p in (server.data_dir / "store").glob("*/*")}
    assert stored == held
    assert server.stop() == 0
    report = fsck_report(server)
    assert report["findings"] == []
    assert report["blobs"] == len(held)


def _admin_auth(server: Server) -> dict[str, str]:
    token = base64.b64encode(f"admin:{server.admin_password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
