"""Sweeps on SLURM through submitit: one job array per sweep, one array element per run.

What makes it safe to leave running overnight:
- every element runs `launch/train.py` as a child process (`TrainCommand`); when SLURM warns of
  the time limit (submitit asks for `--signal=USR2@90`) or preempts, the trainer saves at its next
  step boundary and exits 75, and only then is the element requeued, so no step is lost;
- the job ids of a sweep are recorded in `<sweep>/slurm/jobs.json`; relaunching the sweep asks
  the scheduler (`squeue`) which of them still live and does not submit those runs again;
- a submission SLURM rejects is a `SubmissionError` with SLURM's reason, and leaves nothing
  behind that looks like a submitted sweep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from research.backends import exit_status, run_one
from research.errors import EXIT_OK, EXIT_PREEMPTED, ConfigError, UserError
from research.sweep import PlannedRun

JOBS_FILE = "jobs.json"
# How long the submitit process waits, after the time-limit signal, for the trainer to save and
# exit before it requeues anyway (SLURM kills the job `signal_delay_s` after the signal).
SAVE_GRACE_S = 60.0
# squeue states of a job that may still start or is running: its run must not get a second job.
LIVE_STATES = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
}


class SubmissionError(UserError):
    """SLURM refused the job array (bad partition, more GPUs or CPUs than a node has, ...)."""


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
    tasks_per_node: int | None = None,
) -> dict[str, Any]:
    """submitit AutoExecutor parameters: an array of runs, each on `nodes` nodes with one task
    per GPU (or `tasks_per_node`; one task on a CPU-only cluster, `gpus_per_node=0`)."""
    if gpus_per_node < 0 or nodes < 1 or cpus_per_task < 1:
        raise ConfigError("slurm: need gpus_per_node >= 0, nodes >= 1 and cpus_per_task >= 1")
    tasks = tasks_per_node or max(gpus_per_node, 1)
    params: dict[str, Any] = {
        "name": name,
        "nodes": nodes,
        "tasks_per_node": tasks,  # one process per GPU, joined by jax.distributed
        "cpus_per_task": cpus_per_task,
        "timeout_min": timeout_min,
        "slurm_array_parallelism": min(parallel, num_runs) if parallel > 0 else num_runs,
    }
    if gpus_per_node:  # sbatch has no "zero GPUs": a CPU-only job does not ask for any
        params["gpus_per_node"] = gpus_per_node
    if partition:
        params["slurm_partition"] = partition
    return params


def processes_per_run(params: Mapping[str, Any]) -> int:
    """How many processes (tasks) train one run: more than one means jax.distributed."""
    return params["nodes"] * params["tasks_per_node"]


def sbatch_lines(params: Mapping[str, Any], num_runs: int) -> list[str]:
    """The #SBATCH header equivalent to `slurm_parameters`, for dry runs and for reading."""
    lines = [f"#SBATCH --job-name={params['name']}", f"#SBATCH --nodes={params['nodes']}"]
    if "gpus_per_node" in params:
        lines.append(f"#SBATCH --gpus-per-node={params['gpus_per_node']}")
    lines += [
        f"#SBATCH --ntasks-per-node={params['tasks_per_node']}",
        f"#SBATCH --cpus-per-task={params['cpus_per_task']}",
        f"#SBATCH --time={params['timeout_min']}",
        f"#SBATCH --array=0-{num_runs - 1}%{params['slurm_array_parallelism']}",
    ]
    if "slurm_partition" in params:
        lines.append(f"#SBATCH --partition={params['slurm_partition']}")
    return lines


class TrainCommand:
    """A picklable job for submitit: runs one train command as a child process.

    On SLURM's warning (time limit or preemption, submitit's USR2) submitit calls `checkpoint`.
    The trainer got the same signal and is saving; `checkpoint` waits until it has exited, so
    the job is requeued only after the save committed. Rerunning the same command resumes.
    """

    def __init__(self, argv: Sequence[str], workdir: str | os.PathLike) -> None:
        self.argv = list(argv)
        self.workdir = pathlib.Path(workdir)
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_process": None}  # a child process does not travel

    def __call__(self) -> int:
        """Run the command; a failure raises so SLURM and submitit record the job as failed."""
        code = run_one(self.argv, self.workdir, started=self._started)
        if code not in (EXIT_OK, EXIT_PREEMPTED):
            raise RuntimeError(f"{exit_status(code)}; see {self.workdir / 'log.txt'}")
        return code

    def _started(self, process: subprocess.Popen) -> None:
        self._process = process

    def checkpoint(self) -> Any:
        """Requeue this same command once the trainer has saved and exited (None: it finished,
        or failed, so there is nothing to resume)."""
        import submitit  # noqa: PLC0415  (only on the cluster)

        code = self._wait_for_trainer()
        if code not in (None, EXIT_PREEMPTED):
            print(f"trainer ended with exit {code}: nothing to resume, not requeued", flush=True)
            return None
        saved = "saved and exited 75" if code is not None else "did not exit in time"
        print(f"trainer {saved}; requeueing {self.workdir.name}", flush=True)
        return submitit.helpers.DelayedSubmission(self)

    def _wait_for_trainer(self, grace_s: float = SAVE_GRACE_S) -> int | None:
        """Pass the stop on to the trainer and wait for it to exit; its exit code (None if it
        outlived the grace period).

        This runs inside a signal handler while `__call__` is blocked in waiting for the same
        child, so it must not reap it: `waitid(WNOWAIT)` only looks.
        """
        process = self._process
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            # SLURM usually signals the whole job step; this covers a signal sent to us alone.
            os.kill(process.pid, signal.SIGUSR2)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # already reaped by __call__
                return process.returncode
            if info is not None:
                return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            time.sleep(0.2)
        return None


