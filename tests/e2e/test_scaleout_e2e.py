"""Two `filecask serve` instances as on two machines: separate data directories, one
PostgreSQL database, one S3 bucket (moto's server), one address in front (nginx, round
robin, the deploy/nginx.conf snippet with a second upstream).

- Mixed uploads, downloads and deletes of shared content by several users, spread over
  both instances: every download is byte-exact or a clean 404, each user ends with exactly
  the files their own sequence says, and afterwards the database's blobs, the bucket's
  objects and what the users hold are the same set, with no scratch or unfinished multipart
  upload left in the bucket.
- A password changed with the CLI (another machine) stops working at both instances within
  the documented bound (`--change-poll`), and failed sign-ins at one throttle the other.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import backends
from tests.e2e.conftest import (
    ADMIN_CREDENTIALS,
    HOST,
    Server,
    StartServer,
    free_port,
    run_filecask,
    run_nginx,
)
from tests.e2e.test_deploy_e2e import proxy_config

USERS = [f"user{i}" for i in range(4)]
CONTENTS = [f"shared content {i} ".encode() * (4099 * (i + 1)) for i in range(8)]
HASHES = [hashlib.sha256(c).hexdigest() for c in CONTENTS]
BY_HASH = dict(zip(HASHES, CONTENTS, strict=True))
OPS_PER_USER = 80
CHANGE_POLL = 1.0
FAST_ARGON2 = ("--argon2-memory", "1M", "--argon2-time-cost", "1")


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


ADMIN = basic(*ADMIN_CREDENTIALS.split(":", 1))


@dataclass
class Cluster:
    a: Server
    b: Server
    port: int
    """nginx, in front of both."""
    environment: dict[str, str]
    database_url: str
    s3: backends.S3Server
    bucket: str


@pytest.fixture
def cluster(
    start_server: StartServer,
    postgres_database: str,
    s3_server: backends.S3Server,
    nginx_binary: str,
    tmp_path: Path,
) -> Iterator[Cluster]:
    bucket = s3_server.create_bucket()
    environment = {
        "FILECASK_DATABASE_URL": postgres_database,
        "FILECASK_CHANGE_POLL": str(CHANGE_POLL),
        **backends.s3_environment(s3_server, bucket),
    }
    flags = (*FAST_ARGON2, "--trusted-proxies", "127.0.0.1", "--access-log", "false")
    a = start_server(*flags, env=environment)
    b = start_server(*flags, env=environment)
    port = free_port()
    with run_nginx(nginx_binary, tmp_path / "nginx", proxy_config(a.port, port, b.port), port):
        yield Cluster(a, b, port, environment, postgres_database, s3_server, bucket)


class Client:
    """One keep-alive connection to one port."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.headers = headers
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)

    def __call__(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def status_of(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    client = Client(port, headers)
    try:
        return client(method, path)[0]
    finally:
        client.close()


def database_hashes(url: str) -> set[str]:
    async def read() -> set[str]:
        conn = await asyncpg.connect(url)
        try:
            return {row["hash"] for row in await conn.fetch("SELECT hash FROM blobs")}
        finally:
            await conn.close()

    return asyncio.run(read())


def bucket_keys(cluster: Cluster, under: str) -> set[str]:
    s3 = cluster.s3.client()
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=cluster.bucket, Prefix=f"fc/{under}"
    ):
        keys.update(item["Key"].removeprefix(f"fc/{under}") for item in page.get("Contents", []))
    return keys


def test_two_instances_under_mixed_load_agree_with_the_bucket(cluster: Cluster) -> None:
    for name in USERS:
        body = json.dumps({"name": name, "password": f"{name}-password"}).encode()
        admin = Client(cluster.a.port, {**ADMIN, "Content-Type": "application/json"})
        assert admin("POST", "/users", body)[0] == 201
        admin.close()

    errors: list[str] = []
    expected: dict[str, set[str]] = {}
    stop = threading.Event()
    # Each user talks to nginx (round robin over both) and to each instance directly.
    ports = [cluster.port, cluster.a.port, cluster.b.port]

    def user_load(name: str, seed: int) -> None:
        rng = random.Random(seed)
        clients = [Client(port, basic(name, f"{name}-password")) for port in ports]
        holds: set[str] = set()
        try:
            for _ in range(OPS_PER_USER):
                client = rng.choice(clients)
                index = rng.randrange(len(CONTENTS))
                hex_hash = HASHES[index]
                if rng.random() < 0.55:
                    status, body = client("POST", "/files", CONTENTS[index])
                    if status not in (200, 201) or json.loads(body)["hash"] != hex_hash:
                        errors.append(f"upload {status} {body[:200]!r}")
                    holds.add(hex_hash)
                else:
                    status, body = client("DELETE", f"/files/{hex_hash}")
                    wanted = {204} if hex_hash in holds else {403, 404}
                    if status not in wanted:
                        errors.append(f"delete {status} {body[:200]!r}")
                    holds.discard(hex_hash)
        finally:
            for client in clients:
                client.close()
        expected[name] = holds

    def download_load(seed: int) -> None:
        rng = random.Random(seed)
        client = Client(ports[seed % len(ports)], {})
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

    users = [threading.Thread(target=user_load, args=(n, i)) for i, n in enumerate(USERS)]
    downloads = [threading.Thread(target=download_load, args=(i,)) for i in range(3)]
    for thread in users + downloads:
        thread.start()
    for thread in users:
        thread.join(180)
    stop.set()
    for thread in downloads:
        thread.join(60)
    assert errors == []

    for name in USERS:
        for port in (cluster.a.port, cluster.b.port):
            client = Client(port, basic(name, f"{name}-password"))
            listing = json.loads(client("GET", "/files?limit=1000")[1])
            client.close()
            assert {f["hash"] for f in listing["files"]} == expected[name], (name, port)
    held = set().union(*expected.values())
    assert database_hashes(cluster.database_url) == held
    assert {key.rpartition("/")[2] for key in bucket_keys(cluster, "store/")} == held
    assert bucket_keys(cluster, "tmp/") == set()
    uploads = cluster.s3.client().list_multipart_uploads(Bucket=cluster.bucket)
    assert uploads.get("Uploads", []) == []
    assert cluster.a.stop() == 0
    assert cluster.b.stop() == 0
    report = fsck_report(cluster)
    assert report["findings"] == []
    assert report["blobs"] == len(held)


def fsck_report(cluster: Cluster) -> dict[str, Any]:
    done = run_filecask(
        ["fsck", "--json", "--data-dir", str(cluster.a.data_dir)],
        cwd=cluster.a.cwd,
        env=cluster.environment,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.alone  # times the change feed against its bound
def test_a_changed_password_stops_working_everywhere_within_the_bound(cluster: Cluster) -> None:
    body = json.dumps({"name": "bob", "password": "old-password"}).encode()
    admin = Client(cluster.a.port, {**ADMIN, "Content-Type": "application/json"})
    assert admin("POST", "/users", body)[0] == 201
    admin.close()
    old = basic("bob", "old-password")
    # Both instances have verified, and cached, the old password.
    for port in (cluster.a.port, cluster.b.port):
        assert status_of(port, "GET", "/me", old) == 200

    # An operator on a third machine changes it.
    done = run_filecask(
        ["user", "passwd", "bob", "--password-stdin", "--data-dir", str(cluster.a.data_dir)],
        cwd=cluster.a.cwd,
        env=cluster.environment,
        input_text="new-password\n",
    )
    assert done.returncode == 0, done.stderr
    changed = time.monotonic()
    refused: dict[int, float] = {}
    while len(refused) < 2 and time.monotonic() - changed < CHANGE_POLL + 2:
        for port in (cluster.a.port, cluster.b.port):
            if port not in refused and status_of(port, "GET", "/me", old) == 401:
                refused[port] = time.monotonic() - changed
        time.sleep(0.01)
    assert set(refused) == {cluster.a.port, cluster.b.port}, refused
    # The documented bound, with room for one request in flight on a loaded machine.
    assert max(refused.values()) <= CHANGE_POLL + 0.5, refused
    for port in (cluster.a.port, cluster.b.port):
        assert status_of(port, "GET", "/me", basic("bob", "new-password")) == 200


@pytest.mark.alone  # times the change feed against its bound
def test_failed_sign_ins_at_one_instance_throttle_the_other(cluster: Cluster) -> None:
    body = json.dumps({"name": "carol", "password": "carol-password"}).encode()
    admin = Client(cluster.a.port, {**ADMIN, "Content-Type": "application/json"})
    assert admin("POST", "/users", body)[0] == 201
    admin.close()
    right = basic("carol", "carol-password")
    assert status_of(cluster.b.port, "GET", "/me", right) == 200  # cached at b

    def guess(i: int) -> int:
        return status_of(cluster.a.port, "GET", "/me", basic("carol", f"guess-{i}"))

    assert [guess(i) for i in range(5)] == [401] * 5
    # Past the threshold each failure doubles the wait (1 s, 2 s, 4 s): wait them out at a
    # to reach a wait longer than the bound.
    time.sleep(1.1)
    assert guess(5) == 401
    time.sleep(2.1)
    assert guess(6) == 401
    assert guess(7) == 429
    throttled = time.monotonic()
    # Throttled at b too, within the bound: even the right (cached) password waits rather
    # than reveal that it is right.
    while status_of(cluster.b.port, "GET", "/me", right) != 429:
        assert time.monotonic() - throttled < CHANGE_POLL + 0.5, "b never throttled carol"
        time.sleep(0.02)
