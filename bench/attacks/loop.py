"""Issue 14 §3: requests that used to stall the event loop, and how long they stall it.

    python -m bench.attacks.loop                 # starts its own `filecask serve`
    python -m bench.attacks.loop --port P --user admin:PASSWORD

Each attack runs (repeated for at least ATTACK_SECONDS) while another process
(tests/e2e/lag.py's `HealthProbe`) asks `GET /healthz` back to back; the stall is the
slowest of those answers. Printed:
- a multipart upload with 20,000 and 40,000 one-byte fields before its `file` part: the
  status, the time of one such request and the stall;
- a 60 KiB field with a 60 KiB file (chunked) from a user with 100 KiB of quota: the
  status (the field used to be free);
- a multipart body cut before its closing boundary: the status and whether it was stored;
- a bundle of 11,500 entries (one tiny file under 11,500 paths): the stall while it is
  made (POST /archives), an anonymous HEAD (the first and the next ones) and GET of its
  ZIP, then 8 anonymous HEAD loops and 4 anonymous GET loops side by side for a few
  seconds each: requests answered and /healthz p50/p90/max meanwhile;
- `filecask_event_loop_lag_seconds` at the end, where the server has it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.e2e.lag import HealthProbe

from bench.servers import HOST, filecask

BOUNDARY = "loopattackboundary"
BUNDLE_ENTRIES = 11_500
"""About the most a 1 MiB JSON manifest holds with 5-character paths."""
HEAD_LOOPS = 8
GET_LOOPS = 4
LOOP_SECONDS = 5.0
ATTACK_SECONDS = 1.0


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(user.encode()).decode()


def request(
    port: int,
    method: str,
    path: str,
    *,
    user: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 300,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    sent = dict(headers or {})
    if user:
        sent["Authorization"] = basic(user)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def many_fields_body(fields: int, file_content: bytes) -> bytes:
    """`fields` one-byte form fields, then the `file` part, then the closing boundary."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'.encode()
        for i in range(fields)
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"'
        "\r\n\r\n".encode()
        + file_content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return b"".join(parts)


