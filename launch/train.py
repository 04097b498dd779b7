"""Train one config into a workdir.

    python launch/train.py --config=configs/X.py[:arg] --workdir=DIR [--config.a.b=v ...]

Exit codes: 0 done; 2 user error (one line on stderr, nothing written); 3 training diverged (the
last good checkpoint is kept); 75 stopped by SIGTERM after saving a checkpoint (rerun the same
command to resume).
"""

import sys

from absl import flags, logging
from ml_collections import config_flags

from research.errors import EXIT_OK, EXIT_PREEMPTED, DivergedError, UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (`path.py[:arg]`).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and summaries.")


def _parse(argv: list[str]) -> None:
    """Parse flags; a bad flag or override is a user error (exit 2), not a crash."""
    try:
        FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        raise UserError(f"bad command line: {str(e).splitlines()[0]}") from None
    if FLAGS.config is None or not FLAGS.workdir:
        raise UserError("both --config=configs/X.py and --workdir=DIR are required")


def main(argv: list[str]) -> int:
    """Parse, optionally join a multi-host job, train; returns the process exit code."""
    try:
        _parse(argv)
        config = FLAGS.config
        config.lock()
        # Library chatter (TFDS probing, Orbax bookkeeping) would bury the one-line errors.
        logging.set_verbosity(logging.ERROR)
        import jax  # noqa: PLC0415  (after flag parsing: nothing touches devices before this)

        if config.parallel.distributed:
            jax.distributed.initialize()
        from research.train.loop import PREEMPTED, train_and_evaluate  # noqa: PLC0415

        result = train_and_evaluate(config, FLAGS.workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except DivergedError as e:
        print(f"diverged: {e}", file=sys.stderr)
        return e.exit_code
    if result.status == PREEMPTED:
        print(
            f"preempted: checkpoint saved at step {result.step}; rerun to resume", file=sys.stderr
        )
        return EXIT_PREEMPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv))
