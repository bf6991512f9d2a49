"""`python -m bench`: check the tools, run the cases, print the machine and one table.

Exit status 0 when every case ran, targets met or not (missed ones are FAIL rows); 1 when a
case could not run (an ERROR row); 2 when the bench could not start at all."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from bench import clients, env, load, records, report, slow, transfers
from bench.context import Bench
from bench.env import BenchError
from bench.report import Row
from bench.servers import filecask_command

Case = Callable[[Bench], list[Row]]
CASES: dict[str, Case] = {
    "download": transfers.download,
    "small": load.small,
    "upload": transfers.upload,
    "zip": transfers.zip_archive,
    "me": load.me,
    "slow": slow.slow,
    "records": records.records,
    "workers": load.workers,
}
LOG_MARKERS = ("Traceback", " ERROR ", " CRITICAL ", "[alert]", "[crit]", "[emerg]")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, short runs: checks the bench runs (CI)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="CASE",
        help=f"run only these cases (repeat or comma-separate): {', '.join(CASES)}",
    )
    parser.add_argument("--pairs", type=int, help="alternating pairs per comparison (5; quick 2)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report here")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only or [] for n in item.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}; choose from {', '.join(CASES)}")
    args.cases = [name for name in CASES if not names or name in names]
    args.pairs = args.pairs or (2 if args.quick else 5)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    return args


def run_case(name: str, case: Case, bench: Bench) -> tuple[list[Row], bool]:
    """A case's rows; a case that breaks becomes an ERROR row and the others still run."""
    print(f"[{time.strftime('%H:%M:%S')}] {name}…", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        rows = case(bench)
    except Exception as exc:  # one broken case must not keep the others from running
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return [report.error_row(name, str(exc).splitlines()[0][:120])], False
    took = time.monotonic() - start
    print(f"[{time.strftime('%H:%M:%S')}] {name} done in {took:.0f} s", file=sys.stderr, flush=True)
    return rows, True


def log_problems(logs: Sequence[Path], limit: int = 20) -> list[str]:
    """Lines of the servers' logs that look like errors: worth a look even if rows pass."""
    found: list[str] = []
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if any(marker in line for marker in LOG_MARKERS):
                    found.append(f"{log.name}: {line.strip()[:200]}")
    return found[:limit]


def render(info: list[tuple[str, str]], rows: list[Row], notes: list[str], markdown: bool) -> str:
    table = report.markdown_table(rows) if markdown else report.text_table(rows)
    machine = report.key_values(info)
    if markdown:
        machine = "\n".join(f"- {k}: {v}" for k, v in info)
    return "\n\n".join([machine, table, *notes]) + "\n"


def run(args: argparse.Namespace) -> int:
    tools = env.ensure_tools()
    info = env.machine_info(tools, filecask_command())
    info.append(("mode", f"{'quick' if args.quick else 'full'}, {args.pairs} pairs"))
    rows: list[Row] = []
    ok = True
    tmp = Path(tempfile.mkdtemp(prefix="filecask-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            bench = Bench(stack, tmp, tools, quick=args.quick, pairs=args.pairs)
            for name in args.cases:
                case_rows, case_ok = run_case(name, CASES[name], bench)
                rows += case_rows
                ok = ok and case_ok
        problems = log_problems(bench.logs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes = [
        f"wrk: -t{clients.WRK_THREADS} -c{clients.WRK_CONNECTIONS}; figures are medians over "
        "the pairs, each pair run alternately; ratio = filecask / reference per pair."
    ]
    if problems:
        notes.append("server log lines that look like errors:\n" + "\n".join(problems))
    print(render(info, rows, notes, markdown=False), end="")
    if args.markdown:
        args.markdown.write_text(render(info, rows, notes, markdown=True))
    return 0 if ok else 1


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM (a CI timeout) unwinds like Ctrl-C, so the servers started get stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
