"""Issue 14's bad input, replayed: the status of each request and the errors it logged.

    python -m bench.attacks.input                  # starts its own `filecask serve`
    python -m bench.attacks.input --port 8080 --password ADMIN_PASSWORD --log serve.log

Each request of the issue (section 5, and section 3's JSON bodies) is sent once, on its
own connection, byte for byte; the table shows the status, the time to the end of the
connection, and the ERROR lines and tracebacks the server wrote meanwhile (read from its
log: the one of the server started here, or `--log`). The rule is a 4xx and no traceback
for every row. Rows of other parts of issue 14 are replayed too (the owner column), so
one run shows the whole section. A final row asks `/metrics` anonymously (section 7).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.servers import HOST, filecask

USER, USER_PASSWORD = "mallory", "mallory-password-1"
HASH = "a" * 64


@dataclass(frozen=True)
class Attack:
    owner: str
    what: str
    request: bytes


@dataclass(frozen=True)
class Outcome:
    status: str
    seconds: float
    errors: int
    tracebacks: int


def basic(name: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{name}:{password}".encode())


def http(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    lines = [method + b" " + target + b" " + version, b"Host: " + HOST.encode()]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def attacks(admin: bytes) -> list[Attack]:
    user = basic(USER, USER_PASSWORD)
    as_user = [(b"Authorization", user), (b"Content-Type", b"application/json")]
    as_admin = [(b"Authorization", admin), (b"Content-Type", b"application/json")]
    entry = b'{"path": "%s", "hash": "' + HASH.encode() + b'"}'
    tus = [(b"Authorization", user), (b"Tus-Resumable", b"1.0.0"), (b"Upload-Length", b"10")]
    form = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n\r\n'
        + os.urandom(16).hex().encode()
    )
    return [
        Attack("input", "JSON nested 50,000 deep", http(b"POST", b"/archives", as_user,
               b"[" * 50_000 + b"]" * 50_000)),
        Attack("input", "JSON 5,000-digit number", http(b"POST", b"/users", as_admin,
               b'{"name": "bob", "quota": ' + b"9" * 5000 + b"}")),
        Attack("input", "JSON of 500,000 values (1 MiB)", http(b"POST", b"/archives", as_user,
               b'{"files": [' + b"0," * 500_000 + b"0]}")),
        Attack("input", "JSON 1e999 quota", http(b"PATCH", b"/users/" + USER.encode(), as_admin,
               b'{"quota": 1e999}')),
        Attack("input", "Content-Encoding: gzip, POST /me", http(b"POST", b"/me",
               [(b"Content-Encoding", b"gzip")], b"not gzip")),
        Attack("input", "Content-Encoding: deflate, PUT /healthz", http(b"PUT", b"/healthz",
               [(b"Content-Encoding", b"deflate")], b"\x78\x9cnot deflate")),
        Attack("input", "lone surrogate, bundle name", http(b"POST", b"/archives", as_user,
               b'{"name": "\\udcff.zip", "files": [' + entry % b"a" + b"]}")),
        Attack("input", "lone surrogate, bundle path", http(b"POST", b"/archives", as_user,
               b'{"name": "a.zip", "files": [' + entry % b"\\udcff" + b"]}")),
        Attack("input", "lone surrogate, user name", http(b"POST", b"/users", as_admin,
               b'{"name": "\\udcff"}')),
        Attack("input", "lone surrogate, password", http(b"POST", b"/users", as_admin,
               b'{"name": "eve", "password": "\\udcffpassword"}')),
        Attack("input", "non-ASCII Upload-Metadata", http(b"POST", b"/uploads/",
               [*tus, (b"Upload-Metadata", b"filename \xff")])),
        Attack("input", "non-ASCII Expect", http(b"POST", b"/me",
               [(b"Expect", b"\xff\xfe")], b"abc")),
        Attack("sign-in", "Authorization: Basic + non-ASCII", http(b"GET", b"/me",
               [(b"Authorization", b"Basic \xff\xfe")])),
        Attack("loop", "multipart without closing boundary", http(b"POST", b"/files",
               [(b"Authorization", user),
                (b"Content-Type", b"multipart/form-data; boundary=b")], form)),
        Attack("connections", "HTTP/0.9 request line", b"GET /healthz\r\n\r\n"),
        Attack("connections", "HTTP/2.0 request line", http(b"GET", b"/healthz", [],
               version=b"HTTP/2.0")),
        Attack("quota", 'quota "\u0661M"', http(b"PATCH", b"/users/" + USER.encode(), as_admin,
               '{"quota": "\u0661M"}'.encode())),
        Attack("input", "anonymous GET /metrics", http(b"GET", b"/metrics", [])),
    ]  # fmt: skip


def send(port: int, request: bytes) -> tuple[str, float]:
    """The status (or what came back instead) and the seconds to the end of the connection."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=30) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    seconds = time.perf_counter() - started
    first = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split()
    if len(parts) >= 2 and parts[0].startswith("HTTP/"):
        return f"{parts[1]} ({parts[0]})" if parts[0] != "HTTP/1.1" else parts[1], seconds
    return ("closed" if not answer else repr(answer[:12])), seconds


