"""Evaluation artifacts of image classifiers (research/reporting/), the wall time in the
logged metrics, and the report's accuracy-vs-time figure.

Per-class metrics are checked against sklearn, Grad-CAM against a hand-built model whose
answer is known in closed form, the wall time against the checkpoint it resumes from.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from research import config as cfg
from research.analysis import collect
from research.checkpoint import Checkpointer
from research.errors import ConfigError
from research.reporting import confusion, gradcam
from research.tracking import Tracker, read_metrics
from research.train import loop, session
from research.train.setup import build_run

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.py"
PNG = b"\x89PNG\r\n\x1a\n"
# cnn_tiny on digits (8x8x1): stage1 -> 4x4x4, stage2 -> 2x2x8, 20 steps.
TINY = {
    "model.name": "cnn_tiny",
    "total_steps": 20,
    "eval_every_steps": 10,
    "checkpoint.every_steps": 10,
    "evaluation.embedding_examples": 120,
    "evaluation.gradcam_examples": 4,
}
SIGTERM_AT, SLEEP = 15, 1.5


# -- per-class metrics ------------------------------------------------------------------------

# Class 2 is never predicted (precision 0 by convention), class 3 never occurs (recall 0).
CONFUSION = np.array([[5, 1, 0, 2], [2, 7, 0, 0], [1, 3, 0, 1], [0, 0, 0, 0]])


def test_per_class_metrics_match_sklearn(tmp_path):
    labels = np.arange(4)
    true = np.repeat(labels, CONFUSION.sum(axis=1))
    pred = np.concatenate([np.repeat(labels, row) for row in CONFUSION])
    reference = precision_recall_fscore_support(
        true, pred, labels=labels, average=None, zero_division=0.0
    )
    table = confusion.per_class_metrics(CONFUSION)
    assert [row["class"] for row in table] == [0, 1, 2, 3]
    for name, expected in zip(("precision", "recall", "f1", "support"), reference, strict=True):
        np.testing.assert_allclose([row[name] for row in table], expected, rtol=1e-12)
    md, csv_path = confusion.write_per_class(table, tmp_path / "test_per_class")
    assert "| 0 | 0.6250 | 0.6250 | 0.6250 | 8 |" in md.read_text()  # 5/8, 5/8
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["f1"]) for r in rows] == [row["f1"] for row in table]


# -- Grad-CAM on a hand-built model -----------------------------------------------------------

SCALE = np.array([1.0, 2.0, 3.0], np.float32)
# Head over the 3 channels of ONE location (row 1, col 2) of stage1's 4x4 map: 4 classes.
HEAD = np.array([[1.0, 0.5, 0.0, -1.0], [0.0, -0.25, 1.0, -1.0], [0.5, 1.0, 0.0, -1.0]])


class _Stage(nn.Module):
    """2x2 average pooling, then one positive scale per output channel (1 -> 3 channels)."""

    @nn.compact
    def __call__(self, x, *, train):
        scale = self.param("scale", nn.initializers.ones, (3,))
        return nn.avg_pool(x, (2, 2), strides=(2, 2)) * scale


class _Probe(nn.Module):
    """Logits depend only on location (1, 2) of `stage1`'s feature map."""

    outputs: int = 4

    @nn.compact
    def __call__(self, x, *, train):
        features = _Stage(name="stage1")(x, train=train)
        picked = features[:, 1, 2, :]
        return nn.Dense(self.outputs, name="head")(picked), {"pre_logits": picked}


def _images() -> np.ndarray:
    """Two 8x8 images: dim noise, and a bright 2x2 block exactly under map location (1, 2)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 0.1, (2, 8, 8, 1)).astype(np.float32)
    images[:, 2:4, 4:6] = 1.0
    return images


def _pooled(images: np.ndarray) -> np.ndarray:
    return images.reshape(2, 4, 2, 4, 2).mean(axis=(2, 4))  # (2, 4, 4): the 2x2 averages


def _probe_variables() -> tuple[np.ndarray, dict]:
    """The probe's 4-class head and its variables (stage1 scales each channel)."""
    head = np.asarray(HEAD, np.float32)
    params = {"stage1": {"scale": SCALE}, "head": {"kernel": head, "bias": np.zeros(4)}}
    return head, {"params": params}


def test_grad_cam_weights_are_the_hand_gradient_and_the_map_peaks_at_the_read_location():
    head, variables = _probe_variables()
    images = _images()
    cam = gradcam.grad_cam(_Probe(), variables, images, "stage1")
    pooled = _pooled(images)
    # logit_k = sum_c A[1,2,c] W[c,k] with A[..., c] = pooled * scale_c: class argmax(scale @ W).
    predicted = np.argmax(SCALE @ head)
    assert predicted == 1 and cam.predicted.tolist() == [1, 1]  # scale @ W = (2.5, 3, 2, -6)
    # d logit / d A is W[:, k] at (1, 2) and 0 elsewhere; its mean over the 16 locations:
    np.testing.assert_allclose(cam.weights, np.tile(head[:, 1] / 16, (2, 1)), rtol=1e-6)
    features = pooled[..., None] * SCALE
    expected = np.maximum(features @ (head[:, 1] / 16), 0.0)
    np.testing.assert_allclose(cam.coarse, expected, rtol=1e-5)
    assert cam.maps.shape == (2, 8, 8) and cam.maps.max() == pytest.approx(1.0)
    for heat in cam.maps:
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        assert 2 <= row < 4 and 4 <= col < 6  # the image block under location (1, 2)


