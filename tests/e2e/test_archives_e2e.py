"""/archive/<folder>/ served by a real `filecask serve`, fetched by real clients: curl, wget,
unzip, 7z, bsdtar (reading from a pipe, as a streaming reader that sees only the local
headers) and raw sockets that hang up or read slowly while the server is watched through
/proc (open file descriptors) and psutil (resident memory)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import assert_problem
from tests.e2e.conftest import HOST, Curl, Server, ServerLauncher, StartServer

KiB = 1 << 10
MiB = 1 << 20
PROBLEM_JSON = "application/problem+json"
FD_SETTLE_TIMEOUT = 5.0
UTF8_ENV = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}

CMS_FOLDER = "3bea29ccabbbf64bdebcc055319c5745"
CMS_FOLDER_2 = "af1ad8c76fda2e48ea9aed2937e972ea"
NESTED_DIR = "альбом 2024"
NESTED_FILE = "фото-пляж.jpg"


# --------------------------------------------------------------------------- helpers


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"the `{tool}` binary is not on PATH")
    return path


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def make_sparse(path: Path, size: int) -> None:
    """A file of `size` zero bytes that costs no disk (like `truncate -s`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)


def files_in(directory: Path) -> dict[str, bytes]:
    """Every regular file under `directory`, by its '/'-separated relative path."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def run(command: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=UTF8_ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def curl_into(url: str, command: list[str]) -> tuple[int, subprocess.CompletedProcess[bytes]]:
    """`curl -sS URL | command`: a real pipe, so `command` can never seek back.
    Returns curl's exit code and the consumer's completed process."""
    producer = subprocess.Popen(
        [need("curl"), "-sS", "--max-time", "120", url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert producer.stdout is not None
    try:
        consumer = subprocess.run(
            command,
            stdin=producer.stdout,
            env=UTF8_ENV,
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        producer.stdout.close()
        curl_code = producer.wait(30)
    return curl_code, consumer


def open_fds(pid: int) -> dict[str, str]:
    """The process's open file descriptors: number -> what it points at."""
    result: dict[str, str] = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            result[name] = os.readlink(f"{base}/{name}")
        except OSError:  # closed between listdir and readlink
            continue
    return result


def fds_under(pid: int, directory: Path) -> list[str]:
    prefix = os.path.realpath(directory) + os.sep
    return [target for target in open_fds(pid).values() if target.startswith(prefix)]


def stable_fd_count(pid: int, timeout: float = FD_SETTLE_TIMEOUT) -> int:
    """The fd count once it has not changed over a few consecutive samples."""
    deadline = time.monotonic() + timeout
    samples = [len(open_fds(pid))]
    while time.monotonic() < deadline:
        time.sleep(0.05)
        samples.append(len(open_fds(pid)))
        if len(samples) >= 5 and len(set(samples[-5:])) == 1:
            return samples[-1]
    return samples[-1]


def wait_for_fds(
    pid: int, baseline: int, root: Path, timeout: float = FD_SETTLE_TIMEOUT
) -> tuple[float, int, list[str]]:
    """Poll until the server holds no fd under `root` and at most `baseline` fds overall.
    Returns (seconds waited, last count, fds still under root)."""
    start = time.monotonic()
    while True:
        count, leftover = len(open_fds(pid)), fds_under(pid, root)
        elapsed = time.monotonic() - start
        if (count <= baseline and not leftover) or elapsed > timeout:
            return elapsed, count, leftover
        time.sleep(0.02)


@dataclass
class RawResponse:
    sock: socket.socket
    head: bytes
    body_start: bytes

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


