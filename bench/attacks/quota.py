"""Issue 14 §1: quotas and disk. What one ordinary account could keep alive beyond its quota.

    python -m bench.attacks.quota                 # starts its own `filecask serve`
    python -m bench.attacks.quota --port P --user admin:PASSWORD [--data-dir DIR]

Each attack is made by a fresh user with a 1 MiB quota (created through the API). Printed:
- bundle, then delete: 20 rounds of "upload 1,000 KiB, bundle it, delete the file": the
  rounds whose upload was stored, how much the store grew, and what `/me` says;
- partial tus uploads: 30 uploads of 1 MiB, each sent all but its last byte: how many were
  created, and the bytes of partial files in `tmp/` afterwards;
- then the user is removed: the bytes of partial files still in `tmp/`.

Store and `tmp/` bytes are measured on disk, so they need the data directory (given with
`--data-dir` for a server started elsewhere; without it only the API's figures show).
The e2e tests (tests/e2e/test_hostile_quota_e2e.py) replay the same attacks and assert
the rules these figures break or keep.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import HOST, filecask

QUOTA = 1 << 20
ROUNDS = 20
ROUND_SIZE = 1000 << 10
PARTIAL_UPLOADS = 30
PARTIAL_LENGTH = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    """One server's HTTP API as `credentials` (NAME:PASSWORD) sees it; a connection per call."""

    def __init__(self, port: int, credentials: str) -> None:
        self.port = port
        self.credentials = credentials

    def as_user(self, credentials: str) -> Api:
        return Api(self.port, credentials)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        try:
            conn.request(
                method, path, body=body, headers={**basic(self.credentials), **(headers or {})}
            )
            response = conn.getresponse()
            return Answer(response.status, dict(response.headers.items()), response.read())
        finally:
            conn.close()

    def json(self, method: str, path: str, value: Any) -> Answer:
        data = json.dumps(value).encode()
        return self.request(method, path, data, {"Content-Type": "application/json"})

    def me(self) -> dict[str, Any]:
        answer = self.request("GET", "/me")
        assert answer.status == 200, answer
        me: dict[str, Any] = answer.json()
        return me

    def new_user(self, name: str, *, quota: int | None = QUOTA) -> Api:
        """Create a user (as an administrator); the API as them."""
        password = secrets.token_urlsafe(12)
        answer = self.json("POST", "/users", {"name": name, "password": password, "quota": quota})
        assert answer.status == 201, answer
        return self.as_user(f"{name}:{password}")

    def upload(self, content: bytes, name: str = "f.bin") -> Answer:
        return self.request("POST", f"/files?name={name}", content)

    def bundle(self, name: str, files: list[tuple[str, str]]) -> Answer:
        manifest = {"name": name, "files": [{"path": p, "hash": h} for p, h in files]}
        return self.json("POST", "/archives", manifest)

    def tus_create(self, length: int) -> Answer:
        return self.request("POST", "/uploads/", headers={**TUS, "Upload-Length": str(length)})

    def tus_patch(self, location: str, offset: int, data: bytes) -> Answer:
        headers = {
            **TUS,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
        }
        return self.request("PATCH", upload_path(location), data, headers)


def upload_path(location: str) -> str:
    return location[location.index("/uploads/") :]


def tree_bytes(folder: Path, prefix: str = "") -> int:
    """Bytes of the regular files under `folder` whose names start with `prefix`."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name.startswith(prefix):
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    continue
    return total


def tmp_bytes(data_dir: Path) -> int:
    """Bytes of resumable uploads' partial files (`tmp/tus-*`)."""
    return tree_bytes(data_dir / "tmp", "tus-")


@dataclass(frozen=True)
class LoopOutcome:
    stored: int
    """Rounds whose upload was stored."""
    statuses: list[tuple[int, int, int]]
    """(upload, bundle, delete) statuses of each round (0: not attempted)."""
    me: dict[str, Any]


