"""`serve --workers 2`: a scrape landing on either worker reports the totals of both."""

from __future__ import annotations

import http.client
import time

import psutil
from prometheus_client.parser import text_string_to_metric_families

from filecask.http.metrics import FLUSH_INTERVAL
from tests.e2e.conftest import HOST, Server, StartServer

CONNECTIONS = 16
TOKEN = "e2e-metrics-scraper-token-0123456789"
SCRAPER = {"FILECASK_METRICS_TOKEN": TOKEN}
"""/metrics is not public: the scrapes here send this bearer token, as Prometheus would."""


def readyz_requests(server: Server) -> float:
    """GET /readyz 200s, from a scrape on a new connection (any worker may answer)."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        conn.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "filecask_http_requests_total"
                and labels.get("route") == "/readyz"
                and labels.get("status") == "200"
                and labels.get("method") == "GET"
            ):
                return sample.value
    return 0.0


def worker_of(workers: list[psutil.Process], client: tuple[str, int]) -> int:
    """The worker holding the server end of the client's connection."""
    for worker in workers:
        for c in worker.net_connections():
            if c.raddr and (c.raddr.ip, c.raddr.port) == tuple(client):
                return worker.pid
    raise AssertionError(f"no worker holds the connection from {client}")


def wait_for_count(server: Server, wanted: float) -> None:
    """Until a scrape shows `wanted` (every worker flushed: FLUSH_INTERVAL on a quiet
    machine; polled, so a loaded one is slower, not wrong), failing after 10 intervals."""
    deadline = time.monotonic() + 10 * FLUSH_INTERVAL
    while (seen := readyz_requests(server)) != wanted:
        assert seen < wanted, f"{seen} /readyz requests counted, {wanted} made"
        assert time.monotonic() < deadline, f"{seen} /readyz requests counted, {wanted} made"
        time.sleep(0.1)


def test_metrics_are_totals_over_every_worker(start_server: StartServer) -> None:
    server = start_server("--workers", "2", "--access-log", "false", env=SCRAPER)
    workers = psutil.Process(server.pid).children()
    assert len(workers) == 2
    served: dict[int, int] = {w.pid: 0 for w in workers}
    made = 0
    deadline = time.monotonic() + 20
    # New connections until the kernel has given both workers some (SO_REUSEPORT).
    while min(served.values()) < 3:
        assert time.monotonic() < deadline, f"connections never reached both workers: {served}"
        conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
        try:
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            owner = worker_of(workers, conn.sock.getsockname())
        finally:
            conn.close()
        served[owner] += 1
        made += 1
    # A worker hands its tallies to the shared files every FLUSH_INTERVAL seconds (and
    # when it is scraped itself): after that, every scrape sees the total.
    wait_for_count(server, made)
    # Several scrapes, on new connections, so both workers answer some of them.
    for _ in range(CONNECTIONS):
        assert readyz_requests(server) == made
    # Emptied at the master's start: nothing but this run's per-process files.
    files = sorted(p.name for p in (server.data_dir / "metrics").iterdir())
    pids = {int(name.rsplit("_", 1)[1].removesuffix(".db")) for name in files}
    assert pids <= set(served), files


def test_a_previous_run_s_metric_files_are_removed_at_start(start_server: StartServer) -> None:
    first = start_server("--workers", "2", env=SCRAPER)
    assert readyz_requests(first) == 0
    conn = http.client.HTTPConnection(HOST, first.port, timeout=10)
    conn.request("GET", "/readyz")
    conn.getresponse().read()
    conn.close()
    wait_for_count(first, 1)  # the scrape may land on the other worker: once it flushed
    first.stop()
    second = start_server("--workers", "2", data_dir=first.data_dir, env=SCRAPER)
    assert readyz_requests(second) == 0