def raw_get(port: int, path: str, *, rcvbuf: int | None = None) -> RawResponse:
    """Send a GET over a plain socket and read up to the end of the response headers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((HOST, port))
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
    sock.sendall(request.encode())
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(64 * KiB)
        if not chunk:
            sock.close()
            raise AssertionError(f"connection closed inside the headers: {buffer!r}")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return RawResponse(sock, head, rest)


def warm(curl: Curl, server: Server, path: str) -> int:
    """One full download to /dev/null: computes and caches every CRC; returns its size."""
    result = curl(server.url(path), output=Path(os.devnull))
    assert result.status == 200, result.stderr
    return int(result.headers["content-length"])


# --------------------------------------------------------------------------- 1. drop-in


@dataclass(frozen=True)
class Photos:
    server: Server
    root: Path
    expected: Mapping[str, Mapping[str, bytes]]
    """folder -> {member path: bytes}."""


@pytest.fixture(scope="module")
def photos(module_launcher: ServerLauncher, tmp_path_factory: pytest.TempPathFactory) -> Photos:
    """A CMS-like tree served with nothing but the legacy BASE_ARCHIVE_PATH setting."""
    base = tmp_path_factory.mktemp("dropin")
    root = base / "photos"
    expected: dict[str, dict[str, bytes]] = {CMS_FOLDER: {}, CMS_FOLDER_2: {}}
    for index, size in ((1, 300 * KiB), (2, 450 * KiB), (3, 200 * KiB + 7)):
        name = f"{index}.jpg"
        expected[CMS_FOLDER][name] = write_random(root / CMS_FOLDER / name, size)
    nested = f"{NESTED_DIR}/{NESTED_FILE}"
    expected[CMS_FOLDER][nested] = write_random(root / CMS_FOLDER / nested, 123_457)
    for index, size in ((1, 256 * KiB), (2, 333 * KiB)):
        name = f"{index}.jpg"
        expected[CMS_FOLDER_2][name] = write_random(root / CMS_FOLDER_2 / name, size)
    server = module_launcher(env={"BASE_ARCHIVE_PATH": str(root)})
    return Photos(server, root, expected)


@pytest.fixture(scope="module")
def cms_zip(photos: Photos, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`curl -sS -o out.zip URL/archive/<folder>/`; returns the file and the dumped headers."""
    out_dir = tmp_path_factory.mktemp("cms-zip")
    out, headers = out_dir / "out.zip", out_dir / "headers.txt"
    done = run(
        [
            need("curl"),
            "-sS",
            "-D",
            str(headers),
            "-o",
            str(out),
            photos.server.url(f"/archive/{CMS_FOLDER}/"),
        ]
    )
    assert done.returncode == 0, done.stderr
    return out, headers.read_text(encoding="latin-1")


def header_value(dump: str, name: str) -> str | None:
    for line in dump.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return None


def test_dropin_download_has_exact_length_and_attachment_name(
    cms_zip: tuple[Path, str],
) -> None:
    out, headers = cms_zip
    assert headers.startswith("HTTP/1.1 200"), headers
    assert header_value(headers, "Content-Length") == str(out.stat().st_size)
    assert header_value(headers, "Content-Disposition") == 'attachment; filename="archive.zip"'
    assert header_value(headers, "Content-Type") == "application/zip"


