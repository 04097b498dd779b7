"""Sweeps and runs on a real SLURM cluster: `launch/slurm/local_cluster.sh up` (one node on
loopback, CPU only for the runs). `make test-cluster` runs this file; `make test` skips it.

Covers what a night of cluster compute depends on: a CPU-only sweep that runs to completion and
reports, a rejected submission, no double submission, a preemption (`scontrol requeue`) and the
time-limit warning (submitit's USR2) each resumed with no step lost and final metrics equal to an
uninterrupted run, and one run as two `srun` processes equal to one process.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from research import data
from research.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return state.returncode == 0 and state.stdout.split()[:1] in (["idle"], ["mixed"])


pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not _cluster_up(), reason="no SLURM cluster: launch/slurm/local_cluster.sh up"
    ),
]

# get_config(arg): the smoke MLP for `arg` steps (default 60), tracking quiet, data from the
# test's own directory; get_sweep: two seeds.
CONFIG = '''
"""A small MLP on digits for the cluster tests."""

import ml_collections

from research.config import base_config


def get_config(arg=None):
    """`arg` training steps (default 60)."""
    c = base_config()
    c.batch_size = 32
    c.total_steps = int(arg or 60)
    c.log_every_steps = 5
    c.eval_every_steps = 200
    c.model = ml_collections.ConfigDict({"name": "mlp_tiny", "dropout_rate": 0.0})
    c.optimizer.learning_rate = 1e-2
    c.checkpoint.every_steps = 200
    c.data.data_dir = DATA_DIR
    c.tracking.progress = False
    c.tracking.plots = False
    c.tracking.wandb_mode = "disabled"
    return c


def get_sweep(arg=None):
    """Two seeds."""
    return [{"seed": 0}, {"seed": 1}]
'''
SLURM_FLAGS = ["--backend=slurm", "--gpus_per_node=0", "--cpus_per_task=1", "--timeout_min=10"]
JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """The config file, with the digits dataset built once (jobs must not race to build it)."""
    directory = tmp_path_factory.mktemp("cluster")
    data_dir = directory / "tfds"
    data.dataset_info("digits", str(data_dir))
    path = directory / "small.py"
    path.write_text(CONFIG.replace("DATA_DIR", repr(str(data_dir))))
    return path


def _env(**extra: str) -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "JAX_PLATFORMS": "cpu", **extra}


def _run(argv: list, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
    )


def _sweep(config: Path, workdir: Path, *flags: str) -> subprocess.CompletedProcess:
    return _run(["launch/sweep.py", f"--config={config}", f"--workdir={workdir}", *flags])


def _jobs(workdir: Path) -> dict[str, str]:
    return json.loads((workdir / "slurm" / "jobs.json").read_text())


def _queued(job_ids) -> set[str]:
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i"], capture_output=True, text=True
    ).stdout
    return set(out.split()) & set(job_ids)


def _wait(condition, what: str, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _logged_step(workdir: Path) -> int:
    """The last training step in metrics.jsonl (0 before the first)."""
    try:
        rows = read_metrics(workdir)
    except (OSError, ValueError):
        return 0
    return max((r["step"] for r in rows if "train/loss" in r), default=0)


def _train_losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def _final(workdir: Path) -> dict[str, float]:
    summary = json.loads((workdir / "summary.json").read_text())
    return {
        k: v
        for k, v in summary.items()
        if k.startswith(("test/", "eval/")) and isinstance(v, float) and "wall_time" not in k
    }


@pytest.fixture(scope="module")
def uninterrupted(config, tmp_path_factory) -> Path:
    """The 600-step run of seed 0, trained here without interruption."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _run(["launch/train.py", f"--config={config}:600", f"--workdir={workdir}"])
    assert result.returncode == 0, result.stderr
    return workdir


