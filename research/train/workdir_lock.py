"""One writer per workdir: a lock file naming the host and process that train into it.

Two processes training into one workdir (a sweep resubmitted while its jobs still run, a command
started twice) would overwrite each other's checkpoints and metrics. The first one writes
`<workdir>/lock` (JSON: host, pid, the process's start time, since when); a second one finds it
and stops with a WorkdirInUseError naming the owner. A lock is stale, and taken over with a
warning, when its owner is gone: on the same host, its pid no longer runs the process that wrote
it; on another host (a shared filesystem), the owner stopped refreshing the file's modification
time, which it does every `heartbeat_s` while it runs.

An object store (gs://) has no exclusive create: there the lock is written after checking that
none is held, so two starters within the same second can both pass (sweeps and resubmissions
start minutes apart; the scheduler check in launch/sweep.py covers those).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from research import rundir, storage
from research.errors import WorkdirError

LOCK_NAME = rundir.LOCK
HEARTBEAT_S = 30.0
# Another host's lock not refreshed for this long belongs to a process that died without
# removing it (killed, or its machine lost). Ten heartbeats: slow filesystems are not owners lost.
STALE_AFTER_S = 10 * HEARTBEAT_S


class WorkdirInUseError(WorkdirError):
    """The workdir's lock belongs to a process that is still running."""


def _process_start(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (/proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its end.
    return stat[stat.rindex(")") + 2 :].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def this_process() -> dict[str, Any]:
    """What the lock file records about its owner."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "since_utc": now.isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


def stale_reason(owner: dict[str, Any], age_s: float, stale_after_s: float) -> str | None:
    """Why the lock of `owner` (last refreshed `age_s` ago) no longer holds; None if it does."""
    if owner.get("host") != socket.gethostname():
        if age_s > stale_after_s:
            return f"not refreshed for {age_s:.0f} s by host {owner.get('host')}"
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return f"process {pid} is no longer running"
    if owner.get("process_start") != _process_start(pid):
        return f"process {pid} is no longer the one that wrote it (pid reused)"
    if pid == os.getpid():
        return "it was left by an earlier run in this same process"
    return None


class WorkdirLock:
    """Context manager holding `<workdir>/lock` for a run; WorkdirInUseError if a live process
    holds it. Creates the workdir if needed, and removes it again on exit if it is left empty."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.workdir = storage.workdir_path(workdir)
        self._remote = storage.is_remote(self.workdir)
        self.path = self.workdir / LOCK_NAME
        self._heartbeat_s = heartbeat_s
        self._stale_after_s = stale_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_workdir = False
        self._owner: dict[str, Any] = {}

    def __enter__(self) -> WorkdirLock:
        self._created_workdir = not self.workdir.exists()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._acquire()
        self._thread = threading.Thread(target=self._refresh, name="workdir-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._read() == self._owner:  # never remove a lock someone else took over
            self.path.unlink(missing_ok=True)
        # An object store has no empty directories: nothing to remove there.
        if self._created_workdir and not self._remote and not any(self.workdir.iterdir()):
            self.workdir.rmdir()

    def _acquire(self) -> None:
        self._owner = this_process()
        text = json.dumps(self._owner)
        if self._remote:
            if self.path.exists():
                self._check_holder()
            self.path.write_text(text)
            return
        for _ in range(3):  # another starter may remove or take a stale lock at the same time
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._check_holder()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return
        raise WorkdirInUseError(f"could not take {self.path}: other processes keep taking it")

    def _check_holder(self) -> None:
        """Raise if the lock's owner is alive; otherwise remove the stale lock, with a warning."""
        try:
            age = time.time() - self.path.stat().mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        owner = self._read()
        if owner is None and age < self._heartbeat_s:
            # Unreadable and fresh: another starter is writing it right now.
            raise WorkdirInUseError(f"{self.workdir} is being started by another process")
        reason = (
            "it is unreadable" if owner is None else stale_reason(owner, age, self._stale_after_s)
        )
        if reason is None:
            raise WorkdirInUseError(
                f"--workdir {self.workdir} is in use by pid {owner['pid']} on host "
                f"{owner['host']} since {owner.get('since_utc')} (lock file {self.path}); "
                "wait for that run to end or stop it: two writers would corrupt its checkpoints"
            )
        print(f"warning: removing a stale lock {self.path}: {reason}", file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _refresh(self) -> None:
        """Touch the lock every heartbeat, so hosts sharing the filesystem see its owner alive."""
        while not self._stop.wait(self._heartbeat_s):
            # Gone (taken over, or the workdir removed): nothing left to refresh.
            with contextlib.suppress(OSError):
                if self._remote:  # an object's modification time changes only on a write
                    if self._read() == self._owner:
                        self.path.write_text(json.dumps(self._owner))
                else:
                    os.utime(self.path)
