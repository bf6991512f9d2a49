"""Several server processes on one port: a small pre-fork supervisor for `--workers N`.

Each worker gets listening sockets of its own, bound with SO_REUSEPORT to the same
address, so the kernel spreads new connections evenly across workers by a hash of the
connection. One socket shared by every worker would let whichever process wins the
accept race keep a long-lived keep-alive connection, which leaves cores idle under wrk-like
loads.

The master binds every worker's sockets before forking and keeps them open itself: port 0
resolves once to one port for all workers, and a worker that dies is restarted on the same
sockets, so connections already queued to them are not lost. The master runs no event loop
and opens no store; it only starts, watches and stops workers.

Workers share the data directory safely: per-hash locks are `flock`s, SQLite runs in WAL
mode with `BEGIN IMMEDIATE` writes, and the caches follow the shared change counters.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType

log = logging.getLogger("filecask.workers")

BACKLOG = 1024
STOP_TIMEOUT = 30.0
"""Seconds a worker gets to finish its requests after SIGTERM before it is killed."""
QUICK_EXIT = 2.0
"""A worker that dies sooner than this after its start counts as failing to start."""
MAX_QUICK_EXITS = 5
"""After this many quick deaths in a row the master gives up rather than spin."""

WorkerMain = Callable[[int, list[socket.socket]], None]
"""Runs one worker (its index, its listening sockets) until it is told to stop."""


def bind_sockets(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """`count` sets of listening sockets, one socket per address `host` resolves to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((info[0], str(info[4][0])) for info in infos))
    for family, address in addresses:
        port = _claim(family, address, port)
    sets: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            sockets: list[socket.socket] = []
            sets.append(sockets)
            for family, address in addresses:
                sock = _listening_socket(family, address, port)
                sockets.append(sock)
    except OSError:
        close_sockets(sets)
        raise
    return sets


def _claim(family: int, address: str, port: int) -> int:
    """Fail if anything already listens on the address: SO_REUSEPORT alone would let a
    second filecask (or any program of this user) join the group and take connections."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((address, port))
        claimed: int = probe.getsockname()[1]
        return claimed


def _listening_socket(family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def close_sockets(sets: list[list[socket.socket]]) -> None:
    for sockets in sets:
        for sock in sockets:
            sock.close()


@dataclass
class Supervisor:
    """Starts `len(sockets)` workers, restarts any that dies, stops all on SIGTERM/SIGINT."""

    sockets: list[list[socket.socket]]
    worker_main: WorkerMain
    _procs: dict[int, BaseProcess] = field(default_factory=dict)
    _started: dict[int, float] = field(default_factory=dict)
    _quick_exits: int = 0
    _stopping: bool = False

    def run(self) -> int:
        """Blocks until told to stop; the exit status for the master process."""
        if threading.active_count() > 1:
            # fork() copies only this thread; a lock held by another would never be freed.
            raise RuntimeError("the master must not run other threads when it forks workers")
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            for index in range(len(self.sockets)):
                self._start(index)
            status = self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, index: int) -> None:
        context = multiprocessing.get_context("fork")
        proc = context.Process(
            target=_worker_entry,
            args=(self.worker_main, index, self.sockets[index], os.getpid()),
            name=f"filecask-worker-{index}",
        )
        proc.start()
        self._procs[index] = proc
        self._started[index] = time.monotonic()

    def _watch(self) -> int:
        while not self._stopping:
            sentinels = [proc.sentinel for proc in self._procs.values()]
            multiprocessing.connection.wait(sentinels, timeout=0.2)
            for index, proc in list(self._procs.items()):
                if proc.is_alive() or self._stopping:
                    continue
                proc.join()
                if not self._note_exit(index, proc.exitcode):
                    return 1
                self._start(index)
        return 0

    def _note_exit(self, index: int, code: int | None) -> bool:
        """Logs a worker's death; False once workers keep dying right after they start."""
        quick = time.monotonic() - self._started[index] < QUICK_EXIT
        self._quick_exits = self._quick_exits + 1 if quick else 0
        log.error("worker %d exited with status %s; restarting it", index, code)
        if self._quick_exits >= MAX_QUICK_EXITS:
            log.error("workers keep exiting at start; giving up (see the errors above)")
            return False
        if quick:
            time.sleep(min(0.1 * 2**self._quick_exits, 2.0))
        return True

    def _stop_all(self) -> None:
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self._procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker %s did not stop in %.0f s; killing it", proc.name, STOP_TIMEOUT)
                proc.kill()
                proc.join()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


def _die_with(master: int) -> None:
    """SIGTERM this worker when the master dies, however it dies (`kill -9`, the OOM
    killer): orphaned workers would keep the port and serve unsupervised."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != master:  # it died before prctl took effect
        os._exit(0)


def _worker_entry(
    worker_main: WorkerMain, index: int, sockets: list[socket.socket], master: int
) -> None:
    _die_with(master)
    # The master's handlers were inherited; the worker's event loop installs its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    worker_main(index, sockets)
