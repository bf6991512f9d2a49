"""Issue 14, sign-in: the attacks on sign-in, against a real `filecask serve`, and their figures.

    python -m bench.attacks.signin                   # starts its own servers
    python -m bench.attacks.signin --port 8080 --admin-password PW [--pid PID]
        # a running test server (it creates users member0..member7 there)

1. Lockout: from one address (127.0.0.2), one wrong password for `admin` every
   Retry-After; meanwhile the real admin signs in from another address (127.0.0.3): first
   fresh, then with its verified credentials, and fresh again after its password changed
   halfway (`filecask user passwd`). Figure: the admin's 429s among its tries.
2. Who exists: a name X and a surely-unknown name at the same instant with the same
   password, 8 times per name, for 8 real and 8 unknown names; each name is classified by
   the gap between the two answers (one shared argon2 run answers both at once). Figure:
   names classified correctly (8 of 16 is a coin toss).
3. Memory: a burst of 24 distinct sign-ins at once (unknown names: argon2 runs for each).
   Figure: the server's peak RSS over its idle RSS (VmHWM, reset before the burst).

The clients are threads with blocking sockets bound to loopback addresses of their own
(Linux routes all of 127/8 to `lo`), so the server sees distinct client addresses without
any proxy. Settings only the newer server knows are passed in its environment, which an
older one ignores: the same command measures before and after.

The e2e tests (tests/e2e/test_hostile_signin_e2e.py) run the same attacks, smaller.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import filecask_command, free_port

HOST = "127.0.0.1"
ATTACKER = "127.0.0.2"
ADMIN_ADDRESS = "127.0.0.3"
PROBE_ADDRESSES = ("127.0.0.4", "127.0.0.5")
MIB = 1 << 20


# --- clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode("ascii")


def request(
    port: int,
    method: str,
    path: str,
    *,
    auth: tuple[str, str] | None = None,
    source: str = HOST,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 60.0,
) -> Answer:
    """One request on a new connection from the loopback address `source`."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout, source_address=(source, 0))
    try:
        sent = dict(headers or {})
        if auth is not None:
            sent["Authorization"] = basic(*auth)
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def create_user(port: int, admin_password: str, name: str, password: str) -> int:
    body = json.dumps({"name": name, "password": password}).encode()
    return request(port, "POST", "/users", auth=("admin", admin_password), body=body).status


# --- 1. lockout ---------------------------------------------------------------------------


@dataclass
class Lockout:
    attacker: list[int] = field(default_factory=list)
    """Statuses the attacker got, in order."""
    admin: list[int] = field(default_factory=list)
    """Statuses the real admin got, in order."""
    waited_then_refused: int = 0
    """Attacker requests sent after waiting Retry-After that still got 429 (dishonest)."""
    midway_at: int | None = None
    """How many admin tries came before `midway` ran (the later ones used its password)."""

    @property
    def admin_429(self) -> int:
        return self.admin.count(429)


def lockout(
    port: int,
    admin_password: str,
    *,
    seconds: float,
    attacker: str = ATTACKER,
    admin: str = ADMIN_ADDRESS,
    attacker_headers: Callable[[], Mapping[str, str]] = dict,
    admin_headers: Callable[[], Mapping[str, str]] = dict,
    admin_every: float = 0.2,
    midway: Callable[[], str] | None = None,
) -> Lockout:
    """The issue's attack for `seconds`: the attacker sends a wrong admin password, and
    after a 429 waits its Retry-After before the next; the admin signs in every
    `admin_every` s (fresh at first, then cached). `midway`, if given, runs once halfway
    (e.g. changes the admin password) and returns the password to use from then on."""
    result = Lockout()
    stop = threading.Event()
    password = [admin_password]

    def attack() -> None:
        waited = False
        while not stop.is_set():
            answer = request(
                port,
                "GET",
                "/me",
                auth=("admin", "not-" + secrets.token_hex(4)),
                source=attacker,
                headers=attacker_headers(),
            )
            result.attacker.append(answer.status)
            if answer.status == 429:
                if waited:
                    result.waited_then_refused += 1
                waited = True
                stop.wait(int(answer.headers["retry-after"]))
            else:
                waited = False

    thread = threading.Thread(target=attack, name="attacker", daemon=True)
    thread.start()
    started = time.monotonic()
    changed = midway is None
    try:
        while time.monotonic() - started < seconds:
            if not changed and time.monotonic() - started > seconds / 2:
                assert midway is not None
                before = time.monotonic()
                password[0] = midway()
                # The second half signs in for as long as the first, however long midway
                # took (a CLI run: seconds on a loaded machine).
                started += time.monotonic() - before
                result.midway_at = len(result.admin)
                changed = True
            answer = request(
                port,
                "GET",
                "/me",
                auth=("admin", password[0]),
                source=admin,
                headers=admin_headers(),
            )
            result.admin.append(answer.status)
            time.sleep(admin_every)
    finally:
        stop.set()
        thread.join(60)
    return result


