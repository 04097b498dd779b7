"""Writing a figure: every figure of a run or a report is saved through `save`.

Figures are made as `matplotlib.figure.Figure` objects, never through pyplot: no global backend
or figure registry is touched, so there is nothing to close afterwards (the figure is freed
with its last reference) and drawing is safe from any thread.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from matplotlib.figure import Figure

from research import storage

DPI = 100
PathT = TypeVar("PathT", bound=os.PathLike)


def save(
    fig: Figure, path: PathT, *, dpi: int = DPI, layout: bool = True, **savefig_kwargs: Any
) -> PathT:
    """Save `fig` at `path` (a local path or an epath.Path on gs://..., the format from its
    suffix, parents created) and return `path`.

    With `layout`, a figure without a layout engine of its own (e.g. constrained layout) is
    tightened first, so titles and tick labels are not clipped. `savefig_kwargs` go to
    matplotlib's `savefig` (e.g. bbox_inches).
    """
    if layout and fig.get_layout_engine() is None:
        fig.tight_layout()
    storage.save_figure(fig, path, dpi=dpi, **savefig_kwargs)
    return path
