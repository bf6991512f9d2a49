"""Prometheus metrics at `GET /metrics`: requests, latency, bytes, work in flight, store size.

Nothing in it names a user, a file or a URL, but its totals (uploads, 401s and 429s, the
store's size) tell an attacker how a server is used and whether a guessing run is being
throttled, so it is not public by default: a scraper sends `Authorization: Bearer <token>`
(`FILECASK_METRICS_TOKEN` or `--metrics-token-file`, what Prometheus's `authorization`
block sends), and an administrator may sign in with Basic credentials. `--metrics-public true`
opens it to anyone, for a scraper that can do neither (put it behind the proxy's access
rules then). The `route` label is the route's template (`/files/{hash}`), never the raw
path, so a client cannot grow the number of series by asking for made-up URLs.

One process (`serve`, the tests) keeps its metrics in memory, in a registry of the app's
own. With `serve --workers N` each worker is a separate process and a scrape lands on
whichever worker the kernel picks, so the workers use prometheus-client's multiprocess
mode: every counter, histogram and gauge lives in a small mmap'ed file per process under
`PROMETHEUS_MULTIPROC_DIR` (`<data-dir>/metrics/`), and a scrape sums the files of every
worker, live or dead. The master empties that directory before it forks
(`use_multiprocess_dir`), as prometheus-client requires.

Requests are tallied in plain per-process counters (a dict increment and a bisect per
request) and moved into the prometheus-client metrics in batches: when this process is
scraped, and every `FLUSH_INTERVAL` seconds for the other workers' scrapes. Recording
through prometheus-client on every request (label lookups, per-value locks, the histogram's
bucket search) cost about a quarter of the 4 KiB download rate (see the README).

`filecask_event_loop_lag_seconds` says whether one request held the event loop (every other
client waits meanwhile): a timer due every `LAG_INTERVAL` seconds notes how late it fires,
and the gauge is the largest lateness of the last `LAG_WINDOW` seconds, in each process
(with workers, the largest of the live workers'). A window rather than "since the last
scrape": scrapes from several Prometheus servers, or landing on any worker, would
otherwise each see part of the picture; a minute covers any usual scrape interval, so a
stall shows in at least one scrape.

The store's size and file count come from the metadata store (a count and a sum over the
blob rows), computed when scraped and kept for `STORE_STATS_TTL` seconds, so a flood of
scrapes costs one query every few seconds. They describe the shared store, not a worker,
so they are never written to the per-process files.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from filecask.http import prometheus_internals as internals

__all__ = [
    "METRICS",
    "MULTIPROC_ENV",
    "Metrics",
    "install_metrics",
    "metrics_middleware",
    "use_multiprocess_dir",
]

log = logging.getLogger("filecask.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STORE_STATS_TTL = 5.0
"""Seconds the store's size and file count are reused before the next scrape asks again."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Up to five minutes: big downloads, uploads and archives take far longer than an API call."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods kept as label values; anything else is `other` (bounded label sets)."""
UNMATCHED = "unmatched"
"""The route label of a request no route matched (404s for unknown paths, 405s)."""
UPLOAD_METHODS = frozenset({"POST", "PUT", "PATCH"})
UPLOAD_ROUTE_PREFIXES = ("/files", "/uploads")
"""Uploads are bodies sent to these routes: `/files`, `/files/{hash}`, resumable uploads."""
FLUSH_INTERVAL = 1.0
"""Seconds a worker's tallies may wait before another worker's scrape sees them."""
LAG_INTERVAL = 0.1
"""Seconds between two ticks of the event-loop lag timer."""
LAG_WINDOW = 60.0
"""Seconds over which `filecask_event_loop_lag_seconds` is the largest lag seen."""
CLIENT_GONE = "499"
"""Status label of a request whose client left before its response was complete (nginx's)."""

_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


class StoreStats(Collector):
    """`filecask_store_bytes` and `filecask_store_files`, from the blob rows, cached."""

    def __init__(self, ttl: float = STORE_STATS_TTL) -> None:
        self.ttl = ttl
        self.files: int | None = None
        self.bytes: int | None = None
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self, query: Callable[[], Awaitable[tuple[int, int]]]) -> None:
        """Run `query` unless the figures are fresh; concurrent scrapes share one run."""
        if time.monotonic() - self._at < self.ttl:
            return
        async with self._lock:
            if time.monotonic() - self._at < self.ttl:  # another scrape just did it
                return
            try:
                self.files, self.bytes = await query()
            except Exception as exc:  # the rest of the scrape is still worth having
                log.warning("cannot count the store for /metrics: %s", exc)
            self._at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        if self.files is None or self.bytes is None:
            return
        yield GaugeMetricFamily(
            "filecask_store_bytes", "Bytes of content stored (each blob once).", self.bytes
        )
        yield GaugeMetricFamily("filecask_store_files", "Blobs stored.", self.files)


