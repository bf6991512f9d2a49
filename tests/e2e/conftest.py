"""End-to-end fixtures: `filecask serve` as a real subprocess on a free port.

Each server gets its own data directory and runs with its working directory set to a
fresh temporary directory, so no stray `.env` is read, and with every `FILECASK_*`
variable of the test runner's environment removed. Its stdout and stderr go to files
(never pipes that could fill up and stall it), which tests read through `Server`.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

ADMIN_PASSWORD = "e2e-admin-password"
ADMIN_CREDENTIALS = f"admin:{ADMIN_PASSWORD}"
"""For `curl -u`."""
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
HOST = "127.0.0.1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e starts real processes: mark it `e2e`."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def filecask_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m filecask`."""
    script = Path(sys.executable).with_name("filecask")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "filecask"]


def free_port() -> int:
    """A port the OS just considered free (bound to port 0, read back, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The runner's environment without any FILECASK_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILECASK_")}
    env.update(extra or {})
    return env


def healthz_ok(port: int) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@dataclass
class Server:
    """One running `filecask serve` process."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    cwd: Path
    stdout_path: Path
    stderr_path: Path
    admin_password: str | None
    _files: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return self.base_url + path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def blob_path(self, hex_hash: str) -> Path:
        return self.data_dir / "store" / hex_hash[:2] / hex_hash

    def wait_until_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self.stop()
                pytest.fail(
                    f"filecask serve exited with {code} before answering /healthz; "
                    f"stderr:\n{self.stderr()}",
                    pytrace=False,
                )
            if healthz_ok(self.port):
                return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"filecask serve did not answer /healthz on port {self.port} within "
                    f"{timeout:.0f} s; stderr:\n{self.stderr()}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it lingers; close the output files. Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        for file in self._files:
            file.close()
        self._files.clear()
        return self.process.returncode


class ServerLauncher:
    """Starts servers under one base directory and stops them all at `close`.

    `args` are extra `serve` flags. `port` is the port to expect (a free one by default);
    with `port_flag=False` no `--port` is passed and the port must come from elsewhere
    (environment or `.env`). `admin_password=None` leaves FILECASK_ADMIN_PASSWORD unset."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[Server] = []
        self._counter = itertools.count(1)

    def __call__(
        self,
        *args: str,
        admin_password: str | None = ADMIN_PASSWORD,
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
        cwd: Path | None = None,
        port: int | None = None,
        port_flag: bool = True,
    ) -> Server:
        number = next(self._counter)
        run_dir = self.base / f"server-{number}"
        run_dir.mkdir(parents=True)
        cwd = cwd if cwd is not None else run_dir / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        data_dir = data_dir if data_dir is not None else run_dir / "data"
        port = port if port is not None else free_port()
        extra_env = dict(env or {})
        if admin_password is not None:
            extra_env["FILECASK_ADMIN_PASSWORD"] = admin_password
        command = [*filecask_command(), "serve", "--host", HOST, "--data-dir", str(data_dir)]
        if port_flag:
            command += ["--port", str(port)]
        command += list(args)
        stdout_path, stderr_path = run_dir / "stdout.log", run_dir / "stderr.log"
        stdout, stderr = stdout_path.open("wb"), stderr_path.open("wb")
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=clean_environment(extra_env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        server = Server(
            process,
            port,
            data_dir,
            cwd,
            stdout_path,
            stderr_path,
            admin_password,
            [stdout, stderr],
        )
        self.servers.append(server)
        server.wait_until_healthy()
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()


def run_filecask(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a `filecask` command that is expected to end on its own."""
    return subprocess.run(
        [*filecask_command(), *args],
        cwd=cwd,
        env=clean_environment(env),
        input=input_text,
        stdin=subprocess.DEVNULL if input_text is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start servers for this test only; all of them are stopped at its end."""
    launcher = ServerLauncher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerLauncher]:
    launcher = ServerLauncher(tmp_path_factory.mktemp("e2e-servers"))
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def server(module_launcher: ServerLauncher) -> Server:
    """One default server shared by a module's tests (use distinct content per test)."""
    return module_launcher()


@dataclass(frozen=True)
class CurlResult:
    status: int
    headers: dict[str, str]
    """The final response's headers (after any `100 Continue`), names in lower case."""
    body: bytes
    """The response body, or the bytes of `output` when one was given."""
    stderr: str

    def json(self) -> Any:
        return json.loads(self.body)


class Curl:
    """Runs the real `curl` binary: `curl("-r", "0-9", url)`; never `-f`, so every status
    comes back. The status is read with `-w '%{http_code}'`, headers with `-D`."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self._counter = itertools.count(1)

    def __call__(
        self, *args: str, stdin: bytes | None = None, output: Path | None = None
    ) -> CurlResult:
        number = next(self._counter)
        headers_path = self.workdir / f"curl-{number}.headers"
        body_path = output if output is not None else self.workdir / f"curl-{number}.body"
        command = [
            self.executable,
            "--silent",
            "--show-error",
            "--max-time",
            "120",
            "--dump-header",
            str(headers_path),
            "--write-out",
            "%{http_code}",
            *args,
            "--output",
            str(body_path),
        ]
        done = subprocess.run(
            command,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=180,
            check=False,
        )
        stderr = done.stderr.decode(errors="replace")
        assert done.returncode == 0, f"curl exited with {done.returncode}: {stderr}"
        body = body_path.read_bytes() if body_path.exists() else b""
        return CurlResult(
            int(done.stdout.decode()), parse_last_headers(headers_path.read_bytes()), body, stderr
        )


def parse_last_headers(dump: bytes) -> dict[str, str]:
    """The header fields of the last response in a `curl -D` dump."""
    blocks = [b for b in dump.replace(b"\r\n", b"\n").split(b"\n\n") if b.strip()]
    headers: dict[str, str] = {}
    for line in blocks[-1].decode("latin-1").splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


@pytest.fixture
def curl(tmp_path: Path) -> Curl:
    executable = shutil.which("curl")
    if executable is None:
        pytest.skip("the `curl` binary is not on PATH; these tests drive the server with it")
    return Curl(executable, tmp_path)


@pytest.fixture
def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.skip("the `nginx` binary is not installed (Debian: apt-get install nginx)")
    return found


@contextlib.contextmanager
def run_nginx(binary: str, prefix: Path, site: str, port: int) -> Iterator[None]:
    """nginx, unprivileged, from `prefix`, serving the http-context snippet `site` that
    listens on `port`; stopped on exit."""
    prefix.mkdir()
    (prefix / "filecask.conf").write_text(site)
    temp = {kind: prefix / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = f"""
        worker_processes 1;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections 1024; }}
        http {{
            access_log {prefix}/access.log;
            client_body_temp_path {temp["client_body"]};
            proxy_temp_path {temp["proxy"]};
            fastcgi_temp_path {temp["fastcgi"]};
            uwsgi_temp_path {temp["uwsgi"]};
            scgi_temp_path {temp["scgi"]};
            include {prefix}/filecask.conf;
        }}
    """
    (prefix / "nginx.conf").write_text(main)
    command = [binary, "-p", str(prefix), "-e", str(prefix / "error.log")]
    command += ["-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not healthz_ok(port):
            assert nginx.poll() is None, (prefix / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.05)
        yield
    finally:
        nginx.terminate()
        nginx.wait(10)


StartServer = ServerLauncher
"""What the `start_server` fixture hands a test: call it to start a server."""
