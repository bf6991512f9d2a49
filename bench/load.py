"""Many small requests with wrk: 4 KiB files, signed-in requests, and `--workers 2`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench import clients
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


def _compare(bench: Bench, name: str, target: float, first: Side, second: Side) -> Row:
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
    return [_compare(bench, name, 0.3, fc, _side(bench, bench.nginx, "/", ng_script))]


def me(bench: Bench) -> list[Row]:
    """Signed-in `GET /me` vs `GET /healthz`: what authentication (and its cache) costs."""
    signed_in = _side(bench, bench.filecask, "/me", auth=True)
    health = _side(bench, bench.filecask, "/healthz")
    return [_compare(bench, "me: signed-in GET /me (vs GET /healthz)", 0.5, signed_in, health)]


def workers(bench: Bench) -> list[Row]:
    """The small-files load on `--workers 2` vs `--workers 1`, both on the same data."""
    script = bench.small_script(False)
    data_dir = bench.filecask.data_dir
    with (
        bench.start_filecask("filecask-w2", data_dir, workers=2) as two,
        bench.start_filecask("filecask-w1", data_dir, workers=1) as one,
    ):
        name = "workers: --workers 2 on the small case (vs --workers 1)"
        return [
            _compare(
                bench, name, 1.6, _side(bench, two, "/", script), _side(bench, one, "/", script)
            )
        ]
