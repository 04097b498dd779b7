"""Tables, learning curves and scaling-law fits for every run under a directory.

    python launch/report.py DIR [--metric=test/accuracy ...] [--scaling=params|data|compute]
        [--curves=transfer.strategy] [--target=0.9 [--target-metric=eval/accuracy]]
        [--hidden-gradients]

Writes DIR/report/report.{md,csv,tex} (mean, std and 95% Student-t interval over seeds per group
of swept config keys), DIR/report/curves_<metric>.png, DIR/report/accuracy_vs_time.png (eval
accuracy of every run against the step and the wall time, coloured by --curves, default the
swept keys), and with --scaling DIR/report/scaling_<axis>.png, printing the fitted exponent
with its bootstrap interval. --target=T adds two columns: `steps_to_T`, the first step at which
--target-metric (eval/accuracy; an error such as eval/mse counts from above) reached T (mean
over the runs that did), and `reached_T`, the fraction that did. --hidden-gradients draws the
runs' ||dL/dh_t|| curves in DIR/report/hidden_gradients.png.
Exit codes: 0 done; 2 user error (one line on stderr, nothing written): DIR missing or without
runs, a --metric/--target-metric/--curves no run has (the nearest one is named), a bad flag.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from research.cli import Parser
from research.errors import EXIT_OK, EXIT_USER_ERROR, ConfigError, UserError, WorkdirError

SCALING_METRIC = "test/loss"  # a power law with an offset describes a loss, not an accuracy
CONVERGENCE_METRIC = "eval/accuracy"


def _whole(minimum: int):
    """An argparse type: a whole number >= `minimum` (else a one-line error naming the flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "dir", help="directory holding runs (searched recursively; local or gs://bucket/...)"
    )
    parser.add_argument(
        "--metric",
        action="append",
        help="summary metric to tabulate (repeatable; default: every numeric one); the first "
        f"is also the scaling metric (default {SCALING_METRIC})",
    )
    parser.add_argument("--scaling", choices=("params", "data", "compute"), help="fit a power law")
    parser.add_argument(
        "--bootstrap", type=_whole(1), default=1000, help="bootstrap resamples (at least 1)"
    )
    parser.add_argument("--seed", type=_whole(0), default=0, help="bootstrap seed (>= 0)")
    parser.add_argument(
        "--curves",
        metavar="KEY",
        help="config key that colours the accuracy-vs-time curves (default: the swept keys)",
    )
    parser.add_argument(
        "--target",
        type=float,
        action="append",
        help="value of --target-metric to reach: adds steps_to_T and reached_T (repeatable)",
    )
    parser.add_argument(
        "--target-metric",
        help=f"logged metric --target refers to (default {CONVERGENCE_METRIC}); losses and "
        "errors (eval/mse, eval/loss, ...) are reached from above",
    )
    parser.add_argument(
        "--hidden-gradients",
        action="store_true",
        help="draw every run's ||dL/dh_t|| (plots/hidden_gradients.json) in one figure",
    )
    return parser.parse_args(argv)


def _scaling(args: argparse.Namespace, runs: list, outdir: Path) -> list[Path]:
    """Fits and plots the power law, prints the exponent with its bootstrap interval."""
    from research.analysis import scaling  # noqa: PLC0415 (after parsing)

    metric = args.metric[0] if args.metric else SCALING_METRIC
    fit = scaling.scaling_report(
        runs, args.scaling, metric, outdir, n_boot=args.bootstrap, seed=args.seed
    )
    low, high = fit.intervals["alpha"]
    print(
        f"{metric} ~ {fit.a:.4g} * {args.scaling}^-alpha + {fit.c:.4g}: "
        f"alpha = {fit.alpha:.4f} (95% CI [{low:.4f}, {high:.4f}])"
    )
    return [outdir / f"scaling_{args.scaling}.png"]


def _unknown(flag: str, name: str, what: str, known: Sequence[str], listed: str) -> ConfigError:
    """`--flag=name: no run has this <what>; did you mean X? <listed>: a, b, c` (one line)."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return ConfigError(
        f"{flag}={name}: no run has this {what}; {hint}{listed}: {', '.join(known) or 'none'}"
    )


def _check_dir(path: Path) -> None:
    """DIR must be an existing directory: a typo'd path or a file is an error, not 'no runs'."""
    if not path.is_dir():
        state = "is a file, not a directory" if path.exists() else "does not exist"
        raise WorkdirError(
            f"{path} {state}; give the directory that holds the runs (e.g. the sweep's --workdir)"
        )


def _metrics(requested: list[str] | None, runs: list, targets: list[str]) -> list[str]:
    """The summary metrics to tabulate: `--metric`s (each must be a numeric summary key of some
    run, else an error naming the nearest one), default every numeric one."""
    from research.analysis import collect  # noqa: PLC0415 (after parsing)

    if not requested:
        return [*collect.numeric_metrics(runs), *targets]
    present = {k for run in runs for k, v in run.summary.items() if collect.is_number(v)}
    for name in requested:
        if name not in present:
            known = [*collect.numeric_metrics(runs), *targets]
            raise _unknown("--metric", name, "numeric summary.json metric", known, "metrics")
    return [*requested, *targets]


