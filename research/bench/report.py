"""The benchmark's markdown table: times, ratios, first-step times, memory and FLOP/s."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from research.bench.runner import Row

MIB = 2**20


def speedup(row: Row, other: str) -> tuple[float, float]:
    """(median over rounds of `other`'s time / the project's, the same for the fastest rounds);
    above 1 the project's step is faster."""
    t = row.timings
    return statistics.median(t.ratios("project", other)), t.best(other) / t.best("project")


def table(rows: Sequence[Row], frameworks: Sequence[str], peak_flops: float) -> list[str]:
    """Markdown lines, one row per workload."""
    others = [f for f in frameworks if f != "project"]
    head = ["workload", "batch", "params"]
    head += [f"{f} ms/step" for f in frameworks]
    head += [f"project vs {f}" for f in others]
    head += ["first step s (" + " / ".join(frameworks) + ")", "project MiB", "project GFLOP/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_cells(row, frameworks, others, peak_flops)) + " |")
    return lines


def _cells(row: Row, frameworks: Sequence[str], others: Sequence[str], peak: float) -> list[str]:
    project = row.steps["project"]
    cells = [row.workload.name, str(row.workload.batch_size), f"{project.num_params:,}"]
    cells += [_ms(row.timings.median(f)) for f in frameworks]
    for other in others:
        median, best = speedup(row, other)
        cells.append(f"{median:.2f}x [{best:.2f}x]")
    cells.append(" / ".join(f"{row.steps[f].first_step_s:.2f}" for f in frameworks))
    cells.append("-" if project.peak_bytes is None else f"{project.peak_bytes / MIB:.1f}")
    cells.append(_flops(project.flops, row.timings.median("project"), peak))
    return cells


def _ms(seconds: float) -> str:
    """Milliseconds to 3 significant digits, whole above 1000 ('2,804', not '2.8e+03')."""
    ms = 1e3 * seconds
    return f"{ms:,.0f}" if ms >= 1000 else f"{ms:.3g}"


def _flops(flops: float | None, seconds: float, peak: float) -> str:
    """Achieved GFLOP/s and its share of the measured matmul peak."""
    if flops is None:
        return "-"
    rate = flops / seconds
    return f"{rate / 1e9:.3g} ({100 * rate / peak:.1f}%)"
