"""The SLURM backend without a cluster: parameters, SLURM's errors, the live-job guard and the
requeue-after-save hand-over. tests/cluster runs the same against a real cluster."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest

from research import slurm
from research.errors import EXIT_PREEMPTED


def _params(**kwargs):
    defaults = dict(
        name="s",
        num_runs=3,
        parallel=2,
        gpus_per_node=1,
        nodes=1,
        partition=None,
        timeout_min=60,
        cpus_per_task=8,
    )
    return slurm.slurm_parameters(**{**defaults, **kwargs})


def test_a_cpu_only_job_asks_for_no_gpus_and_one_task():
    params = _params(gpus_per_node=0, cpus_per_task=1)
    assert "gpus_per_node" not in params and params["tasks_per_node"] == 1
    lines = slurm.sbatch_lines(params, 3)
    assert "#SBATCH --ntasks-per-node=1" in lines
    assert not any("gpus" in line for line in lines)
    assert slurm.processes_per_run(params) == 1


def test_one_task_per_gpu_unless_told_otherwise():
    assert _params(gpus_per_node=4, nodes=2)["tasks_per_node"] == 4
    assert slurm.processes_per_run(_params(gpus_per_node=4, nodes=2)) == 8
    assert _params(gpus_per_node=0, tasks_per_node=2)["tasks_per_node"] == 2
    with pytest.raises(slurm.ConfigError, match="gpus_per_node >= 0"):
        _params(gpus_per_node=-1)


def test_slurms_reason_is_one_line_without_prefixes():
    stderr = (
        "sbatch: error: invalid partition specified: gpu\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    )
    assert slurm._reason(stderr) == (
        "invalid partition specified: gpu; Batch job submission failed: Invalid partition name "
        "specified"
    )
    assert slurm._reason("something odd\n") == "something odd"


@pytest.fixture
def fake_squeue(tmp_path, monkeypatch):
    """A `squeue` on PATH printing the given `ID STATE` lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    listing = tmp_path / "queue.txt"
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\ncat {listing}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return listing


def test_only_runs_whose_recorded_job_is_queued_or_running_are_live(tmp_path, fake_squeue):
    folder = tmp_path / "slurm"
    assert slurm.live_jobs(folder) == {}  # never submitted: nothing to ask
    slurm.record_jobs(folder, {"a": "7_0", "b": "7_1", "c": "7_2"})
    slurm.record_jobs(folder, {"c": "9_0"})  # c was resubmitted as a new array
    fake_squeue.write_text("7_0 RUNNING\n7_1 COMPLETING\n7_2 PENDING\n8_0 RUNNING\n")
    assert slurm.live_jobs(folder) == {"a": "job 7_0 RUNNING", "b": "job 7_1 COMPLETING"}
    fake_squeue.write_text("9_0 PENDING\n")
    assert slurm.live_jobs(folder) == {"c": "job 9_0 PENDING"}


# A trainer stand-in: on SIGUSR2 it "saves" (writes a file) and exits 75.
TRAINER = textwrap.dedent(
    """
    import signal, sys, time
    def stop(signum, frame):
        time.sleep(0.3)  # the save takes a moment
        open(sys.argv[1], "w").write("saved")
        sys.exit(75)
    signal.signal(signal.SIGUSR2, stop)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_the_requeue_waits_until_the_trainer_saved_and_exited(tmp_path):
    saved = tmp_path / "saved"
    command = slurm.TrainCommand([sys.executable, "-c", TRAINER, str(saved)], tmp_path)
    process = subprocess.Popen(command.argv, stdout=subprocess.PIPE, text=True)  # as run_one does
    command._started(process)
    assert process.stdout.readline().strip() == "ready"
    assert command._wait_for_trainer(grace_s=30) == EXIT_PREEMPTED
    assert saved.read_text() == "saved"  # the save committed before the requeue
    assert process.wait() == EXIT_PREEMPTED  # not reaped by the check: __call__ still sees it
    copy = pickle.loads(pickle.dumps(command))  # what submitit writes for the requeued job
    assert copy.argv == command.argv and copy._process is None


def test_a_trainer_that_outlives_the_grace_period_is_requeued_anyway(tmp_path):
    stubborn = "import signal, time; signal.signal(signal.SIGUSR2, signal.SIG_IGN); print(1)"
    command = slurm.TrainCommand(
        [sys.executable, "-u", "-c", f"{stubborn}; time.sleep(60)"], tmp_path
    )
    process = subprocess.Popen(command.argv, stdout=subprocess.PIPE)
    try:
        command._started(process)
        process.stdout.readline()
        assert command._wait_for_trainer(grace_s=0.5) is None
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