def test_grad_cam_of_a_single_logit_follows_the_predicted_class():
    kernel = -np.ones((3, 1), np.float32)  # z < 0 for positive features: class 0, score -z
    variables = {
        "params": {"stage1": {"scale": SCALE}, "head": {"kernel": kernel, "bias": np.zeros(1)}}
    }
    cam = gradcam.grad_cam(_Probe(outputs=1), variables, _images(), "stage1")
    assert cam.predicted.tolist() == [0, 0]
    np.testing.assert_allclose(cam.weights, np.full((2, 3), 1 / 16), rtol=1e-6)


def test_default_gradcam_layer_is_the_last_stage():
    params = {"stage1": {}, "stage10": {}, "stage2": {}, "head": {}}
    assert gradcam.gradcam_layer(params, None) == "stage10"
    assert gradcam.gradcam_layer(params, "stage1") == "stage1"
    assert gradcam.gradcam_layer({"layer1": {}, "head": {}}, None) is None


def test_gradcam_figure_shows_each_8x8_image_and_its_overlay_at_display_resolution():
    head, variables = _probe_variables()
    images = _images()
    cam = gradcam.grad_cam(_Probe(), variables, images, "stage1")
    fig = gradcam.gradcam_figure(images, cam, np.array([1, 1]), layer="stage1")
    panels = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    assert [p.shape for p in panels] == [(128, 128), (128, 128, 3)] * 2  # not 8x8
    # The input is enlarged 16x nearest-neighbour: every 16x16 block is one original pixel.
    shown = np.asarray(panels[0])
    blocks = shown.reshape(8, 16, 8, 16).transpose(0, 2, 1, 3).reshape(8, 8, -1)
    assert np.ptp(blocks, axis=-1).max() == 0
    np.testing.assert_allclose(blocks[..., 0], gradcam._displayable(images[0]), atol=1e-6)
    assert "stage1's 4x4 feature map" in fig.get_suptitle()


