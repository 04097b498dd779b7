"""Continual learning: permuted tasks, stage boundaries, accuracy matrix, EWC across resume."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from test_loop import _in_process, _train_losses

from research.errors import ConfigError
from research.tasks import PermutedClassificationTask, get_task

CONFIG = Path(__file__).parents[1] / "configs" / "continual" / "permuted_digits.py"


def test_permutations_and_stages():
    task = PermutedClassificationTask(num_classes=10, num_tasks=3, input_size=6, steps_per_task=5)
    perms = task.permutations()
    assert (perms[0] == np.arange(6)).all() and sorted(perms[2]) == list(range(6))
    images = np.arange(12, dtype=np.float32).reshape(2, 2, 3, 1)
    batch = {
        "image": jnp.asarray(images),
        "label": jnp.zeros(2, jnp.int32),
        "task": jnp.array([0, 2]),
    }
    out = np.asarray(task.inputs(batch))
    np.testing.assert_array_equal(out[0], images[0])
    np.testing.assert_array_equal(out[1], task.permute(images[1:], 2)[0])
    assert [task.stage(s) for s in (0, 4, 5, 14, 99)] == [0, 0, 1, 2, 2]
    assert task.boundaries() == [5, 10, 15]
    tagged = task.prepare({"label": jnp.zeros(4, jnp.int32)}, jnp.int32(7))
    assert tagged["task"].tolist() == [1, 1, 1, 1]


def test_stages_must_divide_the_run():
    with pytest.raises(ConfigError, match="must divide total_steps=10"):
        get_task(
            {"name": "permuted_classification", "num_tasks": 3}, num_classes=10, total_steps=10
        )


def _run(workdir, data_dir, monkeypatch, sigterm_at=None, **overrides):
    small = {"total_steps": 40, "eval_every_steps": 10, "checkpoint.every_steps": 10}
    small |= {"log_every_steps": 1, "ewc.fisher_examples": 64, "tracking.progress": False}
    return _in_process(
        workdir, data_dir, {**small, **overrides}, monkeypatch, sigterm_at, config_path=CONFIG
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode,weight", [("ewc", 100.0), ("l2sp", 0.01)])
def test_continual_run_resumes_exactly_across_a_consolidation(tmp_path, monkeypatch, mode, weight):
    data_dir = str(tmp_path / "tfds")
    ewc = {"ewc.mode": mode, "ewc.weight": weight}
    whole = _run(tmp_path / "whole", data_dir, monkeypatch, **ewc)
    split = _run(tmp_path / "split", data_dir, monkeypatch, sigterm_at=15, **ewc)
    assert split.status == "preempted"
    _run(tmp_path / "split", data_dir, monkeypatch, **ewc)
    # The resumed run consolidated task 0 at step 20 itself; its losses are the same.
    assert _train_losses(tmp_path / "split") == _train_losses(tmp_path / "whole")
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    matrix = summary["test/accuracy_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert matrix[0][0] > 0.5 and matrix[1][1] > 0.5  # each task was learned in its stage
    assert matrix[0][1] < 0.5  # task 1 (permuted) is unseen after stage 0
    assert summary["test/accuracy"] == pytest.approx(matrix[1][1])
    assert whole.status == "completed"
