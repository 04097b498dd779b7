"""Stop signals (a scheduler's SIGTERM, its time-limit warning SIGUSR1/SIGUSR2, Ctrl-C's
SIGINT) as a clean stop, never a traceback.

A run is in one of two situations when a stop signal arrives. Outside the training steps
(start-up, restoring, and after the final checkpoint has committed) nothing is unsaved, so
`StopSignals` raises `Interrupted` at once and the entry point exits with EXIT_PREEMPTED
(rerunning the command resumes). While training, the loop's own handler (hooks.Preemption)
takes over and only records the request, so the loop can save at the next step boundary first.

This module imports nothing heavy: the entry point installs it before JAX is imported.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

# SIGUSR2 is what submitit asks SLURM to send before the time limit (`--signal=USR2@90`), and
# SIGUSR1 the usual choice of hand-written sbatch scripts: both mean "save now, you will be
# killed soon", exactly like a preemption's SIGTERM.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
_DESCRIPTIONS = {
    signal.SIGINT: "Ctrl-C",
    signal.SIGUSR1: "the scheduler's time-limit warning",
    signal.SIGUSR2: "the scheduler's time-limit warning",
}


class Interrupted(BaseException):
    """A stop signal arrived where nothing was unsaved.

    A BaseException, like KeyboardInterrupt, so library code that catches Exception does not
    swallow it on its way to the entry point.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal_name(signum))


def signal_name(signum: int) -> str:
    """`SIGTERM`, `SIGINT (Ctrl-C)`, or `SIGUSR2 (the scheduler's time-limit warning)`."""
    name = signal.Signals(signum).name
    description = _DESCRIPTIONS.get(signum)
    return f"{name} ({description})" if description else name


class StopSignals:
    """Context manager: a stop signal raises `Interrupted` until `finished()` is called, after
    which stop signals are ignored (the work is done; exit 0 is the truth).

    Only the main thread can install handlers; elsewhere this does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self._signals = signals
        self._previous: dict[int, object] = {}
        self._finished = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def finished(self) -> None:
        """From now on, stop signals are ignored: the run is complete."""
        self._finished = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self._finished:
            raise Interrupted(signum)