def raw_post(port: int, user: str, body: bytes, *, chunked: bool = False) -> int:
    """POST /files with a multipart body over a plain socket, with its length or chunked.
    Returns the status (0: no answer)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (
        f"POST /files HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {basic(user)}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"{framing}\r\nConnection: close\r\n\r\n"
    ).encode()
    if chunked:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection((HOST, port), timeout=300) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer else 0


@contextlib.contextmanager
def probed(port: int) -> Iterator[HealthProbe]:
    with HealthProbe(port) as probe:
        yield probe


def stall_of(probe: HealthProbe) -> str:
    if not probe.latencies:
        return "no /healthz answer"
    return (
        f"/healthz max {max(probe.latencies) * 1000:.0f} ms, "
        f"p99 {probe.quantile(0.99) * 1000:.0f} ms over {len(probe.latencies)} requests"
    )


def attack_fields(port: int, user: str, fields: int) -> None:
    body = many_fields_body(fields, secrets.token_bytes(32))
    statuses: list[int] = []
    took: list[float] = []
    with probed(port) as probe:
        until = time.monotonic() + ATTACK_SECONDS
        while not statuses or time.monotonic() < until:
            started = time.perf_counter()
            statuses.append(raw_post(port, user, body))
            took.append(time.perf_counter() - started)
    print(
        f"multipart, {fields:,} fields ({len(body) / 1e6:.1f} MB): {sorted(set(statuses))},"
        f" {statistics.median(took):.2f} s each ({len(statuses)} sent); stall:"
        f" {stall_of(probe)}"
    )


def attack_field_quota(port: int, user: str) -> None:
    name, password = f"quota{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    created = {"name": name, "password": password, "quota": 100 << 10}
    status, answer = request(
        port,
        "POST",
        "/users",
        user=user,
        body=json.dumps(created).encode(),
        headers={"Content-Type": "application/json"},
    )
    if status != 201:
        raise SystemExit(f"POST /users failed: {status} {answer[:200]!r}")
    field = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="comment"\r\n\r\n'.encode()
        + b"c" * (60 << 10)
        + b"\r\n"
    )
    body = field + many_fields_body(0, secrets.token_bytes(60 << 10))
    status = raw_post(port, f"{name}:{password}", body, chunked=True)
    print(f"60 KiB field + 60 KiB file, 100 KiB quota, chunked: {status}")


def stored(port: int, user: str, content: bytes) -> bool:
    digest = hashlib.sha256(content).hexdigest()
    status, _ = request(port, "HEAD", f"/files/{digest}", user=user)
    return status == 200


def attack_unterminated(port: int, user: str) -> None:
    content = secrets.token_bytes(1000)
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"'
        "\r\n\r\n".encode()
        + content
    )
    status = raw_post(port, user, body)
    print(
        f"multipart without its closing boundary: {status}; stored:"
        f" {'yes' if stored(port, user, content) else 'no'}"
    )


def make_bundle(port: int, user: str, entries: int) -> str:
    content = secrets.token_bytes(16)
    status, answer = request(port, "POST", "/files", user=user, body=content)
    if status not in (200, 201):
        raise SystemExit(f"upload failed: {status} {answer[:200]!r}")
    digest = json.loads(answer)["hash"]
    files = [{"hash": digest, "path": f"{i:05d}"} for i in range(entries)]
    manifest = json.dumps({"name": "big.zip", "files": files}, separators=(",", ":")).encode()
    status, answer = request(
        port,
        "POST",
        "/archives",
        user=user,
        body=manifest,
        headers={"Content-Type": "application/json"},
    )
    if status not in (200, 201):
        raise SystemExit(f"POST /archives failed: {status} {answer[:300]!r}")
    return str(json.loads(answer)["id"])


def timed(action: Callable[[], Any], times: int) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def attack_bundle(port: int, user: str, entries: int) -> None:
    with probed(port) as probe:
        started = time.perf_counter()
        bundle = make_bundle(port, user, entries)
        made = time.perf_counter() - started
    print(f"POST /archives of {entries:,} entries: {made:.2f} s; stall: {stall_of(probe)}")
    path = f"/archive/{bundle}/"
    first = timed(lambda: request(port, "HEAD", path), 1)
    head = timed(lambda: request(port, "HEAD", path), 5)
    get = timed(lambda: request(port, "GET", path), 3)
    print(
        f"bundle of {entries:,} entries: first HEAD {first * 1000:.0f} ms, then HEAD"
        f" {head * 1000:.0f} ms, GET {get * 1000:.0f} ms"
    )
    in_loops(port, "HEAD", path, HEAD_LOOPS)
    in_loops(port, "GET", path, GET_LOOPS)


def in_loops(port: int, method: str, path: str, loops: int) -> None:
    stop = threading.Event()
    counts = [0] * loops

    def loop(index: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while not stop.is_set():
            conn.request(method, path)
            conn.getresponse().read()
            counts[index] += 1
        conn.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(loops)]
    with probed(port) as probe:
        for thread in threads:
            thread.start()
        time.sleep(LOOP_SECONDS)
        stop.set()
        for thread in threads:
            thread.join()
    print(
        f"{loops} anonymous {method} loops for {LOOP_SECONDS:.0f} s: {sum(counts):,} answered;"
        f" /healthz p50 {probe.quantile(0.5) * 1000:.0f} ms, p90 {probe.quantile(0.9) * 1000:.0f}"
        f" ms, max {max(probe.latencies) * 1000:.0f} ms"
    )


def lag_gauge(port: int, user: str) -> None:
    _, body = request(port, "GET", "/metrics", user=user)
    lines = [
        line
        for line in body.decode().splitlines()
        if line.startswith("filecask_event_loop_lag_seconds")
    ]
    print("/metrics: " + ("; ".join(lines) if lines else "no filecask_event_loop_lag_seconds"))


def run(port: int, user: str) -> None:
    for fields in (20_000, 40_000):
        attack_fields(port, user, fields)
    attack_field_quota(port, user)
    attack_unterminated(port, user)
    attack_bundle(port, user, BUNDLE_ENTRIES)
    lag_gauge(port, user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks.loop", description=__doc__)
    parser.add_argument("--port", type=int, help="attack this server instead of starting one")
    parser.add_argument("--user", default=None, help="NAME:PASSWORD of a user (with --port)")
    args = parser.parse_args(argv)
    if args.port is not None:
        if not args.user:
            parser.error("--port needs --user NAME:PASSWORD")
        run(args.port, args.user)
        return 0
    password = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="filecask-loop-") as tmp:
        base = Path(tmp)
        with filecask(
            base / "run", base / "data", password, args=("--max-bundle-entries", "12000")
        ) as server:
            print(f"filecask serve on port {server.port} (pid {server.pid})", file=sys.stderr)
            run(server.port, f"admin:{password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
