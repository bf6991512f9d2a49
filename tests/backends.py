"""The real servers behind the scale-out configurations: PostgreSQL on loopback (the
machine's own) and an S3-compatible server (moto's server mode) started here.

Used by the in-process suite (`conftest.backend`) and by the end-to-end tests, which hand
the same URLs to `filecask serve` subprocesses.

PostgreSQL is found at `FILECASK_TEST_POSTGRES` (default: the loopback server, user
postgres). Where it cannot be reached, its configurations are skipped with the reason,
unless `FILECASK_TEST_REQUIRE_POSTGRES=1` (set by `.ci/run`) turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "FILECASK_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("FILECASK_TEST_REQUIRE_POSTGRES") == "1"
BACKENDS = ("sqlite-disk", "pg-disk", "pg-s3")
S3_ACCESS_KEY = "testing-key"
S3_SECRET_KEY = "testing-secret"
S3_REGION = "us-east-1"
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_names)}"


def _run_sql(statements: list[str], url: str = POSTGRES_ADMIN_URL) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    try:
        _run_sql(["SELECT 1"])
    except Exception as exc:  # any failure to reach it is a reason to skip
        return f"PostgreSQL at {POSTGRES_ADMIN_URL} unreachable: {exc}"
    return None


def skip_or_fail(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"FILECASK_TEST_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def require(postgres: Postgres | None) -> Postgres:
    """The session's PostgreSQL, or skip (fail under FILECASK_TEST_REQUIRE_POSTGRES=1)."""
    if postgres is None:
        skip_or_fail(postgres_unavailable() or "PostgreSQL unreachable")
    assert postgres is not None
    return postgres


def database_url(name: str) -> str:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@dataclass
class Postgres:
    """Databases made from a migrated template. Creating one costs about 0.3 s, so a
    test's database is kept when it is done and emptied (a few DELETEs, milliseconds) for the
    next test instead; one that cannot be emptied at once is dropped and a new one made."""

    template: str
    spare: str | None = None

    def create(self) -> str:
        if self.spare is not None:
            name, self.spare = self.spare, None
            try:
                asyncio.run(_empty(database_url(name)))
            except Exception:  # locked, or left unusable by its test: start afresh
                self.drop(name)
            else:
                return name
        name = unique("filecask_t")
        _run_sql([f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'])
        return name

    def release(self, name: str) -> None:
        """A test is done with `name`: keep it for the next one, or drop it."""
        if self.spare is None:
            self.spare = name
        else:
            self.drop(name)

    def close(self) -> None:
        if self.spare is not None:
            self.drop(self.spare)
        self.drop(self.template)

    def create_empty(self) -> str:
        name = unique("filecask_e")
        _run_sql([f'CREATE DATABASE "{name}"'])
        return name

    @staticmethod
    def drop(name: str) -> None:
        _run_sql([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])


KEPT_TABLES = ("alembic_version",)
"""What emptying a database keeps: the schema's version (a new one has no other rows)."""


async def _empty(url: str) -> None:
    """Every row deleted and every sequence restarted: what TRUNCATE ... RESTART IDENTITY
    does, in a tenth of its time (TRUNCATE makes new files for each table and syncs them,
    ~0.2 s; a few DELETEs on a test's handful of rows take milliseconds). Foreign keys are
    not checked meanwhile (session_replication_role, superuser): every table is emptied."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute("SET lock_timeout = '2s'")
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND NOT tablename = ANY($1::text[])",
            list(KEPT_TABLES),
        )
        sequences = await conn.fetch(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
        )
        statements = ["SET LOCAL session_replication_role = replica"]
        statements += [f'DELETE FROM "{row["tablename"]}"' for row in tables]
        statements += [f"SELECT setval('\"{row['sequencename']}\"', 1, false)" for row in sequences]
        async with conn.transaction():
            await conn.execute(";\n".join(statements))
    finally:
        await conn.close()


def start_postgres_template() -> Postgres:
    from filecask.storage.changes import ChangeStamps
    from filecask.storage.meta.sql import SqlMetaStore

    template = unique("filecask_tmpl")
    _run_sql([f'CREATE DATABASE "{template}"'])

    async def migrate() -> None:
        meta = SqlMetaStore(database_url(template), ChangeStamps(None))
        await meta.open(create=True)
        await meta.close()

    asyncio.run(migrate())
    return Postgres(template)


@dataclass
class S3Server:
    """moto's S3 server on loopback: real HTTP, real S3 wire protocol."""

    endpoint: str
    process: subprocess.Popen[bytes]
    _shared_bucket: str | None = None

    def create_bucket(self) -> str:
        """A new, empty bucket of the caller's own."""
        bucket = unique("filecask-b")
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def area(self) -> dict[str, object]:
        """Settings overrides for a store of its own: a fresh key prefix in the bucket this
        server's tests share (filecask keeps every key it makes under its prefix)."""
        if self._shared_bucket is None:
            self._shared_bucket = self.create_bucket()
        return s3_settings(self, self._shared_bucket, unique("t"))

    def client(self) -> Any:
        """A plain boto3 client, to look at the bucket from outside filecask."""
        return s3_client(self.endpoint, S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@functools.cache
def s3_client(endpoint: str, region: str, access_key: str, secret_key: str) -> Any:
    """A plain boto3 client (one per server and keys: making one takes tens of ms)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )


def start_s3_server(log: Path) -> S3Server:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(sys.executable).with_name("moto_server")
    command = [str(script)] if script.exists() else [shutil.which("moto_server") or "moto_server"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return S3Server(f"http://127.0.0.1:{port}", process)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto_server did not start within 30 s")


def s3_settings(server: S3Server, bucket: str, prefix: str = "fc") -> dict[str, object]:
    """Settings overrides that put blobs in `bucket` on `server`."""
    return {
        "storage": f"s3://{bucket}/{prefix}",
        "s3_endpoint_url": server.endpoint,
        "s3_region": S3_REGION,
        "s3_access_key_id": S3_ACCESS_KEY,
        "s3_secret_access_key": S3_SECRET_KEY,
    }


def s3_environment(server: S3Server, bucket: str, prefix: str = "fc") -> dict[str, str]:
    """The same, as FILECASK_* variables for a `filecask serve` subprocess."""
    return {f"FILECASK_{k.upper()}": str(v) for k, v in s3_settings(server, bucket, prefix).items()}
