"""Issue 14 §4: the memory hostile connections hold in the server, before and after.

    python -m bench.attacks.conn                 # starts its own `filecask serve`
    python -m bench.attacks.conn --port P --user admin:PASSWORD

Printed, each with the server's RSS over idle (psutil, the process listening on the
port): while the attack holds, at its peak, and 5 s after the attackers are gone. Each
attack has a fresh server of its own, unless `--port` names one:
- 300 and 1,000 anonymous connections (100 per loopback address) sending the issue's
  request head, 120 header lines of 8,000 bytes and no final CRLF, a line per round
  across all of them: how many were cut (431), and `/healthz` p99/max from another
  process (tests/e2e/lag.py's `HealthProbe`) meanwhile;
- 100 signed-in uploads (raw `POST /files`, 8 MiB declared) trickling 1 MiB - 1 in
  8 KiB pieces, then stalling (held: 5 s into the stall).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import secrets
import selectors
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from tests.e2e.lag import HealthProbe

from bench.servers import HOST, RssSampler, filecask, raise_fd_limit

MiB = 1 << 20
LINES = 120
LINE = 8000
UPLOADS = 100
UPLOAD_SENT = (1 << 20) - 1
PIECE = 8192
AFTER = 5.0
"""Seconds after the attackers leave before the last reading."""
HOLD = 5.0
"""Seconds the stalled uploads stand still before their memory is read."""


@dataclass
class Figures:
    attack: str
    held: float
    peak: float
    after: float
    note: str


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def settled(pid: int, within: float = 20) -> int:
    """RSS once two readings 0.3 s apart are within 1 MiB (the server took in all)."""
    deadline = time.monotonic() + within
    last = rss(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = rss(pid)
        if abs(now - last) < MiB:
            return now
        last = now
    return last


def listener_pid(port: int) -> int:
    for conn in psutil.net_connections("tcp"):
        address = conn.laddr
        listening = conn.status == psutil.CONN_LISTEN and conn.pid
        if listening and isinstance(address, tuple) and address and address[1] == port:
            return int(conn.pid or 0)
    raise SystemExit(f"no process of this user listens on port {port}")


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((HOST, port))
    return sock


def header_line(number: int) -> bytes:
    return b"X-Pad-%03d: " % number + b"a" * LINE + b"\r\n"


def hostile_heads(port: int, pid: int, count: int) -> Figures:
    """`count` connections trickle the issue's head, a line per round across them all."""
    idle = settled(pid)
    socks = [connect_from(f"127.0.0.{10 + n // 100}", port) for n in range(count)]
    selector = selectors.DefaultSelector()
    answers = dict.fromkeys(socks, b"")
    live = set(socks)
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)

    def collect(timeout: float) -> None:
        for key, _ in selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            answers[sock] += chunk
            if not chunk:
                selector.unregister(sock)
                live.discard(sock)

    with HealthProbe(port) as probe, RssSampler(pid, interval=0.05) as sampler:
        for number in range(-1, LINES):
            data = b"GET / HTTP/1.1\r\nHost: x\r\n" if number < 0 else header_line(number)
            for index, sock in enumerate(list(live)):
                sent = 0
                while sock in live and sent < len(data):
                    try:
                        sent += sock.send(data[sent:])
                    except BlockingIOError:
                        collect(0.01)
                    except OSError:
                        selector.unregister(sock)
                        live.discard(sock)
                if index % 100 == 99:  # a trickle: 100 connections per 10 ms
                    collect(0)
                    time.sleep(0.01)
            collect(0)
            if not live:
                break
        held = settled(pid) - idle
        cut = sum(raw.startswith(b"HTTP/1.1 431") for raw in answers.values())
        if "DEBUG_CONN" in os.environ:
            import collections

            print(collections.Counter(raw[:30] for raw in answers.values()), file=sys.stderr)
        for sock in socks:
            sock.close()
        selector.close()
    time.sleep(AFTER)
    after = rss(pid) - idle
    p99, worst = probe.quantile(0.99) * 1000, max(probe.latencies) * 1000
    lag = f"/healthz p99 {p99:.0f} ms, max {worst:.0f} ms"
    return Figures(
        f"{count} hostile heads", held, sampler.peak - idle, after, f"{cut} cut (431); {lag}"
    )


def trickled_uploads(port: int, pid: int, user: str) -> Figures:
    """100 signed-in raw uploads trickle 1 MiB - 1 each, then stall."""
    auth = "Basic " + base64.b64encode(user.encode()).decode()
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    # What a first upload starts (executor threads, the credentials cache) is not the
    # attack's: one upload, then the measure.
    conn.request(
        "POST", "/files?name=warm", body=os.urandom(3 * MiB), headers={"Authorization": auth}
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status not in (200, 201):
        raise SystemExit(f"POST /files as {user.partition(':')[0]}: {response.status}")
    idle = settled(pid)
    socks = []
    for _ in range(UPLOADS):
        sock = connect_from("127.0.0.5", port)
        sock.sendall(
            f"POST /files?name=trickle HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            f"Content-Length: {8 * MiB}\r\n\r\n".encode()
        )
        socks.append(sock)
    data = os.urandom(UPLOAD_SENT)
    with RssSampler(pid, interval=0.05) as sampler:
        for at in range(0, UPLOAD_SENT, PIECE):
            for sock in socks:
                sock.sendall(data[at : at + PIECE])
            time.sleep(0.002)
        # Held: once the upload buffers that filled while the server lagged are free
        # and (where the server gives memory back) given back.
        time.sleep(HOLD)
        held = settled(pid) - idle
        for sock in socks:
            sock.close()
    time.sleep(AFTER)
    after = rss(pid) - idle
    return Figures(
        f"{UPLOADS} trickled uploads", held, sampler.peak - idle, after, "1 MiB - 1 each, stalled"
    )


@contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[int, int, str]]:
    if args.port:
        if not args.user:
            raise SystemExit("--port needs --user NAME:PASSWORD (a user who may upload)")
        yield args.port, listener_pid(args.port), args.user
        return
    password = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="bench-conn-") as scratch:
        base = Path(scratch)
        with filecask(base / "run", base / "data", password) as server:
            yield server.port, server.pid, server.user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="attack a running server on this port")
    parser.add_argument("--user", help="NAME:PASSWORD of a user who may upload (with --port)")
    args = parser.parse_args()
    raise_fd_limit()
    rows = []
    # Each on a server of its own (unless given one): memory one attack left behind
    # would be reused by the next, which would then seem to cost nothing.
    for count in (300, 1000):
        with target(args) as (port, pid, _user):
            rows.append(hostile_heads(port, pid, count))
        print(f"done: {rows[-1].attack}", file=sys.stderr)
    with target(args) as (port, pid, user):
        rows.append(trickled_uploads(port, pid, user))
    print(f"{'attack':<22} {'held MiB':>9} {'peak MiB':>9} {'after MiB':>10}  note")
    for row in rows:
        print(
            f"{row.attack:<22} {row.held / MiB:>9.1f} {row.peak / MiB:>9.1f}"
            f" {row.after / MiB:>10.1f}  {row.note}"
        )


if __name__ == "__main__":
    main()
