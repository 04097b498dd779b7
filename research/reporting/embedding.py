"""2-D maps of features (a classifier's pre-logits, an autoencoder's latents): PCA and t-SNE
coordinates, and side-by-side scatter plots of them coloured by class."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research.reporting import figures


def embed(features: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """2-D PCA and t-SNE coordinates of `features` (n, d); t-SNE's perplexity is capped below
    the sample count (sklearn requires it) and its seed fixed, so a rerun draws the same plot."""
    from sklearn.decomposition import PCA  # noqa: PLC0415 (only runs that write artifacts)
    from sklearn.manifold import TSNE  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 (a dependency of sklearn)

    n = features.shape[0]
    features = features.reshape(n, -1).astype(np.float64)
    perplexity = min(30.0, (n - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    # One OpenMP thread: next to XLA's thread pools, t-SNE's threads were measured 40x slower
    # (20 s instead of 0.5 s for 120 points on 2 cores).
    with threadpool_limits(1):
        return {"PCA": PCA(2).fit_transform(features), "t-SNE": tsne.fit_transform(features)}


def plot_embedding(
    coords: dict[str, np.ndarray],
    labels: np.ndarray,
    path: Path,
    subject: str = "pre-logit features",
) -> Path:
    """Side-by-side scatter plots of each 2-D embedding of `subject`, coloured by class."""
    classes = np.unique(labels)
    cmap = matplotlib.colormaps["tab10" if classes.size <= 10 else "tab20"]
    fig = Figure(figsize=(5 * len(coords), 4.4))
    axes = fig.subplots(1, len(coords), squeeze=False)[0]
    for ax, (name, xy) in zip(axes, coords.items(), strict=True):
        for i, k in enumerate(classes):
            chosen = labels == k
            ax.scatter(*xy[chosen].T, s=8, color=cmap(i % cmap.N), label=str(k), alpha=0.8)
        ax.set_title(f"{name} of {subject} ({labels.size} test examples)")
        ax.set_xticks([])
        ax.set_yticks([])
    if classes.size <= 20:
        ax.legend(
            title="class", fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5)
        )
    return figures.save(fig, path)