def _targets(args: argparse.Namespace, runs: list) -> list[str]:
    """Adds steps_to_T / reached_T of every `--target` to the runs' summaries; their names.
    The `--target-metric` must be logged in some run's metrics.jsonl."""
    from research.analysis import collect  # noqa: PLC0415 (after parsing)

    if args.target_metric is not None and not args.target:
        raise ConfigError(f"--target-metric={args.target_metric} needs --target=T (e.g. 0.9)")
    metric = args.target_metric or CONVERGENCE_METRIC
    if not args.target:
        return []
    logged = {k for run in runs for r in run.metrics for k, v in r.items() if collect.is_number(v)}
    if metric not in logged:
        known = sorted(logged - {"step"})
        raise _unknown("--target-metric", metric, "metric in metrics.jsonl", known, "logged")
    return [name for t in args.target for name in collect.add_steps_to(runs, metric, t)]


def _colour_keys(key: str | None, runs: list, swept: list[str]) -> list[str]:
    """The keys whose values colour the convergence curves: `--curves`, else the swept ones."""
    if key is None:
        return swept
    if not any(key in run.config for run in runs):
        known = sorted({k for run in runs for k in run.config})
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"--curves={key}: no run has this config key; {hint}"
            f"swept keys: {', '.join(swept) or 'none'}"
        )
    return [key]


def _hidden_gradients(runs: list, keys: list[str]) -> dict[str, list]:
    """The trained models' ||dL/dh_t|| of every run that saved them, labelled by `keys`."""
    import json  # noqa: PLC0415

    from research import rundir  # noqa: PLC0415
    from research.analysis import collect  # noqa: PLC0415

    norms = {}
    for run in runs:
        path = rundir.RunDir(run.path).plots / "hidden_gradients.json"
        if path.is_file():
            label = collect.group_label(keys, tuple(run.config.get(k) for k in keys))
            norms[f"{label} ({run.path.name})" if label in norms else label] = json.loads(
                path.read_text()
            )["trained"]
    if not norms:
        raise ConfigError(
            "--hidden-gradients: no run has plots/hidden_gradients.json (unidirectional "
            "last-state recurrent runs with evaluation.artifacts write it)"
        )
    return norms


def _plot_hidden_gradients(norms: dict[str, list], outdir: Path) -> Path:
    """One figure of the runs' ||dL/dh_t||, a line per run."""
    from research.analysis import recurrent_gradients  # noqa: PLC0415

    title = "trained models: ||dL/dh_t|| on test data"
    return recurrent_gradients.plot_hidden_gradients(
        norms, outdir / "hidden_gradients.png", title=title
    )


def report(args: argparse.Namespace) -> None:
    """Collect, tabulate, plot and (optionally) fit; prints where everything went."""
    from research import storage  # noqa: PLC0415 (after parsing)
    from research.analysis import collect, tables  # noqa: PLC0415 (after parsing)
    from research.reporting import curves  # noqa: PLC0415 (after parsing)

    args.dir = storage.workdir_path(args.dir)
    _check_dir(args.dir)
    runs = collect.collect(args.dir)
    keys = collect.swept_keys(runs)
    groups = collect.group_runs(runs, keys)
    # Every flag is checked against the runs before anything is printed or written.
    metrics = _metrics(args.metric, runs, _targets(args, runs))
    colour_keys = _colour_keys(args.curves, runs, keys)
    gradients = _hidden_gradients(runs, colour_keys) if args.hidden_gradients else None
    outdir = args.dir / collect.REPORT_DIR
    print(f"{len(runs)} runs in {len(groups)} groups (swept: {', '.join(keys) or 'nothing'})")
    # The fit goes first: a sweep that cannot be fitted is an error before anything is written.
    written = _scaling(args, runs, outdir) if args.scaling else []
    rows = tables.aggregate(groups, metrics)
    written += tables.write_tables(rows, keys, metrics, outdir)
    for metric in collect.curve_metrics(runs):
        path = curves.plot_curves(groups, keys, metric, curves.curves_path(outdir, metric))
        written += [path] if path else []
    by_colour = collect.group_runs(runs, colour_keys)
    path = curves.plot_convergence(
        by_colour, colour_keys, CONVERGENCE_METRIC, outdir / "accuracy_vs_time.png"
    )
    written += [path] if path else []
    if gradients is not None:
        written += [_plot_hidden_gradients(gradients, outdir)]
    for path in written:
        print(f"wrote {path}")


def main(argv: list[str]) -> int:
    """Runs the report; a user error is one line on stderr and exit code 2."""
    try:
        report(_parse(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_USER_ERROR)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
