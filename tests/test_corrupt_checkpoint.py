"""A damaged checkpoint through the CLI: the rerun resumes from the newest intact one, exactly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from research.errors import EXIT_PREEMPTED
from research.tracking import read_metrics

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.py"

# Runs the CLI, but sends itself `signal` right after the metrics of `step` are logged (as in
# tests/test_loop.py): a deterministic stand-in for a scheduler's SIGTERM at that moment.
KILLER = """
import os, runpy, signal, sys
from research.tracking import Tracker
sig, at = getattr(signal, sys.argv[1]), int(sys.argv[2])
log = Tracker.log
def log_then_signal(self, step, metrics):
    log(self, step, metrics)
    if step == at and "train/loss" in metrics:
        os.kill(os.getpid(), sig)
Tracker.log = log_then_signal
sys.argv = ["launch/train.py", *sys.argv[3:]]
runpy.run_path("launch/train.py", run_name="__main__")
"""


def _cli(workdir, data_dir, signal_at=None):
    args = [f"--config={SMOKE}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
    if signal_at is None:
        cmd = [sys.executable, "launch/train.py", *args]
    else:
        cmd = [sys.executable, "-c", KILLER, signal_at[0], str(signal_at[1]), *args]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


def _train_losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_damaged_latest_checkpoint_resumes_from_the_previous_one(tmp_path):
    data_dir, reference, workdir = tmp_path / "tfds", tmp_path / "reference", tmp_path / "run"
    uninterrupted = _cli(reference, data_dir)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    # SIGTERM at a checkpoint step: the periodic save is the preemption save; 20 and 40 remain.
    first = _cli(workdir, data_dir, signal_at=("SIGTERM", 40))
    assert first.returncode == EXIT_PREEMPTED, first.stderr
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["20", "40"]
    # Zero 100 bytes amid step 40's array bytes: the OCDBT files over 4 KiB under `state/**/d/`,
    # every copy (orbax's merge may leave the root database reading its own or the process's).
    # On 8 devices the arrays are written in replica slices small enough to be inlined in
    # zstd-compressed B-tree nodes, so this is a read error: before, a long traceback (exit 1).
    # Values that read back changed (on 1 device, before: "diverged", exit 3) are caught by the
    # CRCs; tests/test_checkpoint.py covers that case.
    for path in (checkpoints / "40" / "state").rglob("*"):
        if path.parent.name == "d" and path.stat().st_size > 4096:
            with path.open("r+b") as f:
                f.seek(path.stat().st_size // 2)
                f.write(bytes(100))

    second = _cli(workdir, data_dir)
    assert second.returncode == 0, second.stderr
    assert f"warning: checkpoint step 40 in {checkpoints} is damaged (" in second.stderr
    assert "resuming from step 20" in second.stderr
    assert "Traceback" not in second.stderr and second.stderr.count("warning: ") == 1
    assert _train_losses(workdir) == _train_losses(reference)  # resuming from 20 is exact
    assert (checkpoints / "40.damaged").is_dir() and (checkpoints / "40").is_dir()
