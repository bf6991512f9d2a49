"""Many small requests with wrk: 4 KiB files, signed-in requests, and `--workers 2`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psutil

from bench import clients, servers
from bench.context import Bench, alternate
from bench.report import Row, Sample, per_s, ratio_row
from bench.servers import Server

WARM_SECONDS = 1.0

Side = Callable[[float], Sample]
"""One side of a comparison: a wrk run of the given seconds."""


def _side(
    bench: Bench, server: Server, path: str, script: Path | None = None, auth: bool = False
) -> Side:
    headers = (f"Authorization: {clients.basic_auth(bench.filecask.user)}",) if auth else ()

    def run(seconds: float) -> Sample:
        url = server.url(path)
        result = clients.wrk(bench.tools["wrk"], url, seconds, script=script, headers=headers)
        return Sample(result.requests_per_s, result.errors)

    return run


def _compare(bench: Bench, name: str, target: float | None, first: Side, second: Side) -> Row:
    """A short untimed run of each side (caches filled, code paths hot, so the first pair
    does not measure a cold start the others never see), then the alternating pairs."""
    first(WARM_SECONDS)
    second(WARM_SECONDS)
    seconds = bench.sizes.wrk_seconds
    pairs = alternate(bench.pairs, lambda: first(seconds), lambda: second(seconds))
    label = f"{name}, wrk -t{clients.WRK_THREADS} -c{clients.WRK_CONNECTIONS} -d{seconds:g}s"
    return ratio_row(label, [(a, b) for a, b in pairs], per_s, target, quick=bench.quick)


def small(bench: Bench) -> list[Row]:
    """4 KiB files over many distinct hashes, one filecask worker vs one nginx worker."""
    fc_script, ng_script = bench.small_script(False), bench.small_script(True)
    name = f"small: {len(bench.small_blobs)} x 4 KiB files (vs nginx)"
    fc = _side(bench, bench.filecask, "/", fc_script)
    nginx = _side(bench, bench.nginx, "/", ng_script)
    rows = [_compare(bench, name, 0.3, fc, nginx)]
    with servers.ceiling(bench.tmp / "run") as bare:
        label = "small: bare aiohttp handler, same paths (vs nginx): the framework's ceiling"
        rows.append(_compare(bench, label, None, _side(bench, bare, "/", fc_script), nginx))
    return rows


def me(bench: Bench) -> list[Row]:
    """Signed-in `GET /me` vs `GET /healthz`: what authentication (and its cache) costs."""
    signed_in = _side(bench, bench.filecask, "/me", auth=True)
    health = _side(bench, bench.filecask, "/healthz")
    return [_compare(bench, "me: signed-in GET /me (vs GET /healthz)", 0.5, signed_in, health)]


def workers(bench: Bench) -> list[Row]:
    """The small-files load on `--workers 2` vs `--workers 1`, both on the same data.

    A second row divides each run's requests by the CPU seconds the server's processes
    used: on a machine whose cores the load generator shares, the raw ratio is capped by
    what wrk leaves over, and this one shows whether a second worker is as efficient as
    the first (1.0x: every core added serves as many requests as the first one)."""
    script = bench.small_script(False)
    data_dir = bench.filecask.data_dir
    efficiency: dict[int, list[Sample]] = {2: [], 1: []}
    with (
        bench.start_filecask("filecask-w2", data_dir, workers=2) as two,
        bench.start_filecask("filecask-w1", data_dir, workers=1) as one,
    ):
        sides = [_measured_side(bench, s, script, efficiency[n]) for n, s in ((2, two), (1, one))]
        name = "workers: --workers 2 on the small case (vs --workers 1)"
        rows = [_compare(bench, name, 1.6, *sides)]
    del efficiency[2][:1], efficiency[1][:1]  # the warm-up runs
    rows.append(
        ratio_row(
            "workers: requests per server CPU-second (2 vs 1)",
            list(zip(efficiency[2], efficiency[1], strict=True)),
            per_s,
            0.8,
            quick=bench.quick,
        )
    )
    return rows


def _measured_side(bench: Bench, server: Server, script: Path, out: list[Sample]) -> Side:
    """A wrk side that also records requests per CPU second of the server's processes."""
    run = _side(bench, server, "/", script)

    def measured(seconds: float) -> Sample:
        before = _cpu_seconds(server.pid)
        sample = run(seconds)
        used = _cpu_seconds(server.pid) - before
        out.append(Sample(sample.value * seconds / used if used > 0 else 0.0, sample.errors))
        return sample

    return measured


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its children (the workers)."""
    process = psutil.Process(pid)
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total