def bundle_then_delete(user: Api, rounds: int = ROUNDS, size: int = ROUND_SIZE) -> LoopOutcome:
    """Upload `size` random bytes, bundle them, delete the file; `rounds` times."""
    stored = 0
    statuses = []
    for i in range(rounds):
        uploaded = user.upload(os.urandom(size), f"round{i}.bin")
        if uploaded.status not in (200, 201):
            statuses.append((uploaded.status, 0, 0))
            continue
        stored += 1
        hex_hash = uploaded.json()["hash"]
        bundled = user.bundle(f"round{i}.zip", [(f"round{i}.bin", hex_hash)])
        deleted = user.request("DELETE", f"/files/{hex_hash}")
        statuses.append((uploaded.status, bundled.status, deleted.status))
    return LoopOutcome(stored, statuses, user.me())


@dataclass(frozen=True)
class PartialOutcome:
    created: list[str]
    """Locations of the uploads created (each then sent all but its last byte)."""
    refusals: list[Answer]


def partial_uploads(
    user: Api, count: int = PARTIAL_UPLOADS, length: int = PARTIAL_LENGTH
) -> PartialOutcome:
    """`count` tus uploads of `length` bytes, each sent `length - 1` bytes and left open."""
    created, refusals = [], []
    for _ in range(count):
        answer = user.tus_create(length)
        if answer.status != 201:
            refusals.append(answer)
            continue
        location = answer.headers["Location"]
        patched = user.tus_patch(location, 0, os.urandom(length - 1))
        assert patched.status == 204, patched
        created.append(location)
    return PartialOutcome(created, refusals)


def mib(size: int) -> str:
    return f"{size / (1 << 20):.2f} MiB"


def run(admin: Api, data_dir: Path | None) -> None:
    tag = secrets.token_hex(3)
    print(f"quota of each attacking user: {mib(QUOTA)}")

    user = admin.new_user(f"looper-{tag}")
    before = tree_bytes(data_dir / "store") if data_dir else 0
    loop = bundle_then_delete(user)
    growth = f", store grew by {mib(tree_bytes(data_dir / 'store') - before)}" if data_dir else ""
    deletes = sorted({d for _, _, d in loop.statuses if d})
    print(
        f"bundle-then-delete, {ROUNDS} rounds of {ROUND_SIZE >> 10} KiB: {loop.stored} stored"
        f"{growth}; /me bytes {loop.me['bytes']} ({mib(loop.me['bytes'])});"
        f" DELETE answered {deletes}"
    )

    user = admin.new_user(f"partial-{tag}")
    before = tmp_bytes(data_dir) if data_dir else 0
    partial = partial_uploads(user)
    held = f"; tmp/ holds {mib(tmp_bytes(data_dir) - before)} more" if data_dir else ""
    refused = sorted({a.status for a in partial.refusals})
    print(
        f"partial tus uploads, {PARTIAL_UPLOADS} of {mib(PARTIAL_LENGTH)} sent but one byte:"
        f" {len(partial.created)} created, {len(partial.refusals)} refused {refused}{held}"
    )
    name = user.credentials.split(":", 1)[0]
    removed = admin.request("DELETE", f"/users/{name}")
    left = f"; tmp/ still holds {mib(tmp_bytes(data_dir) - before)}" if data_dir else ""
    print(f"user removed ({removed.status}){left}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks.quota", description=__doc__)
    parser.add_argument("--port", type=int, help="attack this server instead of starting one")
    parser.add_argument("--user", default=None, help="NAME:PASSWORD of an administrator")
    parser.add_argument("--data-dir", type=Path, default=None, help="the server's data dir")
    args = parser.parse_args(argv)
    if args.port is not None:
        if not args.user:
            parser.error("--port needs --user NAME:PASSWORD (an administrator)")
        run(Api(args.port, args.user), args.data_dir)
        return 0
    password = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="filecask-quota-") as tmp:
        base = Path(tmp)
        with filecask(base / "run", base / "data", password) as server:
            print(f"filecask serve on port {server.port} (pid {server.pid})", file=sys.stderr)
            run(Api(server.port, f"admin:{password}"), server.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