# --- 2. who exists ------------------------------------------------------------------------


@dataclass
class Probe:
    gaps: dict[str, list[float]]
    """Per probed name: seconds between the two answers of each pair."""
    real: set[str]

    def median(self, name: str) -> float:
        return statistics.median(self.gaps[name])

    def classified_correctly(self) -> int:
        """The issue's classifier: sort names by their median gap and split at the largest
        jump (in log scale); the names below it are called unknown (answered together)."""
        order = sorted(self.gaps, key=self.median)
        logs = [math.log(self.median(n) + 1e-6) for n in order]
        jumps = [b - a for a, b in itertools.pairwise(logs)]
        split = jumps.index(max(jumps)) + 1
        called_unknown = set(order[:split])
        return sum((name in called_unknown) != (name in self.real) for name in self.gaps)

    def auc(self) -> float:
        """The chance that a real name's gap exceeds an unknown name's (all pairs pooled):
        1.0 tells every real name apart, 0.5 is no difference."""
        real = [g for n in self.real for g in self.gaps[n]]
        unknown = [g for n in self.gaps if n not in self.real for g in self.gaps[n]]
        wins = sum((r > u) + 0.5 * (r == u) for r in real for u in unknown)
        return wins / (len(real) * len(unknown))


def probe_pair(port: int, name: str, decoy: str, password: str) -> float:
    """Sign in as `name` and as `decoy` at the same instant (both connections open, the two
    requests released together); the seconds between the two answers."""
    barrier = threading.Barrier(2)
    done: dict[str, float] = {}

    def one(who: str, source: str) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60, source_address=(source, 0))
        try:
            conn.connect()
            headers = {"Authorization": basic(who, password)}
            barrier.wait()
            conn.request("GET", "/me", headers=headers)
            response = conn.getresponse()
            response.read()
            done[who] = time.perf_counter()
        finally:
            conn.close()

    threads = [
        threading.Thread(target=one, args=(name, PROBE_ADDRESSES[0])),
        threading.Thread(target=one, args=(decoy, PROBE_ADDRESSES[1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return abs(done[name] - done[decoy])


def probe(port: int, real: Sequence[str], unknown: Sequence[str], rounds: int) -> Probe:
    """Each name `rounds` times, names interleaved (so a noisy moment hits both kinds)."""
    gaps: dict[str, list[float]] = {name: [] for name in [*real, *unknown]}
    for _ in range(rounds):
        for name in gaps:
            decoy = "zz" + secrets.token_hex(8)
            gaps[name].append(probe_pair(port, name, decoy, secrets.token_urlsafe(12)))
    return Probe(gaps, set(real))


# --- 3. memory ----------------------------------------------------------------------------


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def burst(port: int, pid: int, count: int) -> int:
    """`count` distinct sign-ins at once; the peak RSS over the RSS before, in bytes. The
    peak is the kernel's high-water mark (reset first), so no sample can miss it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before, _ = rss(pid)
    barrier = threading.Barrier(count)

    def one(i: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        try:
            conn.connect()
            headers = {"Authorization": basic(f"burst-{i}-{secrets.token_hex(4)}", f"pw-{i}")}
            barrier.wait()
            conn.request("GET", "/me", headers=headers)
            conn.getresponse().read()
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _, peak = rss(pid)
    return peak - before


# --- servers ------------------------------------------------------------------------------


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    port: int
    admin_password: str
    data_dir: Path
    log: Path


@contextlib.contextmanager
def serve(run_dir: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[Running]:
    """`filecask serve` on a free port with `args`, and `env` (FILECASK_* settings an older
    server may not know), until the block ends."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    password = secrets.token_urlsafe(12)
    data_dir = run_dir / "data"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILECASK_")}
    environ.update(env or {})
    environ["FILECASK_ADMIN_PASSWORD"] = password
    log = run_dir / "server.log"
    command = [*filecask_command(), "serve", "--host", HOST, "--port", str(port)]
    command += ["--data-dir", str(data_dir), *args]
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=run_dir,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(port, "GET", "/healthz", timeout=2).status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"filecask did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield Running(process, port, password, data_dir, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(20)


def change_password(running: Running, name: str, password: str) -> None:
    """`filecask user passwd` on the server's data directory, as an administrator would."""
    done = subprocess.run(  # noqa: S603
        [*filecask_command(), "user", "passwd", name, "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=False,
        cwd=running.data_dir.parent,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("FILECASK_")},
            "FILECASK_DATA_DIR": str(running.data_dir),
        },
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"user passwd failed: {done.stderr}")


# --- the figures --------------------------------------------------------------------------

LOCKOUT_SECONDS = 20.0
PROBE_NAMES = 8
PROBE_ROUNDS = 8
BURST = 24


def run_lockout(port: int, admin_password: str, midway: Callable[[], str] | None = None) -> str:
    result = lockout(port, admin_password, seconds=LOCKOUT_SECONDS, admin_every=0.5, midway=midway)
    return (
        f"lockout: the real admin got 429 on {result.admin_429} of {len(result.admin)} tries"
        f" in {LOCKOUT_SECONDS:.0f} s (attacker: {result.attacker.count(401)} guesses"
        f" verified, {result.attacker.count(429)} refused, {result.waited_then_refused}"
        " refused after waiting Retry-After)"
    )


def run_probe(port: int, admin_password: str) -> str:
    real = [f"member{i}" for i in range(PROBE_NAMES)]
    for name in real:
        create_user(port, admin_password, name, secrets.token_urlsafe(12))
    unknown = [f"member{i}x" for i in range(PROBE_NAMES)]
    result = probe(port, real, unknown, PROBE_ROUNDS)
    real_ms = statistics.median(g for n in real for g in result.gaps[n]) * 1000
    unknown_ms = statistics.median(g for n in unknown for g in result.gaps[n]) * 1000
    return (
        f"who exists: {result.classified_correctly()} of {2 * PROBE_NAMES} names classified"
        f" correctly with {PROBE_ROUNDS} pairs each (median gap: real {real_ms:.2f} ms,"
        f" unknown {unknown_ms:.2f} ms; AUC {result.auc():.2f}, 0.5 = no difference)"
    )


def run_burst(port: int, pid: int) -> str:
    grown = burst(port, pid, BURST)
    return (
        f"memory: a burst of {BURST} distinct sign-ins took the peak RSS"
        f" {grown / MIB:.0f} MiB over idle"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks.signin", description=__doc__)
    parser.add_argument("--port", type=int, help="attack this running server (no own server)")
    parser.add_argument("--admin-password", help="with --port: the admin's password")
    parser.add_argument("--pid", type=int, help="with --port: its pid, for the memory figure")
    args = parser.parse_args(argv)
    if args.port is not None:
        if not args.admin_password:
            parser.error("--port needs --admin-password")
        print(run_lockout(args.port, args.admin_password))
        print(run_probe(args.port, args.admin_password))
        if args.pid:
            print(run_burst(args.port, args.pid))
        return
    # Default argon2 cost and throttle threshold; a 4 s delay cap so the lockout attack
    # makes several rounds in 20 s (the run: 60 s cap, 150 s).
    with tempfile.TemporaryDirectory(prefix="signin-bench-") as tmp:
        base = Path(tmp)
        with serve(base / "lockout", "--access-log", "false", "--auth-max-delay", "4") as s:
            # Halfway, the admin password changes (`filecask user passwd`): the admin's
            # next sign-in is a fresh argon2 verification under a name under attack.
            def new_password(running: Running = s) -> str:
                change_password(running, "admin", "a-new-admin-password")
                return "a-new-admin-password"

            print(run_lockout(s.port, s.admin_password, new_password), flush=True)
        with serve(base / "probe", "--access-log", "false", "--auth-max-failures", "1000000") as s:
            print(run_probe(s.port, s.admin_password), flush=True)
        with serve(base / "burst", "--access-log", "false", "--auth-max-failures", "1000000") as s:
            print(run_burst(s.port, s.process.pid), flush=True)


if __name__ == "__main__":
    main()
