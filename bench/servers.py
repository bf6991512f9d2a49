"""Start and stop the servers under test (filecask, nginx) and watch their memory.

Each runs in its own session (so a Ctrl-C reaches the bench, which then stops them in
order) with its output in a log file (a full pipe would stall it), and is always stopped
by the context manager that started it, whatever happens in between."""

from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from bench.env import BenchError

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 120.0
"""Generous: a database with a million records, or a noisy neighbour, slows a first start."""
STOP_TIMEOUT = 20.0


def free_port() -> int:
    """A port the OS just considered free (bound to port 0, read back, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: a thousand clients need a thousand fds."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def filecask_command() -> list[str]:
    """The console script next to this interpreter (the venv's), else `python -m filecask`."""
    script = Path(sys.executable).with_name("filecask")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "filecask"]


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (the workers of `--workers N`)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += int(proc.memory_info().rss)
    return total


class RssSampler:
    """Samples a process tree's RSS every `interval` s in a thread; `peak` is the highest."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = tree_rss(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@dataclass
class Server:
    """A running server process on a loopback port."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"


@dataclass
class Filecask(Server):
    data_dir: Path
    password: str

    @property
    def user(self) -> str:
        return f"admin:{self.password}"

    def blob_path(self, hex_hash: str) -> Path:
        return self.data_dir / "store" / hex_hash[:2] / hex_hash


def _http_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(server: Server, path: str, ok: Sequence[int]) -> None:
    """Until `path` answers one of `ok`; fails with the log if the process dies first."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while _http_status(server.port, path) not in ok:
        code = server.process.poll()
        if code is not None:
            raise BenchError(f"{server.name} exited with {code}; log:\n{_tail(server.log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} not ready after {STARTUP_TIMEOUT:.0f} s")
        time.sleep(0.05)


def _stop(server: Server, sig: signal.Signals) -> None:
    """`sig` to the main process, then SIGKILL to its whole session if it lingers."""
    process = server.process
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"{server.name} ignored {sig.name}; killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # leftover workers, if any
    process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def _spawn(
    name: str, command: list[str], log: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=log.parent,
            start_new_session=True,
            preexec_fn=raise_fd_limit,
        )
    yield process


@contextlib.contextmanager
def filecask(
    run_dir: Path,
    data_dir: Path,
    password: str,
    *,
    archive_root: Path | None = None,
    workers: int | None = None,
    name: str = "filecask",
    args: tuple[str, ...] = (),
) -> Iterator[Filecask]:
    """`filecask serve` on a free loopback port, ready (`/healthz` 200) when yielded;
    `args` are extra `serve` flags."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        *filecask_command(),
        "serve",
        *("--host", HOST, "--port", str(port)),
        *("--data-dir", str(data_dir), "--access-log", "false"),
    ]
    if archive_root is not None:
        command += ["--archive-root", str(archive_root)]
    if workers is not None:
        command += ["--workers", str(workers)]
    command += args
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILECASK_")}
    env["FILECASK_ADMIN_PASSWORD"] = password
    log = run_dir / f"{name}.log"
    with _spawn(name, command, log, env) as process:
        server = Filecask(name, process, port, log, data_dir, password)
        try:
            _wait_ready(server, "/healthz", (200,))
            yield server
        finally:
            _stop(server, signal.SIGTERM)


@contextlib.contextmanager
def ceiling(run_dir: Path) -> Iterator[Server]:
    """`python -m bench.ceiling` (a bare aiohttp handler) on a free loopback port."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = run_dir / "ceiling.log"
    command = [sys.executable, "-m", "bench.ceiling", str(port)]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    with _spawn("ceiling", command, log, env) as process:
        server = Server("ceiling", process, port, log)
        try:
            _wait_ready(server, "/healthz", (200,))
            yield server
        finally:
            _stop(server, signal.SIGTERM)


NGINX_CONF = """\
worker_processes {workers};
{user}
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    # nginx closes a keep-alive connection after 1000 requests by default; filecask
    # never does, so lift it: the reference should not pay for reconnections.
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen {host}:{port};
        root {root};
        location /ref/ {{ alias {ref}/; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(
    binary: str, run_dir: Path, root: Path, ref_dir: Path, *, workers: int = 1
) -> Iterator[Server]:
    """nginx in the foreground, its prefix, pid, logs and temp paths all in `run_dir`.

    `root` is filecask's data directory, so `/store/ab/<hash>` is the very file filecask
    serves at `/files/<hash>`; `/ref/` serves extra reference files from `ref_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ref_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # As root, nginx's workers would drop to `nobody`, who cannot read filecask's 0600 blobs.
    user = f"user {pwd.getpwuid(0).pw_name};" if os.geteuid() == 0 else ""
    conf = run_dir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=workers, user=user, run=run_dir, host=HOST, port=port, root=root, ref=ref_dir
        )
    )
    command = [binary, "-p", str(run_dir), "-c", str(conf), "-e", str(run_dir / "error.log")]
    command += ["-g", "daemon off;"]
    with _spawn("nginx", command, run_dir / "nginx.log") as process:
        server = Server("nginx", process, port, run_dir / "error.log")
        try:
            _wait_ready(server, "/", (200, 403, 404))
            yield server
        finally:
            _stop(server, signal.SIGTERM)
