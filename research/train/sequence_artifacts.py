"""Figures and summary entries at the end of a sequence run (plots/ and summary.json).

* Forecasts: the test period's truth against the model's one-step-ahead forecasts and the
  baselines', plus a few multi-horizon forecasts from evenly spaced origins with the horizon
  shaded (`forecast_test.png`).
* Attention pooling: the weights over time of a few test sequences (`attention.png`); padded
  steps have weight 0 and are left blank.
* Vanishing gradients: ||dL/dh_t|| against t on a test batch, for the trained model and for its
  initialisation (`hidden_gradients.png`, the numbers in `hidden_gradients.json` for comparing
  runs with `launch/report.py --hidden-gradients`), and in the summary
  `gradients/ratio_{init,trained}` = ||dL/dh_0|| / ||dL/dh_{T-1}|| (how much of the signal from
  the end of the sequence reaches its first step). Unidirectional last-state models only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research import data, storage
from research.analysis import recurrent_gradients
from research.models.recurrent import RecurrentNet
from research.tasks import LanguageModelTask, RegressionTask, SequenceClassificationTask
from research.tasks.forecasting import original_units
from research.train.extension import Extension
from research.train.setup import Run
from research.train.state import eval_params
from research.train.step import model_kwargs

ATTENTION_EXAMPLES = 6
FORECAST_ORIGINS = 4  # multi-horizon forecasts drawn from evenly spaced test origins
GRADIENT_EXAMPLES = 32


def wanted(run: Run) -> bool:
    """Artifacts on, a recurrent model and a sequence task."""
    tasks = (RegressionTask, SequenceClassificationTask, LanguageModelTask)
    return bool(run.config.evaluation.artifacts) and isinstance(run.task, tasks)


def write_artifacts(
    run: Run, state: Any, directory: Path, *, plots: bool
) -> tuple[list[Path], dict[str, Any]]:
    """(figures written, summary entries) for the final state; figures only with `plots`."""
    params = run.par.to_host(eval_params(state))
    figures: list[Path] = []
    summary: dict[str, Any] = {}
    few = _first_examples(run, min(GRADIENT_EXAMPLES, len(run.sources["test"])))
    if isinstance(run.task, RegressionTask) and "truth" in few and plots:
        test = _first_examples(run, len(run.sources["test"]))  # a series' whole test period
        figures.append(plot_forecasts(run, params, test, directory / "forecast_test.png"))
    if isinstance(run.model, RecurrentNet) and run.model.pooling == "attention" and plots:
        figures.append(plot_attention(run, params, few, directory / "attention.png"))
    if _gradients_apply(run) and "length" not in few:  # full-length sequences only
        norms = _hidden_gradients(run, params, few)
        summary.update({f"gradients/ratio_{k}": float(v[0] / v[-1]) for k, v in norms.items()})
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "hidden_gradients.json"
        path.write_text(json.dumps({k: [float(x) for x in v] for k, v in norms.items()}))
        if plots:
            title = f"{run.config.model.name}: ||dL/dh_t|| on test examples"
            figures.append(
                recurrent_gradients.plot_hidden_gradients(
                    norms, directory / "hidden_gradients.png", title=title
                )
            )
    return figures, summary


def _first_examples(run: Run, count: int) -> dict[str, np.ndarray]:
    """The first `count` test examples, transformed and stacked (no padding)."""
    batches = data.eval_batches(
        run.sources["test"], global_batch_size=count, transform=run.transform
    )
    batch = next(iter(batches))
    real = np.asarray(batch.pop("mask")) > 0
    return {k: np.asarray(v)[real] for k, v in batch.items()}


def _apply(run: Run, params: Any, batch: dict[str, np.ndarray], **kwargs: Any) -> tuple:
    """The model at evaluation on a host batch: (outputs, aux)."""
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return run.model.apply(
        {"params": params},
        run.task.inputs(batch),
        train=False,
        **model_kwargs(run.task, batch),
        **kwargs,
    )


# -- forecasts ---------------------------------------------------------------------------------


def plot_forecasts(run: Run, params: Any, test: dict[str, np.ndarray], path: Path) -> Path:
    """Truth, one-step forecasts of the model and baselines, and multi-horizon fans (column 0)."""
    outputs, _ = _apply(run, params, test)
    pred = np.asarray(
        original_units(run.task.predictions(outputs, test), test, log=run.task.log_levels)
    )
    truth, origin = test["truth"][..., 0], test["origin"]
    horizon = truth.shape[1]
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot()
    ax.plot(origin + 1, truth[:, 0], color="black", lw=1.5, label="truth")
    ax.plot(origin + 1, pred[:, 0, 0], color="C0", label="model (1 step ahead)")
    for name, style in (("naive", ":"), ("ar", "--")):
        ax.plot(origin + 1, test[name][:, 0, 0], style, color="gray", lw=1, label=name)
    if horizon > 1:
        for i in np.linspace(0, len(origin) - 1, FORECAST_ORIGINS).astype(int):
            steps = origin[i] + 1 + np.arange(horizon)
            ax.axvspan(steps[0] - 0.5, steps[-1] + 0.5, color="C1", alpha=0.12)
            ax.plot(steps, pred[i, :, 0], "o-", color="C1", ms=3)
        ax.plot([], [], "o-", color="C1", ms=3, label=f"model ({horizon}-step forecasts)")
    ax.set_xlabel("time step (test period)")
    ax.set_ylabel("value (original units)")
    ax.legend(fontsize=8)
    return _save(fig, path)


# -- attention ---------------------------------------------------------------------------------


def plot_attention(run: Run, params: Any, test: dict[str, np.ndarray], path: Path) -> Path:
    """Attention weights over time (rows: test examples; blank: padding)."""
    few = {k: v[:ATTENTION_EXAMPLES] for k, v in test.items()}
    _, aux = _apply(run, params, few)
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
    return _save(fig, path)


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


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    return storage.save_figure(fig, path, dpi=120)


class SequenceReport(Extension):
    """Forecasts, attention weights and dL/dh_t of a recurrent sequence run."""

    def applies(self, run: Run) -> bool:
        return wanted(run)

    def finish(
        self,
        run: Run,
        state: Any,
        directory: epath.Path,
        test_sums: dict[str, np.ndarray],
        rows: Sequence[dict],
    ) -> tuple[list[epath.Path], dict[str, Any]]:
        return write_artifacts(run, state, directory, plots=bool(run.config.tracking.plots))
