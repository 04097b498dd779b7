"""Where sweep runs execute: local processes (one GPU each if asked) or every worker of a TPU VM
through gcloud (SLURM: `research.slurm`). `research.sweep` decides what runs; this runs it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pathlib
import queue
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import IO

from research import rundir, storage
from research.errors import EXIT_DIVERGED, EXIT_OK, EXIT_PREEMPTED, EXIT_USER_ERROR
from research.sweep import REPO_ROOT, PlannedRun


def exit_status(code: int) -> str:
    """A train.py exit code as a word for the status table."""
    return {
        EXIT_OK: "done",
        EXIT_USER_ERROR: "user error",
        EXIT_DIVERGED: "diverged",
        EXIT_PREEMPTED: "preempted",
    }.get(code, f"failed ({code})")


def run_one(
    argv: Sequence[str],
    workdir: str | os.PathLike,
    devices: queue.Queue | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Run one command from the repo root, appending its stdout and stderr to workdir/log.txt;
    its exit code. `started` is called with the child process once it runs.

    With `devices`, the run takes one free device id for its lifetime and sees only that GPU
    (CUDA_VISIBLE_DEVICES), so N runs share N GPUs one each.
    """
    device = devices.get() if devices is not None else None
    env = dict(os.environ) if device is None else {**os.environ, "CUDA_VISIBLE_DEVICES": device}
    try:
        with (
            _log_file(workdir) as log,
            subprocess.Popen(
                argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
            ) as process,
        ):
            if started is not None:
                started(process)
            return process.wait()
    finally:
        if device is not None:
            devices.put(device)


@contextlib.contextmanager
def _log_file(workdir: str | os.PathLike) -> Iterator[IO[bytes]]:
    """`workdir/log.txt` opened for appending. An object store cannot append (or take a
    process's output as it comes): there the output goes to a local temporary file, added to
    `workdir/log.txt` when the run ends."""
    if not storage.is_remote(workdir):
        directory = pathlib.Path(workdir)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / rundir.LOG, "ab") as log:
            yield log
        return
    remote = rundir.RunDir.at(workdir).log
    with tempfile.TemporaryFile() as log:
        try:
            yield log
        finally:
            log.seek(0)
            earlier = remote.read_bytes() if remote.exists() else b""
            storage.write_bytes(remote, earlier + log.read())


def run_local(
    commands: Sequence[tuple[PlannedRun, list[str]]],
    parallel: int = 1,
    on_done: Callable[[PlannedRun, str], None] | None = None,
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
            pool.submit(run_one, argv, run.workdir, pool_devices): run for run, argv in commands
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
