"""The training loop end to end: workdir contents, resume after SIGTERM/SIGKILL, bad input."""

import json
import os
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from train_cli import SMOKE, one_error_line, train

from research import config as cfg
from research.checkpoint import Checkpointer
from research.errors import EXIT_DIVERGED, EXIT_PREEMPTED, EXIT_USER_ERROR
from research.tracking import Tracker, read_metrics
from research.train import loop
from research.train.setup import build_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _cli(workdir, data_dir, *overrides, signal_at=None, env=None):
    at = None if signal_at is None else (signal_at[0], "step", signal_at[1])
    return train(workdir, data_dir, *overrides, signal_at=at, env=env)


def _train_losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def _summary(workdir) -> dict:
    return json.loads((Path(workdir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, data_dir) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _cli(workdir, data_dir)
    assert result.returncode == 0, result.stderr
    return workdir, result.stdout


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run) -> Path:
    return uninterrupted_run[0]


def test_a_run_ends_with_one_closing_line(uninterrupted_run):
    workdir, stdout = uninterrupted_run
    summary = _summary(workdir)
    last = stdout.strip().splitlines()[-1]
    expected = f"test/accuracy={summary['test/accuracy']:.4g}, test/loss={summary['test/loss']:.4g}"
    assert last.startswith("done in ") and last.endswith(f": {expected}; workdir {workdir}")


def test_workdir_holds_the_contracted_files(uninterrupted):
    for name in ("config.json", "manifest.json", "metrics.jsonl", "summary.json"):
        assert (uninterrupted / name).is_file(), name
    assert (uninterrupted / "plots" / "learning_curves.png").is_file()
    assert (uninterrupted / "plots" / "test_confusion.png").is_file()
    steps = sorted(
        int(p.name) for p in (uninterrupted / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert steps[-1] == 60 and len(steps) >= 2
    summary = _summary(uninterrupted)
    assert summary["step"] == 60
    assert 0.5 < summary["test/accuracy"] <= 1.0
    confusion = np.array(summary["test/confusion_matrix"])
    assert confusion.sum() == 360  # every test example counted once, padding excluded
    assert np.isclose(np.trace(confusion) / confusion.sum(), summary["test/accuracy"])
    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert manifest["mesh_shape"] == {"data": 8} and manifest["seeds"] == {"seed": 0}
    assert json.loads((uninterrupted / "config.json").read_text())["total_steps"] == 60
    assert sorted(_train_losses(uninterrupted)) == list(range(1, 61))


def _assert_rerun_equals_uninterrupted(workdir, data_dir, uninterrupted):
    """Rerunning the stopped run finishes it with exactly the uninterrupted run's numbers."""
    second = _cli(workdir, data_dir)
    assert second.returncode == 0, second.stderr
    assert _train_losses(workdir) == _train_losses(uninterrupted)
    resumed, reference = _summary(workdir), _summary(uninterrupted)
    for key in ("test/accuracy", "test/loss", "eval/accuracy", "train/loss"):
        assert resumed[key] == reference[key], key


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,at", [("SIGTERM", 27), ("SIGKILL", 33), ("SIGINT", 14), ("SIGUSR2", 21)]
)
def test_killed_and_resumed_equals_uninterrupted(tmp_path, data_dir, uninterrupted, sig, at):
    first = _cli(tmp_path, data_dir, signal_at=(sig, at))
    if sig != "SIGKILL":  # Ctrl-C and the time-limit warning save and stop like SIGTERM
        assert first.returncode == EXIT_PREEMPTED, first.stderr
        assert f"stopped by {sig}" in first.stderr and "rerun to resume" in first.stderr
    else:
        assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "summary.json").exists()
    _assert_rerun_equals_uninterrupted(tmp_path, data_dir, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["eval#3", "test#1"])
def test_sigterm_during_the_final_passes_exits_75_and_a_rerun_finishes(
    tmp_path, data_dir, uninterrupted, where
):
    # eval#3 is the final eval, before the last checkpoint is saved (the stop waits for it);
    # test#1 comes after it has committed (the stop is immediate).
    first = train(tmp_path, data_dir, signal_at=("SIGTERM", "evaluate", where))
    assert first.returncode == EXIT_PREEMPTED, first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith("stopped by SIGTERM")
    assert not (tmp_path / "summary.json").exists()
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 60
    _assert_rerun_equals_uninterrupted(tmp_path, data_dir, uninterrupted)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stop_signal_during_start_up_exits_75_with_nothing_lost(tmp_path, data_dir, sig):
    result = train(tmp_path / "run", data_dir, signal_at=(sig, "startup", "-"))
    assert result.returncode == EXIT_PREEMPTED, result.stderr
    assert result.stderr.strip() == f"stopped by {sig}{' (Ctrl-C)' * (sig == 'SIGINT')}: " + (
        "nothing unsaved was lost; rerun to resume"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.learning_rat=0.1", "learning_rat"),
        ("optimizer.learning_rate=fast", "learning_rate"),
        ("model.name=resnet9000", "unknown model.name 'resnet9000'"),
        ("data.name=mnist", "tfds build mnist"),
        ("batch_size=12", "not divisible by the 8 devices"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, data_dir, override, message):
    one_error_line(_cli(tmp_path / "run", data_dir, override), message)
    assert not (tmp_path / "run").exists()


def test_bad_init_from_and_wandb_mode_exit_2_before_writing(tmp_path, data_dir):
    (tmp_path / "empty").mkdir()
    result = _cli(tmp_path / "run", data_dir, f"init_from={tmp_path / 'empty'}")
    one_error_line(result, "no complete checkpoint")
    result = _cli(tmp_path / "run", data_dir, env={"WANDB_MODE": "sometimes"})
    one_error_line(result, "WANDB_MODE='sometimes'")
    assert not (tmp_path / "run").exists()
    (tmp_path / "afile").write_text("x")
    one_error_line(_cli(tmp_path / "afile", data_dir), "is not a directory")
    assert (tmp_path / "afile").read_text() == "x"


def test_init_from_takes_params_even_with_another_optimizer(tmp_path, data_dir, uninterrupted):
    frozen = ("optimizer.name=sgd", "optimizer.learning_rate=0.0", "optimizer.warmup_steps=0")
    args = (f"init_from={uninterrupted}", "total_steps=2", "eval_every_steps=1", *frozen)
    result = _cli(tmp_path, data_dir, *args, "checkpoint.every_steps=1")
    assert result.returncode == 0, result.stderr
    # With a zero learning rate the warm-started model is the source run's final model.
    assert _summary(tmp_path)["test/loss"] == pytest.approx(_summary(uninterrupted)["test/loss"])


def test_workdir_with_another_config_is_refused_untouched(tmp_path, data_dir, uninterrupted):
    before = {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()}
    result = _cli(uninterrupted, data_dir, "optimizer.learning_rate=0.5")
    assert result.returncode == EXIT_USER_ERROR
    assert "optimizer.learning_rate: 0.01 -> 0.5" in result.stderr
    after = {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()}
    assert after == before


def test_diverging_run_exits_3_and_keeps_a_good_checkpoint(tmp_path, data_dir):
    overrides = {
        "optimizer.name": "sgd",
        "optimizer.learning_rate": 1e15,
        "optimizer.schedule": "constant",
        "checkpoint.every_steps": 1,
        "checkpoint.best_metric": "",
        "divergence.loss_factor": 0,  # this test is about the NaN guard alone
    }
    result = _cli(tmp_path, data_dir, *(f"{k}={v}" for k, v in overrides.items()))
    assert result.returncode == EXIT_DIVERGED, result.stderr
    assert "diverged at step" in result.stderr
    assert "the latest checkpoint (step" in result.stderr
    rows = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    bad_step = rows[-1]["step"]
    assert bad_step > 1
    assert not all(np.isfinite(rows[-1][f"train/{k}"]) for k in ("loss", "grad_norm", "param_norm"))
    config = cfg.load_config_file(SMOKE)
    cfg.apply_overrides(config, {"data.data_dir": data_dir, **overrides})
    run = build_run(config)
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        step = ckpt.latest_step()
        assert step is not None and step < bad_step
        state, _, _ = ckpt.restore(run.par.abstract_state(run.init_fn, jax.random.PRNGKey(0)))
    assert int(state.step) == step
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_checkpoint_from_8_devices_resumes_on_1(tmp_path, data_dir, monkeypatch):
    def run(workdir, **overrides):
        config = cfg.load_config_file(SMOKE)
        cfg.apply_overrides(config, {"data.data_dir": data_dir, **overrides})
        return loop.train_and_evaluate(config, workdir)

    log = Tracker.log

    def log_then_sigterm(self, step, metrics):
        log(self, step, metrics)
        if step == 30 and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(Tracker, "log", log_then_sigterm)
        assert run(tmp_path / "moved", **{"parallel.num_devices": 8}).status == loop.PREEMPTED
    assert run(tmp_path / "moved", **{"parallel.num_devices": 1}).status == loop.COMPLETED
    assert run(tmp_path / "single", **{"parallel.num_devices": 1}).status == loop.COMPLETED
    moved, single = _train_losses(tmp_path / "moved"), _train_losses(tmp_path / "single")
    assert sorted(moved) == sorted(single) == list(range(1, 61))
    np.testing.assert_allclose(list(moved.values()), list(single.values()), rtol=1e-4)
    manifest = json.loads((tmp_path / "moved" / "manifest.json").read_text())
    assert manifest["mesh_shape"] == {"data": 1}
    assert [h["parallel"]["devices"] for h in manifest["history"]] == [8]


def test_steps_compile_once_also_after_restore(tmp_path, data_dir, monkeypatch):
    runs = []

    def build_and_keep(config, *args):
        runs.append(build_run(config, *args))
        return runs[-1]

    log = Tracker.log

    def log_then_sigterm(self, step, metrics):
        log(self, step, metrics)
        if step == 25 and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "build_run", build_and_keep)
    config = cfg.load_config_file(SMOKE)
    cfg.apply_overrides(config, {"data.data_dir": data_dir})
    with monkeypatch.context() as m:
        m.setattr(Tracker, "log", log_then_sigterm)
        assert loop.train_and_evaluate(config, tmp_path).status == loop.PREEMPTED
    assert loop.train_and_evaluate(config, tmp_path).status == loop.COMPLETED
    # Log, eval (padded last batch) and checkpoint steps, and a restored state, all reuse
    # the first compilation: no Python scalars, shape or sharding changes leak into the steps.
    for run in runs:
        assert run.train_step._cache_size() == 1
        assert run.eval_step._cache_size() == 1


def _in_process(workdir, data_dir, overrides, monkeypatch, sigterm_at=None, config_path=SMOKE):
    """Train in this process; with `sigterm_at`, SIGTERM arrives right after that step's log."""
    config = cfg.load_config_file(config_path)
    cfg.apply_overrides(config, {"data.data_dir": data_dir, **overrides})
    if sigterm_at is None:
        return loop.train_and_evaluate(config, workdir)
    log = Tracker.log

    def log_then_sigterm(self, step, metrics):
        log(self, step, metrics)
        if step == sigterm_at and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(Tracker, "log", log_then_sigterm)
        return loop.train_and_evaluate(config, workdir)


def test_unfreezing_resumes_exactly_across_the_boundary(tmp_path, data_dir, monkeypatch):
    overrides = {
        "param_rules": ((r"head/.*", "head", 1.0, True), (r".*", "body", 1.0, True)),
        "unfreeze.groups": ("body",),
        "unfreeze.at_steps": (30,),
    }
    whole = _in_process(tmp_path / "whole", data_dir, overrides, monkeypatch)
    first = _in_process(tmp_path / "split", data_dir, overrides, monkeypatch, sigterm_at=24)
    assert (whole.status, first.status) == (loop.COMPLETED, loop.PREEMPTED)
    assert _in_process(tmp_path / "split", data_dir, overrides, monkeypatch).status == "completed"
    assert _train_losses(tmp_path / "split") == _train_losses(tmp_path / "whole")
    table = (tmp_path / "whole" / "param_rules.txt").read_text()
    assert "layer1/kernel  64x16  body" in table and "head/kernel    16x10  head" in table
    # Before step 30 only the head trains: at the step-20 checkpoint the body is as initialised.
    config = cfg.load_config_file(SMOKE)
    cfg.apply_overrides(config, {"data.data_dir": data_dir, **overrides})
    run = build_run(config)
    fresh = run.init_fn(jax.random.PRNGKey(0))
    with Checkpointer(tmp_path / "whole" / "checkpoints") as ckpt:
        at20, _, _ = ckpt.restore(run.par.abstract_state(run.init_fn, jax.random.PRNGKey(0)), 20)
        at40, _, _ = ckpt.restore(run.par.abstract_state(run.init_fn, jax.random.PRNGKey(0)), 40)
    np.testing.assert_array_equal(at20.params["layer1"]["kernel"], fresh.params["layer1"]["kernel"])
    assert not np.array_equal(at40.params["layer1"]["kernel"], fresh.params["layer1"]["kernel"])
    assert not np.array_equal(at20.params["head"]["kernel"], fresh.params["head"]["kernel"])
