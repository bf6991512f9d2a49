"""Big transfers, one at a time with curl: download, upload, ZIP archive."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import clients, data
from bench.context import Bench, alternate
from bench.env import BenchError
from bench.report import Row, Sample, limit_row, mib, mib_per_s, ms, ratio_row
from bench.servers import RssSampler


def _download(bench: Bench, url: str, size: int) -> Sample:
    done = clients.curl_download(bench.tools["curl"], url)
    return Sample(done.rate, int(done.status != 200 or done.size != size))


def download(bench: Bench) -> list[Row]:
    """The big file to /dev/null, from filecask and from nginx (sendfile) in turn."""
    blob = bench.big_blob
    fc_url = bench.filecask.url(f"/files/{blob.hash}")
    ng_url = bench.nginx.url(f"/store/{blob.hash[:2]}/{blob.hash}")
    pairs = alternate(
        bench.pairs,
        lambda: _download(bench, fc_url, blob.size),
        lambda: _download(bench, ng_url, blob.size),
    )
    name = f"download {mib(blob.size)} (vs nginx)"
    return [ratio_row(name, [(a, b) for a, b in pairs], mib_per_s, 0.8, quick=bench.quick)]


def _upload_once(bench: Bench, source: Path, expected: str) -> tuple[Sample, int]:
    """One upload, timed, with the server's memory growth during it; then deleted."""
    server = bench.filecask
    # Sign in first: the first verification of a password takes argon2id's 64 MiB for a
    # moment, by design, and that is the cost of a sign-in, not of an upload.
    status, _body = clients.request(server.port, "GET", "/me", user=server.user)
    if status != 200:
        raise BenchError(f"GET /me answered {status}")
    with RssSampler(server.pid) as rss:
        done = clients.curl_upload(bench.tools["curl"], server.url("/files"), source, server.user)
    errors = int(done.status != 201 or done.size != source.stat().st_size)
    status, _body = clients.request(server.port, "DELETE", f"/files/{expected}", user=server.user)
    errors += int(status != 204 or server.blob_path(expected).exists())
    return Sample(done.rate, errors), rss.growth


def _disk_limit(bench: Bench, source: Path) -> Sample:
    """The local limit: hash the file and copy it with fsync at the same time."""
    copy = bench.tmp / "upload-copy.bin"
    start = time.perf_counter()
    hasher = subprocess.Popen(["sha256sum", str(source)], stdout=subprocess.DEVNULL)  # noqa: S603, S607
    copier = subprocess.Popen(  # noqa: S603
        ["dd", f"if={source}", f"of={copy}", "bs=1M", "conv=fsync", "status=none"],  # noqa: S607
    )
    codes = hasher.wait(), copier.wait()
    elapsed = time.perf_counter() - start
    copy.unlink(missing_ok=True)
    if codes != (0, 0):
        raise BenchError(f"sha256sum/dd failed: {codes}")
    return Sample(source.stat().st_size / elapsed)


def upload(bench: Bench) -> list[Row]:
    """A big upload vs sha256sum + dd conv=fsync side by side; and server memory growth."""
    source = bench.tmp / "big-upload.bin"
    blob = data.random_file(source, bench.sizes.big)
    bench.filecask  # noqa: B018 (started before the clock runs)
    growths: list[int] = []

    def filecask_side() -> Sample:
        sample, growth = _upload_once(bench, source, blob.hash)
        growths.append(growth)
        return sample

    try:
        pairs = alternate(bench.pairs, filecask_side, lambda: _disk_limit(bench, source))
    finally:
        source.unlink(missing_ok=True)
    name = f"upload {mib(blob.size)} (vs sha256sum ‖ dd fsync)"
    return [
        ratio_row(name, [(a, b) for a, b in pairs], mib_per_s, 0.8, quick=bench.quick),
        limit_row(
            "upload: server memory growth (max)", max(growths), mib, 64 * 2**20, quick=bench.quick
        ),
    ]


def _zip_folder(bench: Bench) -> tuple[str, int]:
    """The archive folder (big and small files), its ZIP's URL path and size."""
    folder = bench.archive_root / "bench-zip"
    content = data.random_tree(folder, [bench.sizes.zip_big, bench.sizes.zip_small])
    path = "/archive/bench-zip/"
    # The first download computes and caches the CRC-32s: the cases time later ones.
    warm = clients.curl_download(bench.tools["curl"], bench.filecask.url(path))
    if warm.status != 200 or warm.size < content:
        raise BenchError(f"warming the archive: HTTP {warm.status}, {warm.size} bytes")
    print(f"zip: first (CRC-computing) download: {warm.seconds:.1f} s", file=sys.stderr)
    return path, warm.size


def _zip_pipeline(bench: Bench, folder: Path, size: int) -> Sample:
    """The old service: `zip -r - .` in the folder, read to /dev/null; as folder/s."""
    seconds = clients.timed([bench.tools["zip"], "-q", "-r", "-", "."], cwd=folder)
    return Sample(size / seconds)


def zip_archive(bench: Bench) -> list[Row]:
    """The folder as a ZIP vs nginx sending one file as big, and vs the old zip pipeline."""
    path, size = _zip_folder(bench)
    data.random_file(bench.ref_dir / "zip-size.bin", size)
    fc_url, ng_url = bench.filecask.url(path), bench.nginx.url("/ref/zip-size.bin")
    first_bytes: list[float] = []
    nginx_first: list[float] = []

    def fetch(url: str, starts: list[float]) -> Sample:
        done = clients.curl_download(bench.tools["curl"], url)
        starts.append(done.first_byte)
        return Sample(done.rate, int(done.status != 200 or done.size != size))

    runs = alternate(
        bench.pairs,
        lambda: fetch(fc_url, first_bytes),
        lambda: fetch(ng_url, nginx_first),
        lambda: _zip_pipeline(bench, bench.archive_root / "bench-zip", size),
    )
    (bench.ref_dir / "zip-size.bin").unlink()
    big, small = bench.sizes.zip_big, bench.sizes.zip_small
    label = f"zip {big[0]}x{mib(big[1])} + {small[0]}x{small[1] // 1024} KiB"
    first = statistics.median(first_bytes)
    return [
        ratio_row(
            f"{label} (vs nginx)", [(r[0], r[1]) for r in runs], mib_per_s, 0.8, quick=bench.quick
        ),
        ratio_row(
            f"{label} (vs zip -r -)", [(r[0], r[2]) for r in runs], mib_per_s, 5, quick=bench.quick
        ),
        limit_row(
            "zip: first byte (median)",
            first,
            ms,
            0.050,
            quick=bench.quick,
            reference=f"nginx {ms(statistics.median(nginx_first))}",
        ),
    ]
