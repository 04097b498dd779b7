"""Seed statistics per sweep group, written as Markdown, CSV and LaTeX tables.

For each group and metric: the number of seeds n, the mean, the sample standard deviation
(ddof=1) and a 95% Student-t interval for the mean, mean +- t_{0.975, n-1} * std / sqrt(n).
With one seed there is no spread to estimate, so std and the interval are NaN (blank in tables)
rather than a misleading zero.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from research.analysis.collect import FinishedRun, is_number

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Stats:
    """Summary of one metric over the seeds of one group."""

    n: int
    mean: float
    std: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class GroupRow:
    """One table row: the group's swept-key values, its seed count and per-metric statistics."""

    values: tuple
    n: int
    stats: dict[str, Stats]


def summarize(values: Sequence[float], level: float = LEVEL) -> Stats:
    """Mean, sample std and Student-t interval of the mean; NaN where n is too small for them."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return Stats(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Stats(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Stats(n, mean, std, mean - half, mean + half)


def aggregate(
    groups: Mapping[tuple, Sequence[FinishedRun]], metrics: Sequence[str], level: float = LEVEL
) -> list[GroupRow]:
    """Per group, statistics of each summary metric over the runs that reported it."""
    rows = []
    for values, runs in groups.items():
        per_metric = {
            m: summarize([r.summary[m] for r in runs if is_number(r.summary.get(m))], level)
            for m in metrics
        }
        rows.append(GroupRow(values, len(runs), per_metric))
    return rows


def _fmt(x: float, digits: int) -> str:
    return "" if math.isnan(x) else f"{x:.{digits}f}"


def _cell(s: Stats, digits: int, pm: str) -> str:
    """`mean ± std [low, high]`, shortened when n is too small for a spread."""
    if s.n == 0:
        return ""
    if s.n == 1:
        return _fmt(s.mean, digits)
    d = digits
    return f"{_fmt(s.mean, d)} {pm} {_fmt(s.std, d)} [{_fmt(s.low, d)}, {_fmt(s.high, d)}]"


def to_markdown(
    rows: Sequence[GroupRow], keys: Sequence[str], metrics: Sequence[str], digits: int = 4
) -> str:
    """A GitHub Markdown table: one column per swept key, n, and `mean ± std [95% CI]` cells."""
    header = [*keys, "n", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(v) for v in row.values] + [str(row.n)]
        cells += [_cell(row.stats[m], digits, "±") for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"mean ± std (ddof=1) [{LEVEL:.0%} Student-t interval of the mean] over seeds "
        "(and cross-validation folds)"
    )
    return "\n".join(lines) + f"\n\n{note}\n"


def to_csv(rows: Sequence[GroupRow], keys: Sequence[str], metrics: Sequence[str]) -> str:
    """Full-precision CSV: key columns, n, then `<metric>/{n,mean,std,ci_low,ci_high}` columns."""
    fields = ("n", "mean", "std", "ci_low", "ci_high")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*keys, "n", *(f"{m}/{f}" for m in metrics for f in fields)])
    for row in rows:
        cells: list[Any] = [*row.values, row.n]
        for m in metrics:
            s = row.stats[m]
            cells += [s.n] + [
                "" if math.isnan(v) else repr(v) for v in (s.mean, s.std, s.low, s.high)
            ]
        writer.writerow(cells)
    return out.getvalue()


def _tex_escape(text: str) -> str:
    """Escapes the LaTeX specials that appear in config keys and metric names."""
    for char in ("\\", "&", "%", "$", "#", "_", "{", "}"):
        text = text.replace(char, "\\textbackslash{}" if char == "\\" else f"\\{char}")
    return text


def to_latex(
    rows: Sequence[GroupRow], keys: Sequence[str], metrics: Sequence[str], digits: int = 4
) -> str:
    """A booktabs `tabular` with `$mean \\pm std$ [low, high]` cells, ready to \\input."""
    header = [*keys, "n", *metrics]
    lines = [
        "\\begin{tabular}{" + "l" * (len(keys) + 1) + "r" * len(metrics) + "}",
        "\\toprule",
        " & ".join(_tex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    for row in rows:
        cells = [_tex_escape(str(v)) for v in row.values] + [str(row.n)]
        for m in metrics:
            cell = _cell(row.stats[m], digits, "\\pm")
            cells.append(f"${cell}$" if cell else "")
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(
    rows: Sequence[GroupRow], keys: Sequence[str], metrics: Sequence[str], outdir: Path
) -> list[Path]:
    """Writes report.md, report.csv and report.tex into `outdir`; returns their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    texts = {
        "report.md": to_markdown(rows, keys, metrics),
        "report.csv": to_csv(rows, keys, metrics),
        "report.tex": to_latex(rows, keys, metrics),
    }
    paths = []
    for name, text in texts.items():
        (outdir / name).write_text(text, encoding="utf-8")
        paths.append(outdir / name)
    return paths