def import_submitit() -> Any:
    """submitit, imported only when jobs are really submitted (it is an optional dependency)."""
    try:
        import submitit  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "the slurm backend needs submitit: pip install -e '.[cluster]' (or use --dry-run)"
        ) from None
    return submitit


@contextlib.contextmanager
def _undo_on_failure(folder: pathlib.Path) -> Iterator[None]:
    """Remove what a failed submission wrote into `folder` (submitit's pickles and scripts),
    and the folder and its parent (the sweep directory) if they were made for it."""
    made = [d for d in (folder.parent, folder) if not d.exists()]
    before = set(folder.iterdir()) if folder.exists() else set()
    try:
        yield
    except BaseException:
        for path in set(folder.iterdir()) - before if folder.exists() else ():
            if path.is_file():
                path.unlink()
        for directory in reversed(made):
            if directory.exists() and not any(directory.iterdir()):
                directory.rmdir()
        raise


def submit(
    commands: Sequence[tuple[PlannedRun, list[str]]],
    params: Mapping[str, Any],
    folder: pathlib.Path,
) -> dict[str, str]:
    """Submit one job array (one element per run); returns run name -> job id, also recorded in
    `folder/jobs.json`. A rejected submission raises SubmissionError and leaves no files."""
    submitit = import_submitit()
    with _undo_on_failure(folder):
        executor = submitit.AutoExecutor(folder=str(folder / "%j"))
        executor.update_parameters(**params)
        jobs = []
        try:
            # submitit also prints sbatch's complaint itself; the error below says it once.
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                for run, argv in commands:  # everything submitted inside batch() is one array
                    jobs.append(executor.submit(TrainCommand(argv, run.workdir)))
        except submitit.core.utils.FailedJobError as e:
            raise SubmissionError(f"SLURM rejected the job array: {_reason(str(e))}") from None
    submitted = {run.name: str(job.job_id) for (run, _), job in zip(commands, jobs, strict=True)}
    record_jobs(folder, submitted)
    return submitted


def _reason(stderr: str) -> str:
    """sbatch's error lines, without their `sbatch: error:` prefixes, on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    return "; ".join(errors or lines[-1:]) or "no reason given"


def recorded_jobs(folder: pathlib.Path) -> dict[str, str]:
    """Run name -> the job id it was last submitted as ({} before the first submission)."""
    path = folder / JOBS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def record_jobs(folder: pathlib.Path, submitted: Mapping[str, str]) -> None:
    """Add (or update) run -> job id entries in `folder/jobs.json`, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = {**recorded_jobs(folder), **submitted}
    tmp = folder / f".{JOBS_FILE}.tmp"
    tmp.write_text(json.dumps(jobs, indent=1, sort_keys=True) + "\n")
    tmp.replace(folder / JOBS_FILE)


def queue_states() -> dict[str, str]:
    """Job id -> state of every job the scheduler still lists (array elements one per line)."""
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i %T"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except FileNotFoundError:
        raise SubmissionError(
            "squeue not found: the slurm backend runs on a SLURM login node"
        ) from None
    except subprocess.CalledProcessError as e:
        raise SubmissionError(f"squeue failed: {e.stderr.strip() or e.returncode}") from None
    return dict(line.split(None, 1) for line in out.splitlines() if line.strip())


def live_jobs(folder: pathlib.Path) -> dict[str, str]:
    """Run name -> `job ID STATE` for the sweep's recorded jobs that are still queued or
    running: those runs must not be submitted again."""
    recorded = recorded_jobs(folder)
    if not recorded:
        return {}
    states = queue_states()
    return {
        run: f"job {job} {states[job]}"
        for run, job in recorded.items()
        if states.get(job) in LIVE_STATES
    }
