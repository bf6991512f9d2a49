"""Many small requests with wrk: 4 KiB files, signed-in requests, and `--workers 2`."""

from __future__ import annotations

import os
import resource
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import clients, servers
from bench.context import Bench, alternate
from bench.report import QUICK_VERDICT, Row, Sample, per_s, ratio_row
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


@dataclass
class _Costs:
    """Per run of one side: requests per server CPU-second, and the CPU microseconds one
    request cost the server and the load generator."""

    efficiency: list[Sample] = field(default_factory=list)
    server_us: list[float] = field(default_factory=list)
    wrk_us: list[float] = field(default_factory=list)


def workers(bench: Bench) -> list[Row]:
    """The small-files load on `--workers 2` vs `--workers 1`, both on the same data.

    A second row divides each run's requests by the CPU seconds the server's processes
    used: on a machine whose cores the load generator shares, the raw ratio is capped by
    what wrk leaves over, and this one shows whether a second worker is as efficient as
    the first (1.0x: every core added serves as many requests as the first one). A third
    row is that cap: with C cores, a request costing the server f and wrk w CPU seconds,
    and one worker using a whole core, no number of workers can exceed C·f/(f+w) times
    one worker's rate: the cheaper a request is to serve, the lower the cap. A fourth row
    runs the same comparison for nginx, the reference elsewhere: what any server can show
    here."""
    script = bench.small_script(False)
    data_dir = bench.filecask.data_dir
    costs = {2: _Costs(), 1: _Costs()}
    with (
        bench.start_filecask("filecask-w2", data_dir, workers=2) as two,
        bench.start_filecask("filecask-w1", data_dir, workers=1) as one,
    ):
        sides = [_measured_side(bench, s, script, costs[n]) for n, s in ((2, two), (1, one))]
        name = "workers: --workers 2 on the small case (vs --workers 1)"
        rows = [_compare(bench, name, 1.6, *sides)]
    for cost in costs.values():  # the warm-up runs
        del cost.efficiency[:1], cost.server_us[:1], cost.wrk_us[:1]
    rows.append(
        ratio_row(
            "workers: requests per server CPU-second (2 vs 1)",
            list(zip(costs[2].efficiency, costs[1].efficiency, strict=True)),
            per_s,
            0.8,
            quick=bench.quick,
        )
    )
    rows.append(_ceiling_row(costs[1], bench.quick))
    rows.append(_nginx_workers(bench))
    return rows


def _nginx_workers(bench: Bench) -> Row:
    """The same comparison for nginx (2 workers vs 1, the same files): what this machine
    and load generator let any server show for a second worker."""
    script = bench.small_script(True)
    run_dir = bench.tmp / "nginx-w2"
    two = servers.nginx(
        bench.tools["nginx"], run_dir, bench.filecask.data_dir, bench.ref_dir, workers=2
    )
    bench.logs.append(run_dir / "error.log")
    with two as nginx_two:
        sides = (_side(bench, nginx_two, "/", script), _side(bench, bench.nginx, "/", script))
        name = "workers: nginx, 2 workers vs 1 on the same case (what this machine allows)"
        return _compare(bench, name, None, *sides)


def _ceiling_row(one: _Costs, quick: bool) -> Row:
    cores = len(os.sched_getaffinity(0))
    server = statistics.median(one.server_us)
    wrk = statistics.median(one.wrk_us)
    cap = min(2.0, cores * server / (server + wrk)) if server + wrk > 0 else 0.0
    return Row(
        case=f"workers: the most 2 workers can reach on {cores} cores shared with wrk",
        filecask=f"{server:.1f} µs CPU/request",
        reference=f"wrk {wrk:.1f} µs CPU/request",
        ratio=f"{cap:.2f}x",
        spread="—",
        target="—",
        verdict=QUICK_VERDICT if quick else "info",
    )


def _measured_side(bench: Bench, server: Server, script: Path, out: _Costs) -> Side:
    """A wrk side that also records what each request cost the server's processes and
    wrk in CPU time."""
    run = _side(bench, server, "/", script)

    def measured(seconds: float) -> Sample:
        before, wrk_before = _cpu_seconds(server.pid), _children_cpu_seconds()
        sample = run(seconds)
        used = _cpu_seconds(server.pid) - before
        wrk_used = _children_cpu_seconds() - wrk_before  # wrk has exited: it counts here
        requests = sample.value * seconds
        out.efficiency.append(Sample(requests / used if used > 0 else 0.0, sample.errors))
        if requests > 0:
            out.server_us.append(used / requests * 1e6)
            out.wrk_us.append(wrk_used / requests * 1e6)
        return sample

    return measured


def _children_cpu_seconds() -> float:
    """User plus system CPU time of this process's finished children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its children (the workers)."""
    process = psutil.Process(pid)
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total
