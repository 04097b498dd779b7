"""Port pretrained weights into a directory that a training config can start from.

    python launch/port.py --source=torchvision --arch=resnet50 --weights=resnet50.pth --output=DIR

writes DIR/checkpoints/ (step 0: params and batch_stats; use `init_from=DIR`) and DIR/port.json
(source, arch, the model's registry name and options, input preprocessing, the file's SHA-256,
versions, time). Rerunning the same port is a no-op. Exit codes: 0 done; 2 user error (unknown
source/arch, missing or unfitting weights file, DIR holding something else; one line on stderr,
nothing written). `--help` lists the flags.
"""

import sys

from absl import flags, logging

from research.errors import EXIT_OK, UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "Where the weights come from: keras | torchvision.")
flags.DEFINE_string("arch", None, "Architecture, e.g. resnet50, vgg16_bn, mobilenet_v2.")
flags.DEFINE_string("weights", None, "The weights file (.pth/.pt/.safetensors, or Keras .h5).")
flags.DEFINE_string("output", None, "Directory for checkpoints/ and port.json.")


HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def _usage() -> str:
    """The module docstring and this script's flags (absl registers them under sys.argv[0] when
    the file runs as a script), for --help."""
    module = sys.argv[0] if __name__ == "__main__" else sys.modules[__name__]
    return f"{__doc__.strip()}\n\nflags:\n{FLAGS.module_help(module)}"


def _parse(argv: list[str]) -> None:
    """Parse flags; a bad or missing flag is a user error (exit 2), not a crash."""
    try:
        FLAGS(argv)
    except flags.Error as e:
        raise UserError(f"bad command line: {str(e).splitlines()[0]}") from None
    missing = [
        f"--{name}" for name in ("source", "arch", "weights", "output") if not FLAGS[name].value
    ]
    if missing:
        raise UserError(f"missing {', '.join(missing)}; see --help")


def main(argv: list[str]) -> int:
    """Parse, port, print a one-line summary; returns the process exit code."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(_usage())
        return EXIT_OK
    try:
        _parse(argv)
        logging.set_verbosity(logging.ERROR)  # Orbax bookkeeping would bury the summary line
        from research.port import write_checkpoint  # noqa: PLC0415  (after flag parsing)

        record, written = write_checkpoint(FLAGS.source, FLAGS.arch, FLAGS.weights, FLAGS.output)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    model = record["model"]
    done = "ported" if written else "already ported"
    print(
        f"{done} {record['source']} {record['arch']} ({record['weights']['sha256'][:12]}) -> "
        f"{FLAGS.output}: model {model['name']}, {model['num_classes']} classes, "
        f"{record['num_params']:,} params; use init_from={FLAGS.output}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv))
