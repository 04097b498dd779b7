"""What a confusion matrix (rows: true class, columns: predicted) shows: its heatmap, and the
precision, recall, F1 and support of every class as a table (Markdown and CSV)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research.reporting import figures

PER_CLASS_FIELDS = ("class", "precision", "recall", "f1", "support")


def confusion_matrix(matrix: np.ndarray, path: Path, class_names: Sequence[str] = ()) -> Path:
    """A heatmap of counts, rows = true class, columns = predicted class."""
    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    fig = Figure(figsize=(1.2 + 0.45 * n, 1 + 0.45 * n))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, int(count), ha="center", va="center", fontsize=7, color=color)
    labels = list(class_names) or [str(i) for i in range(n)]
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return figures.save(fig, path)


def per_class_metrics(confusion: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of every class from a confusion matrix (rows: true
    class, columns: predicted); a ratio with a zero denominator is 0, as in sklearn."""
    confusion = np.asarray(confusion, np.float64)
    true_pos = np.diag(confusion)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = _ratio(true_pos, predicted)
    recall = _ratio(true_pos, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return [
        {"class": k, "precision": p, "recall": r, "f1": f, "support": int(s)}
        for k, (p, r, f, s) in enumerate(
            zip(precision.tolist(), recall.tolist(), f1.tolist(), support, strict=True)
        )
    ]


def write_per_class(table: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """`<stem>.md` (a table, 4 decimals) and `<stem>.csv` (full precision); their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| " + " | ".join(PER_CLASS_FIELDS) + " |", "|" + "---|" * len(PER_CLASS_FIELDS)]
    for row in table:
        cells = [f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in row]
        lines.append("| " + " | ".join(cells) + " |")
    out = io.StringIO()
    writer = csv.DictWriter(out, PER_CLASS_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    csv_path.write_text(out.getvalue(), encoding="utf-8")
    return [md, csv_path]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)
