"""User-facing errors and the process exit codes that launchers rely on.

A `UserError` is a mistake in what the user asked for (a config key, a dataset, a workdir); the
entry points print its message as one line, without a traceback, and exit with `EXIT_USER_ERROR`.
"""

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
# After a SIGTERM the trainer saves a checkpoint and exits with EX_TEMPFAIL, so a launcher can
# requeue the job; rerunning the same command resumes from that checkpoint.
EXIT_PREEMPTED = 75


class UserError(Exception):
    """A mistake in the user's input; printed as one line, exit code 2."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError):
    """An unknown, mistyped or inconsistent config key."""


class DataError(UserError):
    """A dataset that is missing, unprepared or malformed."""


class WorkdirError(UserError):
    """A workdir that cannot be used (it holds another run's config, or is unwritable)."""


class WeightsError(UserError):
    """A pretrained-weights file that is missing, unreadable or does not fit the model."""


class DivergedError(Exception):
    """Training produced a non-finite loss; the last good checkpoint is kept. Exit code 3."""

    exit_code = EXIT_DIVERGED
