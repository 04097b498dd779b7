"""Reduce-on-plateau, early stopping and parameter EMA: decisions, resume, final state."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_loop import _in_process, _train_losses

from research.config import base_config
from research.errors import DivergedError
from research.models import get_model
from research.optim import build_optimizer
from research.tasks import ClassificationTask
from research.tracking import read_metrics
from research.train import loop
from research.train.hooks import DivergenceGuard, Monitor
from research.train.state import make_init_fn
from research.train.step import make_train_step
from research.train.step_parts import MovingAverage, default_parts


def test_plateau_cuts_after_patience_evals_without_improvement():
    m = Monitor("eval/loss", "min", plateau=True, plateau_factor=0.5, plateau_patience=2)
    for value in (1.0, 0.9, 0.95, 0.92, 0.91, 0.5, 0.6, 0.7):
        m.observe(0, value)
    # 0.95 and 0.92 do not beat 0.9: cut to 0.5; 0.91 again no, 0.5 improves, 0.6, 0.7: cut.
    assert m.lr_scale == 0.25 and m.stopped is None


def test_early_stopping_with_min_delta():
    m = Monitor("eval/accuracy", "max", patience=2, min_delta=0.01)
    m.observe(5, 0.80)
    m.observe(10, 0.805)  # not better by more than 0.01
    assert m.stopped is None
    m.observe(15, 0.809)
    assert "did not improve by more than 0.01 for 2 evals (stopped at step 15)" in m.stopped
    resumed = Monitor("eval/accuracy", "max", patience=2, min_delta=0.01, state=m.state)
    assert resumed.stopped == m.stopped and resumed.state["best"] == 0.80


def test_ema_follows_the_parameters():
    model = get_model({"name": "mlp_tiny"}, num_classes=10)
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1))
    c = base_config()
    c.total_steps, c.optimizer.schedule = 10, "constant"
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]
    opt = build_optimizer(c, params)
    parts = (*default_parts(ClassificationTask(10), opt), MovingAverage(0.9))
    state = make_init_fn(model, opt.tx, x, parts)(jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(model, ClassificationTask(10), opt, parts))
    expected = state.params
    for _ in range(3):
        state, _ = step(state, {"image": x, "label": jnp.arange(8)})
        expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, expected, state.params)
    for a, b in zip(jax.tree.leaves(state.extras["ema"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


EARLY = {"eval_every_steps": 5, "checkpoint.every_steps": 5, "checkpoint.best_metric": "eval/loss"}


@pytest.mark.slow
def test_early_stopping_restores_the_best_checkpoint(tmp_path, monkeypatch):
    data_dir = str(tmp_path / "tfds")
    overrides = {
        **EARLY,
        "data.data_dir": data_dir,
        "checkpoint.best_mode": "min",
        "early_stopping.patience": 2,
        "early_stopping.min_delta": 100.0,  # nothing counts as an improvement after the first
    }
    result = _in_process(tmp_path / "run", data_dir, overrides, monkeypatch)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result.status == loop.COMPLETED
    assert "stopped at step 15" in summary["early_stopping/reason"]
    assert max(_train_losses(tmp_path / "run")) == 15
    evals = {r["step"]: r["eval/loss"] for r in read_metrics(tmp_path / "run") if "eval/loss" in r}
    best = min((s for s in evals if s <= 15), key=evals.get)
    # The final state is the best checkpoint's, and so is the final eval.
    assert summary["early_stopping/final_step"] == best
    assert summary["eval/loss"] == pytest.approx(evals[best], rel=1e-6)


@pytest.mark.slow
def test_plateau_schedule_resumes_exactly(tmp_path, monkeypatch):
    data_dir = str(tmp_path / "tfds")
    overrides = {
        **EARLY,
        "data.data_dir": data_dir,
        "optimizer.schedule": "plateau",
        "optimizer.warmup_steps": 0,
        "optimizer.plateau_patience": 1,
        "optimizer.plateau_min_delta": 100.0,  # cut at every eval after the first
        "checkpoint.best_mode": "max",
        "checkpoint.best_metric": "eval/accuracy",
    }
    _in_process(tmp_path / "whole", data_dir, overrides, monkeypatch)
    _in_process(tmp_path / "split", data_dir, overrides, monkeypatch, sigterm_at=17)
    _in_process(tmp_path / "split", data_dir, overrides, monkeypatch)
    assert _train_losses(tmp_path / "split") == _train_losses(tmp_path / "whole")
    rows = read_metrics(tmp_path / "whole")
    scales = [r["eval/lr_scale"] for r in rows if "eval/lr_scale" in r]
    assert scales[:4] == [1.0, 0.5, 0.25, 0.125]
    lrs = {r["step"]: r["train/learning_rate"] for r in rows if "train/learning_rate" in r}
    assert lrs[6] == lrs[4]  # the first eval (step 5) only sets the reference
    assert lrs[11] == pytest.approx(0.5 * lrs[4]) and lrs[16] == pytest.approx(0.25 * lrs[4])


@pytest.mark.slow
def test_distillation_from_a_teacher_run(tmp_path, monkeypatch):
    data_dir = str(tmp_path / "tfds")
    assert _in_process(tmp_path / "teacher", data_dir, {}, monkeypatch).status == "completed"
    # A student that starts as the teacher and does not move: the KL term is exactly zero.
    same = {
        "distill.teacher": str(tmp_path / "teacher"),
        "distill.temperature": 2.0,
        "distill.weight": 1.0,
        "init_from": str(tmp_path / "teacher"),
        "optimizer.learning_rate": 0.0,
        "optimizer.warmup_steps": 0,
        "model.dropout_rate": 0.0,  # train-mode logits equal the teacher's inference logits
        "total_steps": 3,
        "eval_every_steps": 3,
        "checkpoint.every_steps": 3,
    }
    _in_process(tmp_path / "copy", data_dir, same, monkeypatch)
    kl = [r["train/distill_kl"] for r in read_metrics(tmp_path / "copy") if "train/distill_kl" in r]
    assert kl and max(kl) == pytest.approx(0.0, abs=1e-6)
    # A fresh student learns from the teacher: the KL term falls while it trains.
    fresh = {"distill.teacher": str(tmp_path / "teacher"), "distill.weight": 0.7}
    _in_process(tmp_path / "student", data_dir, fresh, monkeypatch)
    rows = [r for r in read_metrics(tmp_path / "student") if "train/distill_kl" in r]
    assert rows[-1]["train/distill_kl"] < 0.5 * rows[0]["train/distill_kl"]
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["test/accuracy"] > 0.5


def _losses(guard, values, start=1):
    for step, value in enumerate(values, start=start):
        guard.check({"train/loss": value}, step)


def test_divergence_guard_stops_a_finite_blow_up_after_patience_checks():
    guard = DivergenceGuard(loss_factor=10.0, patience=3)
    _losses(guard, [2.0, 1.5, 25.0, 1.0, 30.0, 1e6])  # a lone spike resets at the next check
    with pytest.raises(DivergedError, match=r"step 7: train/loss=1e\+12 .* since step 5"):
        _losses(guard, [1e12], start=7)


def test_divergence_guard_resumes_from_its_state_and_can_be_off():
    guard = DivergenceGuard(loss_factor=10.0, patience=2)
    _losses(guard, [2.0, 50.0])
    resumed = DivergenceGuard(
        loss_factor=10.0, patience=2, state=json.loads(json.dumps(guard.state))
    )
    with pytest.raises(DivergedError, match="above 10x its initial value \\(2\\)"):
        _losses(resumed, [60.0], start=3)
    off = DivergenceGuard(loss_factor=0, patience=1)
    _losses(off, [2.0, 1e30, 1e30])
    assert not off.needs_reference
    with pytest.raises(DivergedError, match="train/loss=nan"):
        _losses(off, [float("nan")])


def test_divergence_guard_limit_stays_above_a_negative_initial_loss():
    guard = DivergenceGuard(loss_factor=10.0, patience=1)
    _losses(guard, [-100.0, 700.0])  # limit -100 + 9 * 100 = 800
    with pytest.raises(DivergedError):
        _losses(guard, [900.0], start=3)