def log_size(log: Path | None) -> int:
    return log.stat().st_size if log is not None else 0


def logged(log: Path | None, offset: int) -> tuple[int, int]:
    """ERROR lines and tracebacks written to `log` past `offset`."""
    if log is None:
        return -1, -1
    with log.open("rb") as file:
        file.seek(offset)
        text = file.read().decode("utf-8", errors="replace")
    return text.count(" ERROR "), text.count("Traceback (most recent call last)")


def replay(port: int, admin: bytes, log: Path | None) -> list[tuple[Attack, Outcome]]:
    # An ordinary user: the attacker of the issue.
    user = json.dumps({"name": USER, "password": USER_PASSWORD}).encode()
    status, _ = send(
        port,
        http(
            b"POST",
            b"/users",
            [(b"Authorization", admin), (b"Content-Type", b"application/json")],
            user,
        ),
    )
    if status not in ("201", "409"):
        sys.exit(f"cannot create the user {USER!r}: {status}")
    # Sign both in once: the timings are then the requests', not a first password hash's.
    for credentials in (basic(USER, USER_PASSWORD), admin):
        send(port, http(b"GET", b"/me", [(b"Authorization", credentials)]))
    results = []
    for attack in attacks(admin):
        offset = log_size(log)
        status, seconds = send(port, attack.request)
        time.sleep(0.05)  # a log line written just after the connection closed
        errors, tracebacks = logged(log, offset)
        results.append((attack, Outcome(status, seconds, errors, tracebacks)))
    return results


def print_table(results: list[tuple[Attack, Outcome]]) -> None:
    print(f"{'owner':<12} {'request':<38} {'status':>14} {'ms':>8} {'ERROR':>6} {'tracebacks':>10}")
    for attack, outcome in results:
        errors = "n/a" if outcome.errors < 0 else str(outcome.errors)
        tracebacks = "n/a" if outcome.tracebacks < 0 else str(outcome.tracebacks)
        print(
            f"{attack.owner:<12} {attack.what:<38} {outcome.status:>14}"
            f" {outcome.seconds * 1000:>8.1f} {errors:>6} {tracebacks:>10}"
        )
    # 505 is the answer issue 14 asks for an HTTP/0.9 or HTTP/2.0 request line: not a fault.
    fives = sum(o.status.startswith("5") and o.status != "505" for _, o in results)
    logged_total = sum(max(o.tracebacks, 0) for _, o in results)
    print(
        f"\n{fives} answers 5xx other than 505, {logged_total} tracebacks logged,"
        f" {len(results)} requests"
    )


@contextlib.contextmanager
def own_server() -> Iterator[tuple[int, str, Path]]:
    with tempfile.TemporaryDirectory(prefix="filecask-attack-input-") as tmp:
        password = secrets.token_urlsafe(12)
        with filecask(Path(tmp) / "run", Path(tmp) / "data", password) as server:
            yield server.port, password, server.log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--port", type=int, help="a running server (default: start one)")
    parser.add_argument("--password", help="its admin password (or FILECASK_ADMIN_PASSWORD)")
    parser.add_argument("--log", type=Path, help="its log file, to count errors and tracebacks")
    args = parser.parse_args()
    if args.port is None:
        with own_server() as (port, password, log):
            print_table(replay(port, basic("admin", password), log))
        return
    given: str | None = args.password or os.environ.get("FILECASK_ADMIN_PASSWORD")
    if not given:
        parser.error("--password (or FILECASK_ADMIN_PASSWORD) is needed with --port")
    print_table(replay(args.port, basic("admin", given), args.log))


if __name__ == "__main__":
    main()
