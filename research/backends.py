"""Where sweep runs execute: local processes (one GPU each if asked), SLURM through submitit,
or every worker of a TPU VM through gcloud. `research.sweep` decides what runs; this runs it."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import queue
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from research.errors import EXIT_DIVERGED, EXIT_OK, EXIT_PREEMPTED, EXIT_USER_ERROR, ConfigError
from research.sweep import REPO_ROOT, Run


def exit_status(code: int) -> str:
    """A train.py exit code as a word for the status table."""
    return {
        EXIT_OK: "done",
        EXIT_USER_ERROR: "user error",
        EXIT_DIVERGED: "diverged",
        EXIT_PREEMPTED: "preempted",
    }.get(code, f"failed ({code})")


def _run_one(
    argv: Sequence[str], workdir: str | os.PathLike, devices: queue.Queue | None = None
) -> int:
    """Run one command from the repo root, appending its stdout and stderr to workdir/log.txt.

    With `devices`, the run takes one free device id for its lifetime and sees only that GPU
    (CUDA_VISIBLE_DEVICES), so N runs share N GPUs one each.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = devices.get() if devices is not None else None
    env = dict(os.environ) if device is None else {**os.environ, "CUDA_VISIBLE_DEVICES": device}
    try:
        with open(workdir / "log.txt", "a", encoding="utf-8") as log:
            return subprocess.run(
                argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
            ).returncode
    finally:
        if device is not None:
            devices.put(device)


def run_local(
    commands: Sequence[tuple[Run, list[str]]],
    parallel: int = 1,
    on_done: Callable[[Run, str], None] | None = None,
    devices: Sequence[str] = (),
) -> dict[str, str]:
    """Run the commands `parallel` at a time (one per device when `devices` are given: then as
    many at a time as there are devices); returns run name -> status word."""
    statuses: dict[str, str] = {}
    pool_devices = None
    if devices:
        parallel, pool_devices = len(devices), queue.Queue()
        for device in devices:
            pool_devices.put(str(device))
    # Threads suffice: each one only waits on its own child process.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {
            pool.submit(_run_one, argv, run.workdir, pool_devices): run for run, argv in commands
        }
        for future in concurrent.futures.as_completed(futures):
            run = futures[future]
            statuses[run.name] = exit_status(future.result())
            if on_done is not None:
                on_done(run, statuses[run.name])
    return statuses


def tpu_command(argv: Sequence[str], *, tpu_name: str, zone: str, repo_dir: str) -> list[str]:
    """`gcloud ... tpu-vm ssh` running one train command on every worker of a TPU VM/pod."""
    remote = f"cd {repo_dir} && {shlex.join(argv)}"
    return [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        tpu_name,
        f"--zone={zone}",
        "--worker=all",
        f"--command={remote}",
    ]


def slurm_parameters(
    *,
    name: str,
    num_runs: int,
    parallel: int,
    gpus_per_node: int,
    nodes: int,
    partition: str | None,
    timeout_min: int,
    cpus_per_task: int,
) -> dict[str, Any]:
    """submitit AutoExecutor parameters: one job per run, one task per GPU, an array of runs."""
    params: dict[str, Any] = {
        "name": name,
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "tasks_per_node": gpus_per_node,  # one process per GPU, joined by jax.distributed
        "cpus_per_task": cpus_per_task,
        "timeout_min": timeout_min,
        "slurm_array_parallelism": min(parallel, num_runs) if parallel > 0 else num_runs,
    }
    if partition:
        params["slurm_partition"] = partition
    return params


def sbatch_lines(params: Mapping[str, Any], num_runs: int) -> list[str]:
    """The #SBATCH header equivalent to `slurm_parameters`, for dry runs and for reading."""
    lines = [
        f"#SBATCH --job-name={params['name']}",
        f"#SBATCH --nodes={params['nodes']}",
        f"#SBATCH --gpus-per-node={params['gpus_per_node']}",
        f"#SBATCH --ntasks-per-node={params['tasks_per_node']}",
        f"#SBATCH --cpus-per-task={params['cpus_per_task']}",
        f"#SBATCH --time={params['timeout_min']}",
        f"#SBATCH --array=0-{num_runs - 1}%{params['slurm_array_parallelism']}",
    ]
    if "slurm_partition" in params:
        lines.append(f"#SBATCH --partition={params['slurm_partition']}")
    return lines


class TrainCommand:
    """A picklable job for submitit: runs one train command, requeued on preemption/timeout.

    submitit calls `checkpoint` when SLURM warns of preemption or the time limit; resubmitting the
    same command is enough, because train.py resumes from the run's last checkpoint.
    """

    def __init__(self, argv: Sequence[str], workdir: str | os.PathLike) -> None:
        self.argv = list(argv)
        self.workdir = pathlib.Path(workdir)

    def __call__(self) -> int:
        """Run the command; a failure raises so SLURM and submitit record the job as failed."""
        code = _run_one(self.argv, self.workdir)
        if code not in (EXIT_OK, EXIT_PREEMPTED):
            raise RuntimeError(f"{exit_status(code)}; see {self.workdir / 'log.txt'}")
        return code

    def checkpoint(self) -> Any:
        """Ask submitit to requeue this same command."""
        import submitit  # noqa: PLC0415  (only on the cluster)

        return submitit.helpers.DelayedSubmission(self)


def import_submitit() -> Any:
    """submitit, imported only when jobs are really submitted (it is an optional dependency)."""
    try:
        import submitit  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "the slurm backend needs submitit: pip install -e '.[cluster]' (or use --dry-run)"
        ) from None
    return submitit


def submit_slurm(
    commands: Sequence[tuple[Run, list[str]]], params: Mapping[str, Any], log_dir: pathlib.Path
) -> list[Any]:
    """Submit one SLURM job array (one element per run) through submitit; returns the jobs."""
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=str(log_dir / "%j"))
    executor.update_parameters(**params)
    jobs = []
    with executor.batch():  # everything submitted inside one batch() becomes one array
        for run, argv in commands:
            jobs.append(executor.submit(TrainCommand(argv, run.workdir)))
    return jobs