@pytest.mark.parametrize(("coarse_shape", "shape"), [((4, 4), (128, 128)), ((2, 3), (64, 96))])
def test_upsampled_gradcam_map_keeps_the_coarse_mean_and_peak_location(coarse_shape, shape):
    coarse = np.random.default_rng(1).uniform(0.0, 1.0, coarse_shape).astype(np.float32)
    coarse[1, 1] = 2.0  # a clear peak (an edge cell near the peak's value could win after blending)
    heat = gradcam.upsample_map(coarse, shape)
    assert heat.shape == shape and 0.9 < heat.max() <= 1.0 + 1e-6
    # Bilinear upsampling by an integer factor (clamped at the edges) preserves the mean.
    assert heat.mean() == pytest.approx(coarse.mean() / coarse.max(), rel=1e-5)
    factor = shape[0] // coarse_shape[0]
    row, col = np.unravel_index(np.argmax(heat), shape)
    assert (row // factor, col // factor) == np.unravel_index(np.argmax(coarse), coarse_shape)
    assert not gradcam.upsample_map(np.zeros(coarse_shape), shape).any()


def test_gradcam_overlay_enlarges_small_images_only():
    coarse = np.array([[0.0, 1.0], [0.0, 0.0]])
    shown, overlay = gradcam.gradcam_overlay(np.zeros((8, 8, 1)), coarse)
    assert shown.shape == (128, 128) and overlay.shape == (128, 128, 3)
    assert overlay.min() >= 0.0 and overlay.max() <= 1.0
    # The hot quadrant (top right) is red-tinted, the cold one (bottom left) blue-tinted.
    assert overlay[10, 118, 0] > overlay[10, 118, 2] and overlay[118, 10, 2] > overlay[118, 10, 0]
    shown, overlay = gradcam.gradcam_overlay(np.zeros((200, 160, 3)), coarse)
    assert shown.shape == (200, 160, 3) and overlay.shape == (200, 160, 3)


# -- a tiny run end to end --------------------------------------------------------------------


def _config(data_dir: str, **overrides):
    config = cfg.load_config_file(SMOKE)
    cfg.apply_overrides(config, {"data.data_dir": data_dir, **TINY, **overrides})
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Two runs in one sweep directory: `a` uninterrupted, `b` stopped by SIGTERM after step 15
    (having slept first, so its checkpointed training time is clearly above a fresh start's)
    and resumed. Returns the sweep root, the checkpointed seconds and the resume's duration."""
    root = tmp_path_factory.mktemp("sweep")
    assert loop.train_and_evaluate(_config(data_dir), root / "a").status == loop.COMPLETED
    config = _config(data_dir, **{"optimizer.learning_rate": 5e-3})
    log = Tracker.log

    def slow_then_sigterm(self, step, metrics):
        log(self, step, metrics)
        if step == SIGTERM_AT - 1 and "train/loss" in metrics:
            time.sleep(SLEEP)
        if step == SIGTERM_AT and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Tracker, "log", slow_then_sigterm)
        assert loop.train_and_evaluate(config, root / "b").status == loop.PREEMPTED
    run = build_run(config)
    with Checkpointer(root / "b" / "checkpoints") as ckpt:
        assert ckpt.latest_step() == SIGTERM_AT
        abstract = run.par.abstract_state(run.init_fn, np.zeros(2, np.uint32))
        seconds = ckpt.restore(abstract, SIGTERM_AT)[2][session.TRAIN_SECONDS]
    began = time.monotonic()
    assert loop.train_and_evaluate(config, root / "b").status == loop.COMPLETED
    return root, seconds, time.monotonic() - began


def _clock(workdir: Path, split: str) -> dict[int, float]:
    key = f"{split}/wall_time"
    rows = [r for r in read_metrics(workdir) if key in r and f"{split}/loss" in r]
    return {r["step"]: r[key] for r in rows}


@pytest.mark.slow
def test_run_writes_figures_and_per_class_summary(runs):
    workdir = runs[0] / "a"
    for name in ("test_embedding", "test_gradcam", "accuracy_vs_time"):
        assert (workdir / "plots" / f"{name}.png").read_bytes()[:8] == PNG, name
    summary = json.loads((workdir / "summary.json").read_text())
    table = summary["test/per_class"]
    assert table == confusion.per_class_metrics(summary["test/confusion_matrix"])
    support = np.array([row["support"] for row in table])
    assert support.sum() == 360
    # Support-weighted recall is the accuracy; the macro F1 is the summary's.
    recall = np.array([row["recall"] for row in table])
    assert recall @ support / support.sum() == pytest.approx(summary["test/accuracy"])
    assert np.mean([row["f1"] for row in table]) == pytest.approx(summary["test/f1"])
    with (workdir / "plots" / "test_per_class.csv").open() as f:
        assert [int(r["support"]) for r in csv.DictReader(f)] == support.tolist()


@pytest.mark.slow
def test_wall_time_increases_and_eval_rows_carry_it(runs):
    workdir = runs[0] / "a"
    train, evals = _clock(workdir, "train"), _clock(workdir, "eval")
    assert sorted(train) == list(range(1, 21)) and sorted(evals) == [10, 20]
    times = [train[s] for s in sorted(train)]
    assert times[0] > 0 and all(b > a for a, b in zip(times, times[1:], strict=False))
    assert train[10] < evals[10] < train[11] and train[20] < evals[20]  # evals logged after


@pytest.mark.slow
def test_resumed_run_continues_the_checkpointed_wall_time(runs):
    root, seconds, resume_duration = runs
    train = _clock(root / "b", "train")
    assert sorted(train) == list(range(1, 21))
    assert train[SIGTERM_AT - 1] + SLEEP <= train[SIGTERM_AT] <= seconds
    # After the resume the clock starts from the checkpoint's value, not from zero.
    assert seconds < train[SIGTERM_AT + 1] < seconds + resume_duration
    times = [train[s] for s in sorted(train)]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    summary = json.loads((root / "b" / "summary.json").read_text())
    assert summary["train/wall_time"] == train[20]


@pytest.mark.slow
def test_report_draws_accuracy_against_step_and_wall_time(runs):
    root = runs[0]
    command = [sys.executable, "launch/report.py", str(root), "--curves=optimizer.learning_rate"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (root / "report" / "accuracy_vs_time.png").read_bytes()[:8] == PNG
    for name in ("a", "b"):
        steps, accuracy, times = collect.convergence(collect.load_run(root / name), "eval/accuracy")
        rows = [r for r in read_metrics(root / name) if "eval/accuracy" in r]
        assert steps.tolist() == [10, 20]
        assert accuracy.tolist() == [r["eval/accuracy"] for r in rows]
        assert times.tolist() == [r["eval/wall_time"] for r in rows]
    command[-1] = "--curves=optimizer.learning_rat"
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--curves=optimizer.learning_rat: no run has this config key" in result.stderr


@pytest.mark.parametrize(
    "layer,message", [("stage9", "no top-level module"), ("fc", "outputs shape (1, 16)")]
)
def test_bad_gradcam_layer_fails_before_anything_is_written(tmp_path, data_dir, layer, message):
    config = _config(data_dir, **{"evaluation.gradcam_layer": layer})
    pattern = re.escape(f"evaluation.gradcam_layer='{layer}'") + ".*" + re.escape(message)
    with pytest.raises(ConfigError, match=pattern):
        loop.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
