"""Train-step speed of the project against PyTorch and Keras 3 (JAX backend), one process.

    python launch/bench.py --workloads=mlp,cnn,lstm_t100,resnet18_32,vae \\
        --frameworks=project,torch,keras --rounds=7 --steps=20 [--precision=bfloat16] \\
        [--out=FILE.md]

For each workload (research/bench/workloads.py: a bundled config with plain Adam at a constant
rate, no clipping or diagnostics) the project's compiled step is built by `build_run` as for a
real run and fed a batch of the run's data; research/bench/torch_steps.py and keras_steps.py
build the same network (same parameter count) and the same Adam step on the same batch. The
steps are timed in interleaved rounds of --steps steps each. The table gives ms/step (median
over rounds), the project's speed relative to each other framework (median over rounds of the
per-round ratio [ratio of the fastest rounds]; above 1x the project is faster), the first
step's time (tracing and compilation included), the project step's memory on one device (XLA's
memory analysis) and its achieved FLOP/s (research/flops.py's count of the step, every scan
body times its length, over the median time) against the machine's measured matmul peak. On a
GPU the same command runs unchanged (PyTorch uses channels-last there, and autocast with
--precision=bfloat16). Workloads: mlp, cnn, lstm_t50/100/200/400, resnet18_32, resnet50_32,
resnet18_224, resnet50_224, vae.
Exit codes: 0 done; 2 user error (bad flag, unknown workload or framework).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from research.cli import Parser, run_table_command
from research.errors import ConfigError

PRECISIONS = ("float32", "bfloat16")


def _names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


def _parse(argv: list[str]) -> argparse.Namespace:
    from research.bench import runner, workloads  # noqa: PLC0415 (jax loads after parsing)

    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=_names, default=["mlp", "cnn", "lstm_t100", "vae"])
    parser.add_argument("--frameworks", type=_names, default=list(runner.FRAMEWORKS))
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median taken)")
    parser.add_argument("--steps", type=int, default=20, help="steps per framework per round")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    for key in ("rounds", "steps"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key} must be a positive integer, got {getattr(args, key)}")
    for name in args.workloads:
        workloads.get(name)  # a ConfigError naming the known workloads
    unknown = [f for f in args.frameworks if f not in runner.FRAMEWORKS]
    if unknown or "project" not in args.frameworks:
        raise ConfigError(
            f"--frameworks={','.join(args.frameworks)}: name 'project' and any of "
            f"{', '.join(runner.FRAMEWORKS[1:])}"
        )
    return args


def bench(args: argparse.Namespace) -> list[str]:
    """Measures every workload (progress on stderr); returns the report's lines."""
    from research.bench import hardware, report, runner  # noqa: PLC0415

    peak = hardware.matmul_peak()
    rows = []
    for name in args.workloads:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        rows.append(
            runner.measure(
                name,
                args.frameworks,
                rounds=args.rounds,
                steps_per_round=args.steps,
                precision=args.precision,
                seed=args.seed,
            )
        )
    return [
        *report.table(rows, args.frameworks, peak),
        "",
        f"{hardware.describe()}; {_versions(args.frameworks)}; {args.precision}; median of "
        f"{args.rounds} interleaved rounds of {args.steps} steps; measured float32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s",
    ]


def _versions(frameworks: list[str]) -> str:
    """'torch 2.13.0, keras 3.15.1': the other frameworks' versions, as installed."""
    from importlib.metadata import version  # noqa: PLC0415

    return ", ".join(f"{f} {version(f)}" for f in frameworks if f != "project") or "project only"


def main(argv: list[str]) -> int:
    """Runs the benchmark; a user error is one line on stderr and exit code 2."""
    return run_table_command(_parse, bench, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
