"""The benchmark suite still runs: `python -m bench --quick` end to end (it checks that it
runs, not the performance targets, which need the full sizes and a quiet machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = ("download", "small", "upload", "zip", "me", "slow", "records", "workers")
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
"""Debian puts nginx there, outside a normal user's PATH; the bench looks there too."""
TIMEOUT = 180.0
"""The quick run takes about 45 s; far more means something hangs."""


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_bench_runs_every_case() -> None:
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN])
    missing = [
        tool for tool in ("nginx", "wrk", "zip", "curl") if not shutil.which(tool, path=path)
    ]
    if missing:
        listed = " ".join(missing)
        pytest.skip(f"the bench needs {listed} (Debian: apt-get install {listed})")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILECASK_")}
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        output, errors = bench.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the bench stops the servers it started, then exits
        output, errors = bench.communicate(timeout=60)
        pytest.fail(f"the quick bench took over {TIMEOUT:.0f} s:\n{output}\n{errors}")
    assert bench.returncode == 0, output + errors
    table = output
    for name in CASES:
        assert any(line.startswith(name) for line in table.splitlines()), (name, table)
    assert "quick: targets not checked" in table
    assert "ERROR" not in table