def test_cpu_only_sweep_runs_to_completion_is_not_submitted_twice_and_reports(config, tmp_path):
    workdir = tmp_path / "sweep"
    first = _sweep(config, workdir, *SLURM_FLAGS, "--parallel=2")
    assert first.returncode == 0, first.stderr
    assert "--gpus-per-node" not in first.stdout and "#SBATCH --ntasks-per-node=1" in first.stdout
    jobs = _jobs(workdir)
    assert sorted(jobs) == ["seed-0", "seed-1"]
    # Relaunched while the array is queued or running: nothing is submitted a second time.
    again = _sweep(config, workdir, *SLURM_FLAGS, "--parallel=2")
    assert again.returncode == 0, again.stderr
    if _queued(jobs.values()):  # (unless both already finished, which takes 10+ s)
        assert "not submitted again" in again.stdout and "submitit parameters" not in again.stdout
    assert _jobs(workdir) == jobs
    _wait(lambda: not _queued(jobs.values()), "the array to finish")
    for run in jobs:
        assert (workdir / run / "summary.json").is_file(), (workdir / run / "log.txt").read_text()
    report = _run(["launch/report.py", workdir])
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("2 runs in 1 groups")  # seeds are replicates of one group
    assert (workdir / "report" / "accuracy_vs_time.png").is_file()
    # Everything finished: a third launch submits nothing.
    third = _sweep(config, workdir, *SLURM_FLAGS)
    assert third.returncode == 0 and "submitit parameters" not in third.stdout, third.stdout
    assert third.stdout.count("finished") == 2


def test_a_rejected_submission_is_one_line_and_leaves_nothing(config, tmp_path):
    workdir = tmp_path / "sweep"
    result = _sweep(config, workdir, *SLURM_FLAGS, "--partition=no-such-partition")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: SLURM rejected the job array: ")
    assert "invalid partition" in lines[0].lower()
    assert not workdir.exists()


@pytest.mark.parametrize("how", ["requeue", "time_limit"])
def test_a_preempted_run_resumes_with_no_step_lost(config, tmp_path, uninterrupted, how):
    """`scontrol requeue` sends SIGTERM; the time-limit warning is USR2 to the job's processes,
    which is what `scancel --signal=USR2` sends. Either way the trainer saves at the next step
    and the element runs again from exactly that step."""
    workdir = tmp_path / "sweep"
    config_600 = config.with_name("single.py")
    config_600.write_text(
        config.read_text()
        .replace("int(arg or 60)", "600")
        .replace('[{"seed": 0}, {"seed": 1}]', '[{"seed": 0}]')
    )
    assert _sweep(config_600, workdir, *SLURM_FLAGS).returncode == 0
    (job,) = _jobs(workdir).values()
    run = workdir / "seed-0"
    _wait(lambda: _logged_step(run) >= 100, "step 100")
    if how == "requeue":
        subprocess.run(["scontrol", "requeue", job], check=True)
    else:
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    _wait(lambda: (run / "summary.json").exists() and not _queued([job]), "the resumed run")
    log = (run / "log.txt").read_text()
    signal_name = "SIGTERM" if how == "requeue" else "SIGUSR2"
    stopped = re.search(rf"stopped by {signal_name}.*checkpoint saved at step (\d+)", log)
    assert stopped, log
    saved = int(stopped.group(1))
    assert 100 <= saved < 600 and saved % 200, saved  # not a periodic checkpoint: the stop's own
    assert f"resuming from step {saved} " in log  # the requeued element started right there
    if how == "time_limit":  # submitit requeued only after the trainer had saved
        submitit_logs = "".join(Path(p).read_text() for p in glob.glob(f"{workdir}/slurm/*/*.out"))
        assert "trainer saved and exited 75; requeueing seed-0" in submitit_logs
    assert _train_losses(run) == _train_losses(uninterrupted)
    assert _final(run) == _final(uninterrupted)


def test_one_run_as_two_srun_processes_equals_one_process(config, tmp_path):
    """`jax.distributed.initialize()` with no arguments, under srun with 2 tasks x 4 devices."""
    overrides = ["--config.parallel.distributed=True", "--config.eval_every_steps=10"]
    steps = f"--config={config}:20"
    one = tmp_path / "one"
    reference = _run(
        ["launch/train.py", steps, f"--workdir={one}", "--config.eval_every_steps=10"],
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    assert reference.returncode == 0, reference.stderr
    two = tmp_path / "two"
    srun = ["srun", "--ntasks=2", "--cpus-per-task=1", "--time=10", sys.executable]
    result = subprocess.run(
        [*srun, "launch/train.py", steps, f"--workdir={two}", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["parallel"]["processes"] == 2 and manifest["parallel"]["local_devices"] == 4
    losses, ref_losses = _train_losses(two), _train_losses(one)
    assert sorted(losses) == sorted(ref_losses) and ref_losses[20] < ref_losses[5]
    np.testing.assert_allclose(list(losses.values()), list(ref_losses.values()), rtol=1e-5)
    final, ref_final = _final(two), _final(one)
    assert sorted(final) == sorted(ref_final) and "test/accuracy" in final
    np.testing.assert_allclose([final[k] for k in ref_final], list(ref_final.values()), rtol=1e-5)
