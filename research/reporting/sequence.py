"""Figures and summary entries at the end of a recurrent sequence run (plots/ and summary.json).

* Attention pooling: the weights over time of a few test sequences (`attention.png`); padded
  steps have weight 0 and are left blank.
* Vanishing gradients: ||dL/dh_t|| against t on a test batch, for the trained model and for its
  initialisation (`hidden_gradients.png`, the numbers in `hidden_gradients.json` for comparing
  runs with `launch/report.py --hidden-gradients`), and in the summary
  `gradients/ratio_{init,trained}` = ||dL/dh_0|| / ||dL/dh_{T-1}|| (how much of the signal from
  the end of the sequence reaches its first step). Unidirectional last-state models only.

A forecast's own report (stationarity, forecasts against the truth) is `forecasting.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research import data
from research.analysis import recurrent_gradients
from research.models.recurrent import RecurrentNet
from research.reporting import figures
from research.reporting.report import Report
from research.tasks import LanguageModelTask, RegressionTask, SequenceClassificationTask
from research.train.extension import RunEnd
from research.train.setup import Run
from research.train.state import eval_params

ATTENTION_EXAMPLES = 6
GRADIENT_EXAMPLES = 32
DPI = 120  # sequences span the figure's width: a little more resolution than the default


def wanted(run: Run) -> bool:
    """Artifacts on, a recurrent model and a sequence task."""
    tasks = (RegressionTask, SequenceClassificationTask, LanguageModelTask)
    return bool(run.config.evaluation.artifacts) and isinstance(run.task, tasks)


class SequenceReport(Report):
    """Attention weights and dL/dh_t of a recurrent sequence run."""

    def applies(self, run: Run) -> bool:
        return wanted(run)

    def write(self, end: RunEnd) -> tuple[list[Path | None], dict[str, Any]]:
        """The attention figure and the hidden-state gradients of the final state (their
        numbers always, their figure only with `plots`)."""
        run, state = end.run, end.state
        params = run.par.to_host(eval_params(state))
        drawn: list[Path | None] = []
        summary: dict[str, Any] = {}
        few = first_test_examples(run, min(GRADIENT_EXAMPLES, len(run.sources["test"])))
        if isinstance(run.model, RecurrentNet) and run.model.pooling == "attention" and end.plots:
            drawn.append(plot_attention(run, params, few, end.directory / "attention.png"))
        if _gradients_apply(run) and "length" not in few:  # full-length sequences only
            norms = _hidden_gradients(run, params, few)
            summary.update({f"gradients/ratio_{k}": float(v[0] / v[-1]) for k, v in norms.items()})
            end.directory.mkdir(parents=True, exist_ok=True)
            path = end.directory / "hidden_gradients.json"
            path.write_text(json.dumps({k: [float(x) for x in v] for k, v in norms.items()}))
            if end.plots:
                title = f"{run.config.model.name}: ||dL/dh_t|| on test examples"
                drawn.append(
                    recurrent_gradients.plot_hidden_gradients(
                        norms, end.directory / "hidden_gradients.png", title=title
                    )
                )
        return drawn, summary


def first_test_examples(run: Run, count: int) -> dict[str, np.ndarray]:
    """The first `count` test examples, transformed and stacked (no padding)."""
    batches = data.eval_batches(
        run.sources["test"], global_batch_size=count, transform=run.transform
    )
    batch = next(iter(batches))
    real = np.asarray(batch.pop("mask")) > 0
    return {k: np.asarray(v)[real] for k, v in batch.items()}


def apply_model(run: Run, params: Any, batch: dict[str, np.ndarray], **kwargs: Any) -> tuple:
    """The model at evaluation on a host batch: (outputs, aux)."""
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return run.model.apply(
        {"params": params},
        run.task.inputs(batch),
        train=False,
        **run.task.model_kwargs(batch),
        **kwargs,
    )


# -- attention ---------------------------------------------------------------------------------


def plot_attention(run: Run, params: Any, test: dict[str, np.ndarray], path: Path) -> Path:
    """Attention weights over time (rows: test examples; blank: padding)."""
    few = {k: v[:ATTENTION_EXAMPLES] for k, v in test.items()}
    _, aux = apply_model(run, params, few)
    weights = np.asarray(aux["attention"], np.float64)
    if "length" in few:
        weights = np.where(
            np.arange(weights.shape[1])[None] < few["length"][:, None], weights, np.nan
        )
    fig = Figure(figsize=(10, 0.5 + 0.45 * len(weights)))
    ax = fig.add_subplot()
    image = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="attention weight")
    labels = [f"#{i} (label {int(y)})" for i, y in enumerate(few.get("label", range(len(weights))))]
    ax.set_yticks(range(len(weights)), labels, fontsize=7)
    ax.set_xlabel("time step")
    return figures.save(fig, path, dpi=DPI)


# -- hidden-state gradients --------------------------------------------------------------------


def _gradients_apply(run: Run) -> bool:
    """The diagnostic re-runs unidirectional last-state stacks without layer norm."""
    m = run.model
    return (
        isinstance(m, RecurrentNet)
        and not m.bidirectional
        and m.pooling == "last"
        and not m.layer_norm
        and not isinstance(run.task, LanguageModelTask)
    )


def _hidden_gradients(run: Run, params: Any, batch: dict) -> dict[str, np.ndarray]:
    """||dL/dh_t|| of the task loss on `batch` (test examples), trained and at initialisation."""
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    inputs = run.task.inputs(jbatch)

    def loss_fn(outputs: jax.Array) -> jax.Array:
        return run.task.loss(outputs, {}, jbatch)[0]

    initial = run.init_fn(jax.random.PRNGKey(run.config.seed)).params
    return {
        label: recurrent_gradients.hidden_state_gradients(run.model, p, inputs, loss_fn)
        for label, p in (("init", initial), ("trained", params))
    }
