"""`HealthProbe`: does the server still answer others while one client attacks it?

Issue 14's rule for every attack: another client's `GET /healthz` stays under 50 ms at
the 99th percentile and 200 ms at worst. Use it around the attack::

    with HealthProbe(server.port) as probe:
        run_the_attack()
    probe.assert_responsive()

The probe is a separate process (tests/e2e/healthprobe.py), so the attack's CPU and GIL
in the test process do not show up as server lag.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType

P99_LIMIT = 0.050
MAX_LIMIT = 0.200


class HealthProbe:
    def __init__(self, port: int, interval: float = 0.005) -> None:
        self.port = port
        self.interval = interval
        self.latencies: list[float] = []
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthProbe:
        script = Path(__file__).with_name("healthprobe.py")
        self._process = subprocess.Popen(
            [sys.executable, str(script), str(self.port), str(self.interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # Measuring from here on: an attack started after this line is seen whole.
        assert self._process.stdout is not None
        ready = self._process.stdout.readline()
        assert ready.strip() == "ready", f"the health probe did not start: {ready!r}"
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._process is not None
        out, _ = self._process.communicate(timeout=60)
        self.latencies = json.loads(out) if out.strip() else []

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        if not self.latencies:
            return "no /healthz answer measured"
        return (
            f"{len(self.latencies)} /healthz requests: p50 {self.quantile(0.5) * 1000:.1f} ms, "
            f"p99 {self.quantile(0.99) * 1000:.1f} ms, max {max(self.latencies) * 1000:.1f} ms"
        )

    def assert_responsive(self, p99: float = P99_LIMIT, worst: float = MAX_LIMIT) -> None:
        """At least a few answers, p99 under `p99` and none over `worst` seconds."""
        assert len(self.latencies) >= 5, self.summary()
        assert self.quantile(0.99) < p99, self.summary()
        assert max(self.latencies) < worst, self.summary()
