"""Train one config into a workdir.

    python launch/train.py --config=configs/X.py[:arg] --workdir=DIR [--config.a.b=v ...]

Exit codes: 0 done; 2 user error (one line on stderr, nothing written); 3 training diverged
(non-finite loss, or a finite loss far above its initial value; the latest checkpoint is kept);
75 stopped by SIGTERM or Ctrl-C (a checkpoint was saved, or nothing was unsaved: rerun the same
command to resume); 130 Ctrl-C pressed twice (stopped without saving).
"""

import errno
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

from research import compile_cache
from research.errors import EXIT_OK, EXIT_PREEMPTED, EXIT_USER_ERROR, DivergedError, UserError
from research.interrupts import Interrupted, StopSignals

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (`path.py[:arg]`).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and summaries.")

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")
EXIT_INTERRUPTED_TWICE = 130  # the shell's code for a process ended by SIGINT
# Errors of the filesystem the user chose (a full disk, a read-only or foreign directory).
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _usage() -> str:
    """The module docstring and this script's flags (absl registers them under sys.argv[0] when
    the file runs as a script), for --help."""
    module = sys.argv[0] if __name__ == "__main__" else sys.modules[__name__]
    return f"{__doc__.strip()}\n\nflags:\n{FLAGS.module_help(module)}"


def _parse(argv: list[str]) -> None:
    """Parse flags; a bad flag, override or config file is a user error (exit 2), not a crash."""
    _check_config_file(argv)
    try:
        FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as e:
        raise UserError(f"bad command line: {str(e).splitlines()[0]}") from None
    if FLAGS.config is None or not FLAGS.workdir:
        raise UserError("both --config=configs/X.py and --workdir=DIR are required")


def _check_config_file(argv: list[str]) -> None:
    """Load the --config file once with the project's loader first: a missing file, a syntax
    error or a misspelled key inside it gets a one-line error with file:line, where
    ml_collections' own loader would raise a traceback (or, for a typo, accept the key)."""
    from research import config as cfg  # noqa: PLC0415  (after the signal handlers are set)

    for i, arg in enumerate(argv[1:], start=1):
        value = None
        if arg.startswith(("--config=", "-config=")):
            value = arg.split("=", 1)[1]
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            path, _, config_arg = value.partition(":")
            cfg.load_config_file(path, config_arg or None)


def _train() -> object:
    """Parse-independent part: optionally join a multi-host job, then train."""
    config = FLAGS.config
    config.lock()
    # Library logs (TFDS probing, Orbax bookkeeping, and Orbax's tracebacks of the errors it
    # also raises to us) would bury the one-line errors. An error nobody handles still raises.
    logging.set_verbosity(logging.FATAL)
    import jax  # noqa: PLC0415  (after flag parsing: nothing touches devices before this)

    if config.parallel.distributed:
        jax.distributed.initialize()
    compile_cache.enable()  # before the first compilation; RESEARCH_COMPILATION_CACHE=off
    from research.train.loop import train_and_evaluate  # noqa: PLC0415

    return train_and_evaluate(config, FLAGS.workdir)


def main(argv: list[str]) -> int:
    """Parse, train, and turn every way a run can end into one line and an exit code."""
    started = time.monotonic()
    if any(a in HELP_FLAGS for a in argv[1:]):  # before the config file is loaded
        print(_usage())
        return EXIT_OK
    # First of all: a stop signal from here on ends in exit 75, never in a bare 143.
    with StopSignals() as stop_signals:
        try:
            _parse(argv)
            result = _train()
            stop_signals.finished()
        except Interrupted as e:
            print(f"stopped by {e}: nothing unsaved was lost; rerun to resume", file=sys.stderr)
            return EXIT_PREEMPTED
        except KeyboardInterrupt:
            print(
                "interrupted twice (Ctrl-C): stopped without saving; rerun to resume from "
                "the latest checkpoint",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED_TWICE
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except DivergedError as e:
            print(f"diverged: {e}", file=sys.stderr)
            return e.exit_code
        except OSError as e:
            if e.errno not in _STORAGE_ERRNOS:
                raise
            print(f"error: {_storage_message(e)}", file=sys.stderr)
            return EXIT_USER_ERROR
    return _report(result, time.monotonic() - started)


def _storage_message(e: OSError) -> str:
    """`cannot write PATH: No space left on device; ...` with what to do."""
    path = e.filename or f"in {FLAGS.workdir}"  # a failed write() does not name its file
    fix = (
        "free some space and rerun the same command to resume"
        if e.errno in (errno.ENOSPC, errno.EDQUOT)
        else "choose a --workdir (or data.data_dir) you can write to"
    )
    return f"cannot write {path}: {e.strerror}; {fix}"


def _report(result: object, seconds: float) -> int:
    """The closing line: how the run ended, its headline test metrics, time and workdir."""
    from research.train.loop import PREEMPTED  # noqa: PLC0415

    if result.status == PREEMPTED:
        print(
            f"stopped by {result.reason}: checkpoint saved at step {result.step}; rerun to resume",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in _headline(result.summary).items())
    print(f"done in {seconds:.1f} s: {metrics}; workdir {FLAGS.workdir}", flush=True)
    return EXIT_OK


def _headline(summary: dict) -> dict[str, float]:
    """The test counterpart of the metric that picks the best checkpoint, and the test loss."""
    best = str(FLAGS.config.checkpoint.best_metric or "").split("/", 1)[-1]
    keys = [f"test/{best}"] if best else []
    keys.append("test/loss")
    found = {k: summary[k] for k in dict.fromkeys(keys) if isinstance(summary.get(k), float)}
    if found:
        return found
    scalars = [(k, v) for k, v in sorted(summary.items()) if k.startswith("test/")]
    return dict([(k, v) for k, v in scalars if isinstance(v, float)][:3])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
