"""`filecask migrate` as an operator runs it: a real `filecask serve` on an old data
directory gets files over HTTP with curl and is stopped; `filecask migrate` moves the
installation into PostgreSQL and S3; a `filecask serve` there serves the same files."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

from tests import backends
from tests.e2e.conftest import (
    ADMIN_CREDENTIALS,
    Curl,
    Server,
    ServerLauncher,
    run_filecask,
)

ARGON2 = ("--argon2-time-cost", "1", "--argon2-memory", "1M", "--argon2-parallelism", "1")
BOB = "bob:bob-password"


def fill(server: Server, curl: Curl, tmp_path: Path) -> dict[str, object]:
    """Two users, shared content, a bundle: what the new server must serve unchanged."""
    user = json.dumps({"name": "bob", "password": "bob-password"})
    created = curl("-u", ADMIN_CREDENTIALS, "--json", user, server.url("/users"))
    assert created.status == 201, created.body
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 << 20))
    shared = b"uploaded by both\n" * 1000
    hashes = {
        "big": curl("-u", ADMIN_CREDENTIALS, "-T", str(big), server.url("/files")).json()["hash"],
        "shared": upload(curl, server, ADMIN_CREDENTIALS, shared),
    }
    assert upload(curl, server, BOB, shared) == hashes["shared"]
    files = [{"hash": hashes["big"], "path": "big.bin"}, {"hash": hashes["shared"], "path": "s"}]
    manifest = json.dumps({"name": "b.zip", "files": files})
    # By admin, who holds both files: a bundle may only name its maker's own files.
    bundle = curl("-u", ADMIN_CREDENTIALS, "--json", manifest, server.url("/archives"))
    assert bundle.status == 201, bundle.body
    contents = {hashes["big"]: big.read_bytes(), hashes["shared"]: shared}
    return {"contents": contents, "bundle": bundle.json()["id"]}


def upload(curl: Curl, server: Server, credentials: str, data: bytes) -> str:
    response = curl("-u", credentials, "--data-binary", "@-", server.url("/files"), stdin=data)
    assert response.status in (200, 201), response.body
    return str(response.json()["hash"])


def test_old_data_directory_moves_to_postgres_and_s3(
    start_server: ServerLauncher,
    curl: Curl,
    postgres_database: str,
    s3_server: backends.S3Server,
    tmp_path: Path,
) -> None:
    old = start_server(*ARGON2)
    filled = fill(old, curl, tmp_path)
    assert old.stop() == 0
    bucket = s3_server.create_bucket()
    environment = {"FILECASK_DATABASE_URL": postgres_database}
    environment.update(backends.s3_environment(s3_server, bucket))
    new_dir = tmp_path / "new-data"
    command = ["migrate", "--from", str(old.data_dir), "--data-dir", str(new_dir)]
    done = run_filecask(command, cwd=tmp_path, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "migrated 2 user(s), 2 file(s), 3 reference(s), 1 bundle(s)" in done.stdout
    assert "verified" in done.stdout
    assert "copying blobs" in done.stderr
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    contents = filled["contents"]
    assert isinstance(contents, dict)
    assert sorted(k.rpartition("/")[2] for k in keys if "/store/" in k) == sorted(contents)

    new = start_server(*ARGON2, env=environment, data_dir=new_dir, admin_password=None)
    for hex_hash, data in contents.items():
        response = curl(new.url(f"/files/{hex_hash}"))
        assert (response.status, response.body) == (200, data)
    me = curl("-u", BOB, new.url("/me")).json()
    assert (me["files"], me["is_admin"]) == (1, False)
    archive = curl(new.url(f"/archive/{filled['bundle']}/"))
    with zipfile.ZipFile(io.BytesIO(archive.body)) as zipped:
        assert sorted(zipped.namelist()) == ["big.bin", "s"]

    again = run_filecask(command, cwd=tmp_path, env=environment, timeout=60)
    assert again.returncode == 1
    assert again.stderr.startswith("Error: the target is not empty (")
    assert "Traceback" not in again.stderr


def test_missing_source_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = run_filecask(["migrate", "--from", str(missing)], cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: the source {missing} is not a directory"
