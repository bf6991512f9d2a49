"""Pair statistics and the result table (plain text for the console, Markdown for
docs/performance.md)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

QUICK_VERDICT = "quick: targets not checked"
COLUMNS = ("case", "filecask", "reference", "ratio (median)", "spread", "target", "pass/fail")


@dataclass(frozen=True)
class Sample:
    """One measurement; `errors` counts failed requests or wrong bodies behind it."""

    value: float
    errors: int = 0


@dataclass(frozen=True)
class Row:
    case: str
    filecask: str
    reference: str
    ratio: str
    spread: str
    target: str
    verdict: str

    def cells(self) -> tuple[str, ...]:
        return (
            self.case,
            self.filecask,
            self.reference,
            self.ratio,
            self.spread,
            self.target,
            self.verdict,
        )


def verdict(quick: bool, ok: bool, errors: int = 0) -> str:
    """In quick mode the sizes are too small for targets to mean anything: say so."""
    if quick:
        return QUICK_VERDICT if errors == 0 else f"{QUICK_VERDICT} ({errors} errors)"
    if errors:
        return f"FAIL ({errors} errors)"
    return "PASS" if ok else "FAIL"


def ratio_row(
    case: str,
    pairs: Sequence[tuple[Sample, Sample]],
    fmt: Callable[[float], str],
    target: float | None,
    *,
    quick: bool,
    higher_is_better: bool = True,
) -> Row:
    """A row comparing filecask (first of each pair) with its reference (second).

    The ratio is taken per pair, so that a burst of noise hits both sides of one ratio,
    and the median of those ratios is what meets the target; min-max is the spread."""
    ratios = [a.value / b.value if b.value > 0 else float("inf") for a, b in pairs]
    errors = sum(a.errors + b.errors for a, b in pairs)
    med = statistics.median(ratios)
    if target is None:  # for information: a reference point, not a goal
        ok, shown = True, "—"
    else:
        ok = med >= target if higher_is_better else med <= target
        shown = f"{'≥' if higher_is_better else '≤'} {target:g}x"
    return Row(
        case=case,
        filecask=fmt(statistics.median(a.value for a, _ in pairs)),
        reference=fmt(statistics.median(b.value for _, b in pairs)),
        ratio=f"{med:.2f}x",
        spread=f"{min(ratios):.2f}-{max(ratios):.2f}",
        target=shown,
        verdict="info"
        if target is None and not quick and not errors
        else verdict(quick, ok, errors),
    )


def limit_row(
    case: str,
    value: float,
    fmt: Callable[[float], str],
    limit: float,
    *,
    quick: bool,
    reference: str = "—",
    errors: int = 0,
) -> Row:
    """A row with an absolute ceiling (memory, first byte) rather than a ratio."""
    return Row(
        case=case,
        filecask=fmt(value),
        reference=reference,
        ratio="—",
        spread="—",
        target=f"< {fmt(limit)}",
        verdict=verdict(quick, value < limit, errors),
    )


def error_row(case: str, message: str) -> Row:
    """A case that could not run: the bench broke, not (necessarily) filecask."""
    return Row(case, "—", "—", "—", "—", "—", f"ERROR: {message}")


def mib_per_s(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB/s"


def per_s(value: float) -> str:
    return f"{value:,.0f} req/s"


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def ms(value: float) -> str:
    return f"{value * 1000:,.1f} ms"


def text_table(rows: Sequence[Row]) -> str:
    """Columns padded to their widest cell, for the console."""
    table = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """The same table in GitHub Markdown, to paste into docs/performance.md."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def key_values(items: Sequence[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in items)
