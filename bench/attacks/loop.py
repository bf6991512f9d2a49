"""Issue 14 §3: requests that used to stall the event loop, and how long they stall it.

    python -m bench.attacks.loop                 # starts its own `filecask serve`
    python -m bench.attacks.loop --port P --user admin:PASSWORD

Each attack runs while another process (tests/e2e/lag.py's `HealthProbe`) asks
`GET /healthz` back to back; the stall is the slowest of those answers. Printed:
- a multipart upload with 20,000 and 40,000 small fields before its `file` part: the
  status, the request's own time and the stall;
- a bundle of 11,500 entries (one tiny file under 11,500 paths): one anonymous HEAD and one
  GET of its ZIP (median of a few), then 8 anonymous HEAD loops side by side for a few
  seconds: HEADs answered and /healthz p50/p90/max meanwhile;
- a multipart body cut before its closing boundary: the status and whether it was stored.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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
HEAD_LOOP_SECONDS = 5.0


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


def raw_post(port: int, user: str, body: bytes, *, shut: bool = False) -> int:
    """POST /files with a multipart body over a plain socket; `shut`: half-close after the
    body (a client that ends its body short). Returns the status (0: no answer)."""
    head = (
        f"POST /files HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {basic(user)}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, port), timeout=300) as sock:
        sock.sendall(head + body)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
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
    with probed(port) as probe:
        started = time.perf_counter()
        status = raw_post(port, user, body)
        took = time.perf_counter() - started
    print(
        f"multipart, {fields:,} fields ({len(body) / 1e6:.1f} MB): {status} in {took:.2f} s;"
        f" stall: {stall_of(probe)}"
    )


def stored(port: int, user: str, content: bytes) -> bool:
    import hashlib

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
    bundle = make_bundle(port, user, entries)
    path = f"/archive/{bundle}/"
    head = timed(lambda: request(port, "HEAD", path), 5)
    get = timed(lambda: request(port, "GET", path), 3)
    print(f"bundle of {entries:,} entries: HEAD {head * 1000:.0f} ms, GET {get * 1000:.0f} ms")
    stop = threading.Event()
    counts = [0] * HEAD_LOOPS

    def loop(index: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while not stop.is_set():
            conn.request("HEAD", path)
            conn.getresponse().read()
            counts[index] += 1
        conn.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(HEAD_LOOPS)]
    with probed(port) as probe:
        for thread in threads:
            thread.start()
        time.sleep(HEAD_LOOP_SECONDS)
        stop.set()
        for thread in threads:
            thread.join()
    print(
        f"{HEAD_LOOPS} anonymous HEAD loops for {HEAD_LOOP_SECONDS:.0f} s: {sum(counts):,} HEADs;"
        f" /healthz p50 {probe.quantile(0.5) * 1000:.0f} ms, p90 {probe.quantile(0.9) * 1000:.0f}"
        f" ms, max {max(probe.latencies) * 1000:.0f} ms"
    )


def run(port: int, user: str) -> None:
    for fields in (20_000, 40_000):
        attack_fields(port, user, fields)
    attack_unterminated(port, user)
    attack_bundle(port, user, BUNDLE_ENTRIES)


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
        with filecask(base / "run", base / "data", password) as server:
            print(f"filecask serve on port {server.port} (pid {server.pid})", file=sys.stderr)
            run(server.port, f"admin:{password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
