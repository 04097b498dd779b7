"""What an image classifier's run leaves behind besides its metrics: per-class precision, recall
and F1 of the test pass (`confusion.py`), a 2-D embedding (PCA and t-SNE) of its pre-logit
features (`embedding.py`), Grad-CAM heatmaps of a few test images (`gradcam.py`), and eval
accuracy against the step and the wall time.

Everything runs on the host's copy of the evaluation parameters, the model in eval mode, on at
most a few thousand test examples, so it takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from research import data
from research.analysis import collect
from research.errors import ConfigError
from research.reporting import confusion, curves, embedding, gradcam
from research.reporting.report import Report
from research.tasks import ClassificationTask
from research.train.extension import RunEnd
from research.train.setup import Run
from research.train.state import eval_params, model_variables


def wanted(run: Run) -> bool:
    """Whether the end of `run` writes artifacts: enabled, plots on, a classification task."""
    c = run.config
    enabled = c.evaluation.artifacts and c.tracking.plots
    return bool(enabled) and isinstance(run.task, ClassificationTask)


def check_config(run: Run) -> None:
    """Refuse an `evaluation.gradcam_layer` that is no top-level module with an image-shaped
    output, before anything is written (the artifacts are made only after training)."""
    layer = run.config.evaluation.gradcam_layer
    if not layer or not wanted(run):
        return
    inputs = _sample_inputs(run)
    if inputs.ndim != 4:  # no images, no Grad-CAM: the key has nothing to act on
        return
    modules = _top_level_modules(run.optimizer.table)
    if layer not in modules:
        raise ConfigError(
            f"evaluation.gradcam_layer='{layer}' is no top-level module of the model "
            f"(modules: {', '.join(modules)})"
        )
    variables = jax.eval_shape(lambda: run.model.init(jax.random.PRNGKey(0), inputs, train=False))
    shape = gradcam.feature_shape(run.model, variables, inputs, layer)
    if len(shape) != 4:
        raise ConfigError(
            f"evaluation.gradcam_layer='{layer}' outputs shape {shape}; Grad-CAM needs a "
            "(batch, height, width, channels) feature map"
        )


def accuracy_vs_time(rows: Sequence[dict], path: Path) -> Path | None:
    """Eval accuracy against the step and the wall time (two panels); None if never evaluated."""
    run = collect.FinishedRun(path.parent, {}, {}, list(rows))
    return curves.plot_convergence({(): [run]}, [], "eval/accuracy", path)


class ClassificationReport(Report):
    """Per-class metrics, the embedding and Grad-CAM of a classification run."""

    def applies(self, run: Run) -> bool:
        return wanted(run)

    def check(self, run: Run) -> None:
        check_config(run)

    def write(self, end: RunEnd) -> tuple[list[Path | None], dict[str, Any]]:
        """The per-class table of the test confusion matrix (also `test/per_class` in the
        summary) and the figures. Embedding and Grad-CAM figures need image inputs (rank-4
        batches); the embedding also needs a model that reports `aux["pre_logits"]`, Grad-CAM
        a `stage<N>` module or `evaluation.gradcam_layer`."""
        run, state = end.run, end.state
        c = run.config.evaluation
        table = confusion.per_class_metrics(end.test_sums["confusion"])
        confusion.write_per_class(table, end.directory / "test_per_class")
        drawn: list[Path | None] = [
            accuracy_vs_time(end.rows, end.directory / "accuracy_vs_time.png")
        ]
        count = max(c.embedding_examples, c.gradcam_examples)
        if count > 0 and _sample_inputs(run).ndim == 4:
            variables = run.par.to_host(model_variables(state, eval_params(state)))
            examples = _test_examples(run, variables, count)
            drawn.append(_embedding_figure(run, examples, end.directory))
            drawn.append(_gradcam_figure(run, variables, examples, end.directory))
        return drawn, {"test/per_class": table}


# -- test examples and features ---------------------------------------------------------------


def _sample_inputs(run: Run) -> np.ndarray:
    """The model input for one training example, with a batch axis of 1."""
    sample = run.transform(run.sources["train"][0])
    return np.asarray(run.task.inputs({k: np.asarray(v)[None] for k, v in sample.items()}))


def _test_examples(run: Run, variables: dict, count: int) -> dict[str, np.ndarray]:
    """The first `count` test examples through the eval pipeline: model inputs, labels, logits
    and (when the model reports them) pre-logit features.

    The model runs on each fixed-size eval batch, so it compiles once.
    """
    apply = jax.jit(lambda v, x: run.model.apply(v, x, train=False))
    parts: dict[str, list] = {"inputs": [], "label": [], "logits": [], "pre_logits": []}
    seen = 0
    batches = data.eval_batches(
        run.sources["test"], global_batch_size=run.config.eval_batch_size, transform=run.transform
    )
    for batch in batches:
        real = batch["mask"] > 0
        inputs = np.asarray(run.task.inputs(batch))
        logits, aux = apply(variables, inputs)
        parts["inputs"].append(inputs[real])
        parts["label"].append(batch["label"][real])
        parts["logits"].append(np.asarray(logits)[real])
        if "pre_logits" in aux:
            parts["pre_logits"].append(np.asarray(aux["pre_logits"], np.float32)[real])
        seen += int(real.sum())
        if seen >= count:
            break
    return {k: np.concatenate(v)[:count] for k, v in parts.items() if v}


def _embedding_figure(run: Run, examples: dict, directory: Path) -> Path | None:
    n = min(run.config.evaluation.embedding_examples, len(examples["label"]))
    if "pre_logits" not in examples or n < 4:  # t-SNE needs a few points to mean anything
        return None
    features = examples["pre_logits"][:n].reshape(n, -1)
    if not np.isfinite(features).all() or np.ptp(features, axis=0).max() == 0:
        # Identical (e.g. all-dead ReLU) or non-finite features have no 2-D map; t-SNE would
        # divide by their zero spread.
        print("no embedding plot: the pre_logits features are constant or not finite")
        return None
    coords = embedding.embed(features, seed=run.config.seed)
    return embedding.plot_embedding(coords, examples["label"][:n], directory / "test_embedding.png")


def _gradcam_figure(run: Run, variables: dict, examples: dict, directory: Path) -> Path | None:
    n = min(run.config.evaluation.gradcam_examples, len(examples["label"]))
    layer = gradcam.gradcam_layer(variables["params"], run.config.evaluation.gradcam_layer)
    if not n or layer is None:
        return None
    cam = gradcam.grad_cam(run.model, variables, examples["inputs"][:n], layer)
    path = directory / "test_gradcam.png"
    images, labels = examples["inputs"][:n], examples["label"][:n]
    return gradcam.plot_gradcam(images, cam, labels, path, layer=layer)


def _top_level_modules(table: Sequence[dict]) -> list[str]:
    """Top-level module names of the parameter table, in order of first appearance."""
    return list(dict.fromkeys(row["path"].split("/", 1)[0] for row in table))