class WindowMax:
    """The largest value recorded over the last `window` seconds (a monotonic deque:
    O(1) amortised per value, at most one entry per value still in the window)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._values: deque[tuple[float, float]] = deque()

    def record(self, now: float, value: float) -> float:
        """Add `value` seen at `now` (monotonic seconds, never decreasing); the maximum."""
        values = self._values
        while values and values[-1][1] <= value:
            values.pop()
        values.append((now, value))
        while values[0][0] <= now - self.window:
            values.popleft()
        return values[0][1]


@dataclass(slots=True)
class _Latencies:
    """One route's latency histogram since the last flush: per-bucket counts and a sum."""

    counts: list[int]
    total: float = 0.0


@dataclass(slots=True)
class Tally:
    """What requests did since the last flush, in plain ints: cheap enough to record on
    every request of a 4 KiB download."""

    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)
    latency: dict[tuple[str, str], _Latencies] = field(default_factory=dict)
    received: int = 0
    sent: int = 0

    def record(self, method: str, route: str, status: str, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        latencies = self.latency.get((method, route))
        if latencies is None:
            latencies = self.latency[method, route] = _Latencies([0] * (len(LATENCY_BUCKETS) + 1))
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound
        # >= seconds; past the last bound is +Inf.
        latencies.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latencies.total += seconds


class Metrics:
    """The metrics of one app. In multiprocess mode the values go to this process's files
    (wherever they are registered); otherwise to `registry`, which the app's own."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "filecask_http_requests",
            "HTTP requests answered, by method, route template and status"
            " (499: the client left before the response was complete).",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "filecask_http_request_duration_seconds",
            "Time from the request head to the end of the handler (streamed bodies included).",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.received = Counter(
            "filecask_http_received_bytes",
            "Request body bytes received.",
            registry=registry,
        )
        self.sent = Counter(
            "filecask_http_sent_bytes",
            "Response body bytes sent.",
            registry=registry,
        )
        self.uploads = Gauge(
            "filecask_uploads_in_flight",
            "Uploads being received now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.archives = Gauge(
            "filecask_archives_in_flight",
            "ZIP archives being streamed now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.loop_lag = Gauge(
            "filecask_event_loop_lag_seconds",
            f"Largest delay of the event loop over the last {LAG_WINDOW:g} s: how late a"
            f" timer due every {LAG_INTERVAL:g} s ran (with workers, the worst live worker).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.lag_watch = LagWatch(self.loop_lag)
        self.store = StoreStats()
        if multiprocess_dir is None:
            registry.register(self.store)
        self.tally = Tally()

    def flush(self) -> None:
        """Move the tallies into the prometheus-client metrics (this process's files in
        multiprocess mode) and start new ones."""
        tally, self.tally = self.tally, Tally()
        for request_labels, count in tally.requests.items():
            self.requests.labels(*request_labels).inc(count)
        for route_labels, latencies in tally.latency.items():
            # prometheus-client has no batch observe. tests/http/test_metrics.py checks
            # the exposition against real observations.
            internals.add_to_histogram(
                self.latency.labels(*route_labels), latencies.total, latencies.counts
            )
        if tally.received:
            self.received.inc(tally.received)
        if tally.sent:
            self.sent.inc(tally.sent)

    @classmethod
    def for_this_process(cls) -> Metrics:
        """Multiprocess if prometheus-client writes values to files in this process (it
        decides that from PROMETHEUS_MULTIPROC_DIR), in memory otherwise."""
        shared = internals.multiprocess_values()
        directory = os.environ.get(MULTIPROC_ENV)
        return cls(Path(directory) if shared and directory else None)

    def in_flight(self, method: str, route: str) -> Gauge | None:
        if method in UPLOAD_METHODS and route.startswith(UPLOAD_ROUTE_PREFIXES):
            return self.uploads
        if method == "GET" and route.startswith("/archive/"):
            return self.archives
        return None

    def exposition_registry(self) -> CollectorRegistry:
        """What a scrape reads: every worker's files, or this process's registry."""
        if self.multiprocess_dir is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(self.multiprocess_dir)
        )
        registry.register(self.store)
        return registry


METRICS = web.AppKey("metrics", Metrics)


def install_metrics(app: web.Application) -> None:
    """Give `app` its metrics and the task that flushes the tallies (the `/metrics` route is
    `filecask.api.metrics`);
    the middleware itself goes in the app's list (see `create_app`)."""
    app[METRICS] = Metrics.for_this_process()
    app.cleanup_ctx.append(_flush_periodically)
    # After every cleanup context has started (the stores are open), so startup's own
    # blocking work is not counted as lag.
    app.on_startup.append(_start_lag_watch)
    app.on_cleanup.append(_stop_lag_watch)


async def _flush_periodically(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]

    async def loop() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            metrics.flush()

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    metrics.flush()


class LagWatch:
    """Every LAG_INTERVAL seconds: how late did this timer fire? Anything that holds the
    event loop (a request's CPU work, a blocking call) delays it by as much. Runs from
    the end of the app's startup (opening the stores may block; that is not a request
    stalling the server) to its cleanup."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.gauge.set(0.0)
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        worst = WindowMax(LAG_WINDOW)
        shown = 0.0
        while True:
            due = time.monotonic() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            now = time.monotonic()
            lag = worst.record(now, max(0.0, now - due))
            if lag != shown:
                self.gauge.set(lag)
                shown = lag


async def _start_lag_watch(app: web.Application) -> None:
    app[METRICS].lag_watch.start()


async def _stop_lag_watch(app: web.Application) -> None:
    await app[METRICS].lag_watch.stop()


def route_label(request: web.BaseRequest) -> str:
    """The matched route's template; never the path the client sent."""
    if not isinstance(request, web.Request):
        return UNMATCHED
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Counts and times every request. Outermost, so it sees the status the client gets
    (problem responses included); a streamed body is sent inside the handler, so its time
    and bytes are counted too."""
    metrics = request.app[METRICS]
    method = request.method if request.method in METHODS else "other"
    route = route_label(request)
    gauge = metrics.in_flight(method, route)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    status = "500"
    if gauge is not None:
        gauge.inc()
    try:
        response = await handler(request)
        status = str(response.status)
        return response
    except web.HTTPException as exc:  # redirects and 304s travel as exceptions
        status = str(exc.status)
        raise
    except (ConnectionError, asyncio.CancelledError):
        status = CLIENT_GONE
        raise
    finally:
        if gauge is not None:
            gauge.dec()
        tally = metrics.tally
        tally.record(method, route, status, time.perf_counter() - started)
        tally.received += getattr(request.content, "total_bytes", 0)
        tally.sent += _body_bytes_sent(request, response)


def _body_bytes_sent(request: web.Request, response: web.StreamResponse | None) -> int:
    """Body bytes of the response: exact for a streamed body (the declared length minus
    what the writer still owes, so a download cut short counts what was sent), and the
    body's length for one aiohttp sends right after the middleware returns. A handler that
    failed after it began to stream left no response object: what its writer put out
    counts (headers included, near enough)."""
    if request.method == "HEAD":
        return 0
    if response is None:
        return request.writer.output_size if request.writer is not None else 0
    if not response.prepared:
        return response.content_length or 0
    declared = response.content_length
    owed = request.writer.length
    if declared is not None and owed is not None:
        return max(declared - owed, 0)
    return request.writer.output_size  # chunked: the headers are included, near enough


def forget_dead_workers(directory: Path) -> None:
    """A worker that died (and was restarted under a new pid) would otherwise leave its
    in-flight gauges counted for ever; its counters stay, totals must not drop."""
    for entry in os.scandir(directory):
        match = _GAUGE_FILE.fullmatch(entry.name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                pid = int(match.group(1))
                multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reuses the pid: not our worker
        return False
    return True


def use_multiprocess_dir(directory: Path) -> None:
    """Share metrics between the processes about to be forked, through `directory`.

    Run in the master before any worker starts: a previous run's files are removed (their
    counts would otherwise be added to this run's), PROMETHEUS_MULTIPROC_DIR is set for the
    workers, and prometheus-client, which chose in-memory values when it was imported, is
    told to choose again so the metrics a worker creates write to its own file."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(directory):
        if entry.name.endswith(".db") and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    os.environ[MULTIPROC_ENV] = str(directory)
    internals.choose_value_class_again()
