"""Measure `/healthz` latency from its own process while an attack runs.

Run as a script by `HealthProbe` (tests/e2e/lag.py): it asks `GET /healthz` on one
kept-alive connection, back to back with `interval` seconds between answers, until its
standard input closes, then prints every latency (seconds) as one JSON list (after a
`ready` line once the first answer is in). A separate process keeps the attack's own CPU
and GIL out of the figures; a request that fails or is refused counts as the time it
took, so a dropped connection is not a fast answer.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time


def probe(port: int, interval: float, stop: threading.Event) -> list[float]:
    """Latencies until `stop`; prints `ready` once the first answer is in."""
    latencies: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        elapsed = time.perf_counter() - started
        latencies.append(elapsed if ok else max(elapsed, 10.0))
        if len(latencies) == 1:
            print("ready", flush=True)
        if not ok:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stop.wait(interval)
    conn.close()
    return latencies


def main() -> None:
    port, interval = int(sys.argv[1]), float(sys.argv[2])
    stop = threading.Event()
    result: list[list[float]] = []
    worker = threading.Thread(target=lambda: result.append(probe(port, interval, stop)))
    worker.start()
    sys.stdin.read()
    stop.set()
    worker.join()
    print(json.dumps(result[0]))


if __name__ == "__main__":
    main()
