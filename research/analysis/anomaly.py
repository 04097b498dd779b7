"""Anomaly-detection metrics from per-example scores (higher = more anomalous).

An example is flagged as anomalous when its score is at least the threshold. The threshold is
chosen on validation scores (the one that maximises F1 there) and then applied unchanged to the
test scores, so the test precision, recall and F1 are not tuned on the test split. AUROC needs
no threshold. Everything here is a pure function of NumPy arrays.
"""

from __future__ import annotations

import numpy as np


def precision_recall_f1(
    scores: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float]:
    """Precision, recall and F1 of flagging `scores >= threshold` against boolean `labels`
    (True: anomaly); a ratio with a zero denominator is 0, as in scikit-learn."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    flagged = scores >= threshold
    tp, n_flagged, n_anomalous = (float(np.sum(a)) for a in (flagged & labels, flagged, labels))
    return {
        "precision": tp / n_flagged if n_flagged else 0.0,
        "recall": tp / n_anomalous if n_anomalous else 0.0,
        "f1": 2 * tp / (n_flagged + n_anomalous) if tp else 0.0,
    }


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `scores >= threshold` over the distinct scores; among
    equal F1 the highest threshold (fewest false alarms). `labels` needs an anomaly."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if not labels.any():
        raise ValueError("choosing a threshold needs at least one anomalous example")
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    # The last position of each distinct score (descending): thresholds at those values flag
    # every example up to it.
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    tp = np.cumsum(hits)[last]
    flagged = last + 1
    f1 = 2 * tp / (flagged + labels.sum())
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among ties
    return float(ranked[last[best]]), float(f1[best])


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of the scores for boolean `labels` (scikit-learn's)."""
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415 (only runs that score anomalies)

    return float(roc_auc_score(np.asarray(labels, bool), np.asarray(scores, np.float64)))


def report(
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    test_scores: np.ndarray,
    test_labels: np.ndarray,
    prefix: str = "",
) -> dict[str, float]:
    """`{prefix}test_auroc`, the validation-chosen `{prefix}threshold` with its `{prefix}val_f1`,
    and `{prefix}test_precision`, `_recall`, `_f1` at that threshold."""
    threshold, val_f1 = best_f1_threshold(val_scores, val_labels)
    test = precision_recall_f1(test_scores, test_labels, threshold)
    out = {
        "test_auroc": auroc(test_scores, test_labels),
        "threshold": threshold,
        "val_f1": val_f1,
        **{f"test_{k}": v for k, v in test.items()},
    }
    return {f"{prefix}{k}": v for k, v in out.items()}