def test_dropin_zip_passes_unzip_7z_and_zipfile(
    photos: Photos, cms_zip: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = cms_zip
    unzip = run([need("unzip"), "-t", str(out)])
    assert unzip.returncode == 0, unzip.stdout + unzip.stderr
    assert "No errors detected" in unzip.stdout, unzip.stdout
    seven = run([need("7z"), "t", str(out)])
    assert seven.returncode == 0, seven.stdout + seven.stderr
    assert "Everything is Ok" in seven.stdout, seven.stdout

    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        members = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    assert members == photos.expected[CMS_FOLDER]

    # And unzip's own extraction, Cyrillic names included.
    extracted = tmp_path / "unzipped"
    done = run([need("unzip"), "-q", str(out), "-d", str(extracted)])
    assert done.returncode == 0, done.stderr
    assert files_in(extracted) == photos.expected[CMS_FOLDER]


def test_dropin_second_folder_is_served_too(photos: Photos, curl: Curl, tmp_path: Path) -> None:
    result = curl(photos.server.url(f"/archive/{CMS_FOLDER_2}/"))
    assert result.status == 200, result.body[:500]
    with zipfile.ZipFile(io.BytesIO(result.body)) as archive:
        assert archive.testzip() is None
        members = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    assert members == photos.expected[CMS_FOLDER_2]


def test_dropin_streaming_bsdtar_lists_every_file_with_its_size(photos: Photos) -> None:
    bsdtar = need("bsdtar")
    curl_code, listing = curl_into(
        photos.server.url(f"/archive/{CMS_FOLDER}/"), [bsdtar, "-tvf", "-"]
    )
    assert curl_code == 0
    assert listing.returncode == 0, listing.stderr.decode(errors="replace")
    sizes: dict[str, int] = {}
    for line in listing.stdout.decode().splitlines():
        fields = line.split(None, 8)
        if fields[0].startswith("d"):
            continue
        sizes[fields[8]] = int(fields[4])
    expected = {name: len(data) for name, data in photos.expected[CMS_FOLDER].items()}
    assert sizes == expected, listing.stdout.decode()


def test_dropin_streaming_bsdtar_extracts_identical_files(photos: Photos, tmp_path: Path) -> None:
    bsdtar = need("bsdtar")
    target = tmp_path / "bsdtar-out"
    target.mkdir()
    curl_code, extract = curl_into(
        photos.server.url(f"/archive/{CMS_FOLDER}/"), [bsdtar, "-xf", "-", "-C", str(target)]
    )
    assert curl_code == 0
    assert extract.returncode == 0, extract.stderr.decode(errors="replace")
    assert files_in(target) == photos.expected[CMS_FOLDER]


# --------------------------------------------------------------------------- 2. resume


@pytest.mark.parametrize("cut", [1, 64 * KiB + 3, 500 * KiB])
def test_resume_partial_file_with_curl_continue_at(
    photos: Photos, cms_zip: tuple[Path, str], tmp_path: Path, cut: int
) -> None:
    full = cms_zip[0].read_bytes()
    partial = tmp_path / "partial.zip"
    partial.write_bytes(full[:cut])
    done = run(
        [
            need("curl"),
            "-sS",
            "-w",
            "%{http_code}",
            "-C",
            "-",
            "-o",
            str(partial),
            photos.server.url(f"/archive/{CMS_FOLDER}/"),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "206"
    assert partial.read_bytes() == full


@pytest.mark.parametrize("cut", [1, 64 * KiB + 3, 500 * KiB])
def test_resume_partial_file_with_wget_continue(
    photos: Photos, cms_zip: tuple[Path, str], tmp_path: Path, cut: int
) -> None:
    wget = need("wget")
    full = cms_zip[0].read_bytes()
    partial = tmp_path / "partial.zip"
    partial.write_bytes(full[:cut])
    done = run(
        [wget, "-q", "-S", "-c", "-O", str(partial), photos.server.url(f"/archive/{CMS_FOLDER}/")]
    )
    assert done.returncode == 0, done.stderr
    assert "206" in done.stderr.splitlines()[0], done.stderr
    assert partial.read_bytes() == full


# --------------------------------------------------------------------------- 3. cancellation


BIG_FILES = 8
BIG_FILE_SIZE = 25 * MiB  # 200 MiB in all, sparse


def big_tree(root: Path, folder: str, files: int, size: int) -> None:
    for index in range(files):
        make_sparse(root / folder / f"part-{index:02d}.bin", size)


def test_cancelled_download_leaves_no_fd_behind(
    start_server: StartServer, curl: Curl, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    big_tree(root, "big", BIG_FILES, BIG_FILE_SIZE)
    server = start_server("--archive-root", str(root))
    size = warm(curl, server, "/archive/big/")
    assert size > BIG_FILES * BIG_FILE_SIZE
    baseline = stable_fd_count(server.pid)

    for attempt in range(3):
        response = raw_get(server.port, "/archive/big/", rcvbuf=64 * KiB)
        assert response.status == 200
        got = len(response.body_start)
        while got < 256 * KiB:
            chunk = response.sock.recv(64 * KiB)
            assert chunk
            got += len(chunk)
        during = fds_under(server.pid, root)
        response.close()
        assert during, f"attempt {attempt}: no fd under the root while streaming?"
        waited, count, leftover = wait_for_fds(server.pid, baseline, root)
        print(f"attempt {attempt}: fds back to {count} (baseline {baseline}) in {waited:.3f} s")
        assert not leftover, f"fds still open under the archive root: {leftover}"
        assert count <= baseline, f"{count} fds open, baseline {baseline}"

    # The server is still healthy and serves the whole archive afterwards.
    assert warm(curl, server, "/archive/big/") == size


def test_cut_slow_stream_with_legacy_process_delay_leaves_no_fd_behind(
    start_server: StartServer, curl: Curl, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    big_tree(root, "slow", 4, 2 * MiB)
    server = start_server("--archive-root", str(root), env={"PROCESS_DELAY": "0.05"})
    head = curl("-I", server.url("/archive/slow/"))  # computes the CRCs
    assert head.status == 200
    baseline = stable_fd_count(server.pid)

    started = time.monotonic()
    client = subprocess.Popen(
        [need("curl"), "-sS", "-o", str(tmp_path / "cut.zip"), server.url("/archive/slow/")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Mid-way: into the second member (each member is 2 MiB at ~1.3 MB/s).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cut = tmp_path / "cut.zip"
            if cut.exists() and cut.stat().st_size > 2 * MiB + 300 * KiB:
                break
            time.sleep(0.05)
        during = fds_under(server.pid, root)
        assert client.poll() is None, "the slow stream finished before it could be cut"
    finally:
        client.kill()
        client.wait(10)
    received = (tmp_path / "cut.zip").stat().st_size
    print(f"cut after {time.monotonic() - started:.2f} s and {received} bytes")
    assert during, "no fd under the root while the slow stream was running?"
    waited, count, leftover = wait_for_fds(server.pid, baseline, root)
    print(f"fds back to {count} (baseline {baseline}) in {waited:.3f} s")
    assert not leftover, f"fds still open under the archive root: {leftover}"
    assert count <= baseline, f"{count} fds open, baseline {baseline}"


# --------------------------------------------------------------------------- 4. first byte


FIRST_BYTE_LIMIT = 0.050


@pytest.mark.slow
def test_first_byte_of_a_1_gib_folder_is_fast(
    start_server: StartServer, curl: Curl, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    big_tree(root, "gig", 40, 25 * MiB + 1)
    server = start_server("--archive-root", str(root), env={"FILECASK_ACCESS_LOG": "false"})
    warm_started = time.monotonic()
    size = warm(curl, server, "/archive/gig/")
    print(f"warm-up: {size} bytes in {time.monotonic() - warm_started:.2f} s")
    assert size > 40 * 25 * MiB  # ~1 GiB

    curl_times: list[float] = []
    for _ in range(5):
        done = run(
            [
                need("curl"),
                "-sS",
                "-o",
                os.devnull,
                "--range",
                "0-0",
                "-w",
                "%{http_code} %{time_starttransfer}",
                server.url("/archive/gig/"),
            ]
        )
        status, seconds = done.stdout.split()
        assert status == "206", done.stdout
        curl_times.append(float(seconds))

    socket_times: list[float] = []
    for _ in range(5):
        started = time.perf_counter()
        response = raw_get(server.port, "/archive/gig/")
        body = response.body_start
        while not body:
            body = response.sock.recv(1)
            assert body
        socket_times.append(time.perf_counter() - started)
        response.close()

    print("curl --range 0-0 time_starttransfer (ms):", [f"{t * 1000:.1f}" for t in curl_times])
    print("raw full GET first body byte (ms):", [f"{t * 1000:.1f}" for t in socket_times])
    assert min(curl_times) < FIRST_BYTE_LIMIT, curl_times
    assert min(socket_times) < FIRST_BYTE_LIMIT, socket_times


# --------------------------------------------------------------------------- 5. missing, tricks


@dataclass(frozen=True)
class Tricky:
    server: Server
    marker: bytes


@pytest.fixture(scope="module")
def tricky(module_launcher: ServerLauncher, tmp_path_factory: pytest.TempPathFactory) -> Tricky:
    base = tmp_path_factory.mktemp("tricky")
    marker = b"MARKER-" + os.urandom(8).hex().encode()
    outside = base / "etc"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(marker)
    (base / "secret.txt").write_bytes(marker)
    root = base / "root"
    write_random(root / "ok" / "a.bin", 1000)
    (root / "ok" / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "ok" / "leakdir").symlink_to(outside, target_is_directory=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / ".hidden").mkdir()
    (root / "edge" / "empty dir").mkdir(parents=True)
    (root / "edge" / "zero.bin").write_bytes(b"")
    write_random(root / "edge" / "name with spaces & ünïcode.txt", 10)
    (root / "vacant").mkdir()
    (root / ".hidden" / "secret.txt").write_bytes(marker)
    server = module_launcher("--archive-root", str(root))
    return Tricky(server, marker)


def test_missing_folder_is_404_problem_json(tricky: Tricky, curl: Curl) -> None:
    result = curl(tricky.server.url("/archive/no-such-folder/"))
    assert result.status == 404, result.body
    assert result.headers["content-type"].startswith(PROBLEM_JSON)
    assert_problem(result.json(), 404, "not-found")


def test_missing_folder_for_a_browser_is_an_html_page(tricky: Tricky, curl: Curl) -> None:
    result = curl("-H", "Accept: text/html", tricky.server.url("/archive/no-such-folder/"))
    assert result.status == 404, result.body
    assert result.headers["content-type"].startswith("text/html")
    assert b"does not exist or has been deleted" in result.body


@pytest.mark.parametrize(
    "path",
    [
        "/archive/../etc/",
        "/archive/%2e%2e/",
        "/archive/%2E%2E/etc/",
        "/archive/..%2f..%2fetc/",
        "/archive/..%2fetc/",
        "/archive/%2e%2e%2fetc/",
        "/archive/.hidden/",
        "/archive/%2ehidden/",
        "/archive/escape/",
        "/archive/escape",
        "/archive/ok%2f..%2f..%2fetc/",
    ],
)
def test_path_tricks_never_serve_outside_the_root(tricky: Tricky, curl: Curl, path: str) -> None:
    result = curl("--path-as-is", tricky.server.url(path))
    assert result.status in (400, 404), (result.status, result.body[:300])
    assert tricky.marker not in result.body


def test_symlinks_to_outside_are_left_out_of_a_folder_archive(tricky: Tricky, curl: Curl) -> None:
    result = curl(tricky.server.url("/archive/ok/"))
    assert result.status == 200, result.body[:300]
    assert tricky.marker not in result.body
    with zipfile.ZipFile(io.BytesIO(result.body)) as archive:
        assert archive.namelist() == ["a.bin"]


# --------------------------------------------------------------------------- 6. memory


RSS_GROWTH_LIMIT = 32 * MiB


def sample_while(pid: int, step: Callable[[], None], duration: float) -> Iterator[int]:
    process = psutil.Process(pid)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        step()
        yield int(process.memory_info().rss)


def test_slow_client_does_not_grow_server_memory(
    start_server: StartServer, curl: Curl, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    for index in range(4):
        write_random(root / "hundred" / f"r-{index}.bin", 1 * MiB)
    big_tree(root, "hundred", 4, 24 * MiB)
    server = start_server(
        "--archive-root", str(root), env={"PROCESS_DELAY": "0.002", "ACTIVATE_LOGS": "False"}
    )
    assert curl("-I", server.url("/archive/hundred/")).status == 200  # CRCs
    process = psutil.Process(server.pid)
    before = int(process.memory_info().rss)

    response = raw_get(server.port, "/archive/hundred/")
    received = len(response.body_start)

    def read_slowly() -> None:
        nonlocal received
        chunk = response.sock.recv(64 * KiB)
        assert chunk, "the server ended the stream early"
        received += len(chunk)
        time.sleep(0.05)

    try:
        samples = list(sample_while(server.pid, read_slowly, 3.0))
    finally:
        response.close()
    peak = max(samples)
    print(
        f"RSS before {before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB "
        f"(+{(peak - before) / MiB:.1f}); read {received / MiB:.1f} MiB in 3 s"
    )
    assert received < 100 * MiB  # the client really was the bottleneck
    assert peak - before < RSS_GROWTH_LIMIT
    _, _, leftover = wait_for_fds(server.pid, 10_000, root)
    assert not leftover, leftover


def test_empty_members_and_an_empty_folder_make_valid_zips(tricky: Tricky, curl: Curl) -> None:
    edge = curl(tricky.server.url("/archive/edge/"))
    assert edge.status == 200, edge.body[:300]
    assert int(edge.headers["content-length"]) == len(edge.body)
    with zipfile.ZipFile(io.BytesIO(edge.body)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == [
            "empty dir/",
            "name with spaces & ünïcode.txt",
            "zero.bin",
        ]
        assert archive.read("zero.bin") == b""

    vacant = curl(tricky.server.url("/archive/vacant/"))
    assert vacant.status == 200, vacant.body[:300]
    assert int(vacant.headers["content-length"]) == len(vacant.body)
    with zipfile.ZipFile(io.BytesIO(vacant.body)) as archive:
        assert archive.namelist() == []
