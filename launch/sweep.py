"""Launch every run of a config's `get_sweep(arg)`, skipping finished runs and resuming others.

    python launch/sweep.py --config=configs/X.py[:arg] --workdir=DIR --backend=local|slurm|tpu \\
        [--parallel=N] [--dry-run]

Each run trains into DIR/<run name> (a name made from its overrides); DIR/sweep.json records the
command, base config, overrides, git state and package versions. Backends: `local` runs N
train.py processes at a time (logs in DIR/<run>/log.txt); `slurm` submits one job array through
submitit (`pip install -e '.[cluster]'`); `tpu` runs each run on every worker of a TPU VM through
`gcloud compute tpus tpu-vm ssh`. `--dry-run` prints what would run and writes nothing.

Exit codes: 0 every run finished (or was submitted); 2 user error; 75 some runs were preempted
(rerun the same command to resume them); 1 some runs failed. `--help` lists every flag.
"""

import contextlib
import copy
import shlex
import sys
from collections.abc import Callable

from absl import flags
from etils import epath

from research import backends, slurm, storage
from research import config as config_lib
from research import search as search_lib
from research import sweep as sweep_lib
from research.errors import EXIT_OK, EXIT_PREEMPTED, ConfigError, UserError, WorkdirError

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file with a get_sweep(arg): `path.py[:arg]`.")
flags.DEFINE_string("workdir", None, "Sweep directory; each run goes to DIR/<run name>.")
flags.DEFINE_enum("backend", "local", ["local", "slurm", "tpu"], "Where the runs execute.")
flags.DEFINE_integer(
    "parallel", 1, "Runs at a time (local processes / SLURM array slots).", lower_bound=1
)
flags.DEFINE_bool("dry_run", False, "Print the plan and the commands; run and write nothing.")
flags.DEFINE_list("devices", [], "local: GPU ids (e.g. 0,1,2,3); one run per GPU at a time.")
flags.DEFINE_enum("search", "grid", ["grid", "optuna"], "grid: get_sweep(); optuna: Bayesian.")
flags.DEFINE_integer("trials", 20, "optuna: finished trials to reach.", lower_bound=1)
flags.DEFINE_string("objective", "eval/accuracy", "optuna: the summary.json key to optimise.")
flags.DEFINE_enum("direction", "maximize", ["maximize", "minimize"], "optuna: direction.")
flags.DEFINE_integer("study_seed", 0, "optuna: seed of the TPE sampler.")
flags.DEFINE_string("name", None, "Sweep name (W&B group, SLURM job name); default: DIR's name.")
flags.DEFINE_string("partition", None, "slurm: partition.")
flags.DEFINE_integer("nodes", 1, "slurm: nodes per run.")
flags.DEFINE_integer(
    "gpus_per_node", 1, "slurm: GPUs per node (one task per GPU); 0 on a CPU-only cluster."
)
flags.DEFINE_integer(
    "tasks_per_node", None, "slurm: processes per node (default: one per GPU, or 1 without GPUs)."
)
flags.DEFINE_integer("cpus_per_task", 8, "slurm: CPU cores per task.")
flags.DEFINE_integer("timeout_min", 240, "slurm: time limit per run, in minutes.")
flags.DEFINE_string("tpu_name", None, "tpu: name of the TPU VM (or pod slice).")
flags.DEFINE_string("zone", None, "tpu: its zone, e.g. us-central2-b.")
flags.DEFINE_string("remote_repo", "~/research", "tpu: the checkout of this repo on the workers.")


HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def _usage() -> str:
    """The module docstring and this script's flags (absl registers them under sys.argv[0] when
    the file runs as a script), for --help."""
    module = sys.argv[0] if __name__ == "__main__" else sys.modules[__name__]
    return f"{__doc__.strip()}\n\nflags:\n{FLAGS.module_help(module)}"


def _parse(argv: list[str]) -> None:
    """Parse flags (`--dry-run` is accepted for `--dry_run`); bad flags are user errors."""
    argv = [
        a.replace("--dry-run", "--dry_run", 1) if a.startswith("--dry-run") else a for a in argv
    ]
    try:
        FLAGS(argv)
    except flags.Error as e:
        raise UserError(f"bad command line: {str(e).splitlines()[0]}") from None
    if not FLAGS.config or not FLAGS.workdir:
        raise UserError("both --config=configs/X.py[:arg] and --workdir=DIR are required")
    if FLAGS.backend == "tpu" and not (FLAGS.tpu_name and FLAGS.zone):
        raise UserError("--backend=tpu needs --tpu_name and --zone")


def _load(workdir: str) -> tuple:
    """Base config and planned runs; every run's overrides are checked against the config now,
    so a typo fails before anything is launched."""
    path, arg = sweep_lib.parse_config_flag(FLAGS.config)
    base = config_lib.load_config_file(path, arg)
    runs = sweep_lib.plan(workdir, sweep_lib.load_sweep(path, arg))
    for run in runs:
        try:
            config_lib.apply_overrides(copy.deepcopy(base), run.overrides)
        except ConfigError as e:
            raise ConfigError(f"{path}: get_sweep() run {run.name}: {e}; fix get_sweep") from None
    return base, runs


@contextlib.contextmanager
def _writing(workdir: epath.Path):
    """A sweep directory that cannot be created or written is a user error, not a traceback."""
    try:
        yield
    except OSError as e:
        raise WorkdirError(
            f"--workdir={workdir}: cannot write there ({e.strerror}); choose a directory you "
            "can write to"
        ) from None


def _commands(base, runs: list, sweep_name: str) -> list[tuple]:
    """(run, argv) for every run that is not finished yet."""
    commands = []
    for run in runs:
        if run.status == sweep_lib.FINISHED:
            continue
        extra = sweep_lib.tracking_overrides(base, sweep_name, run.overrides)
        python = sys.executable
        if FLAGS.backend == "tpu":
            extra["parallel.distributed"] = True  # every worker of the pod joins one job
            python = "python"  # the workers' interpreter, not this machine's path
        if FLAGS.backend == "slurm" and slurm.processes_per_run(_slurm_parameters(1)) > 1:
            extra["parallel.distributed"] = True  # one process per task; jax reads SLURM's env
        commands.append((run, sweep_lib.train_argv(FLAGS.config, run, extra, python=python)))
    return commands


def _print_table(runs: list, statuses: dict[str, str]) -> None:
    """One line per run: name, status, workdir."""
    width = max(len(run.name) for run in runs)
    print(f"{'run':<{width}}  {'status':<12}  workdir")
    for run in runs:
        print(f"{run.name:<{width}}  {statuses.get(run.name, run.status):<12}  {run.workdir}")


def _dispatch(
    commands: list[tuple], sweep_name: str, workdir: epath.Path, record: Callable[[], None]
) -> dict[str, str]:
    """Print (dry run) or execute the commands on the chosen backend; returns run -> status.
    `record` writes the sweep's manifest: before local runs start, after a SLURM submission
    was accepted (a rejected one leaves nothing that looks like a submitted sweep)."""
    if FLAGS.backend == "slurm":
        if storage.is_remote(workdir):
            raise UserError(
                f"--workdir={workdir}: SLURM jobs keep their files in the sweep directory, which "
                "must be on a filesystem the nodes share, not an object store"
            )
        return _slurm(commands, sweep_name, workdir, record)
    if not FLAGS.dry_run:
        record()
    if not commands:
        return {}
    if FLAGS.backend == "tpu":
        tpu = [(run, backends.tpu_command(argv, **_tpu_kwargs())) for run, argv in commands]
        if FLAGS.dry_run:
            return _print_commands(tpu)
        # One TPU slice runs one job at a time: the runs go one after another.
        return backends.run_local(tpu, parallel=1, on_done=_report)
    if FLAGS.dry_run:
        return _print_commands(commands)
    return backends.run_local(
        commands, parallel=FLAGS.parallel, on_done=_report, devices=FLAGS.devices
    )


def _slurm_parameters(num_runs: int) -> dict:
    """The job array's submitit parameters, from the flags."""
    return slurm.slurm_parameters(
        name=FLAGS.name or storage.workdir_path(FLAGS.workdir).name,
        num_runs=num_runs,
        parallel=FLAGS.parallel,
        gpus_per_node=FLAGS.gpus_per_node,
        nodes=FLAGS.nodes,
        partition=FLAGS.partition,
        timeout_min=FLAGS.timeout_min,
        cpus_per_task=FLAGS.cpus_per_task,
        tasks_per_node=FLAGS.tasks_per_node,
    )


def _slurm(
    commands: list[tuple], sweep_name: str, workdir: epath.Path, record: Callable[[], None]
) -> dict[str, str]:
    """Submit the runs that have no live job yet as one array (dry run: print its parameters
    and commands); run -> `job ID` for what was submitted, `job ID STATE` for what still runs."""
    folder = workdir / "slurm"
    live = {} if FLAGS.dry_run else slurm.live_jobs(folder)
    for name, job in live.items():
        print(f"{name}: {job}; not submitted again", flush=True)
    commands = [(run, argv) for run, argv in commands if run.name not in live]
    if not commands:
        return live
    params = {**_slurm_parameters(len(commands)), "name": sweep_name}
    print("submitit parameters:", params)
    print("\n".join(slurm.sbatch_lines(params, len(commands))))
    if FLAGS.dry_run:
        return _print_commands(commands)
    with _writing(workdir):
        submitted = slurm.submit(commands, params, folder)
    record()
    return {**live, **{name: f"job {job}" for name, job in submitted.items()}}


def _tpu_kwargs() -> dict:
    """The tpu backend's flags, as `tpu_command` keywords."""
    return {"tpu_name": FLAGS.tpu_name, "zone": FLAGS.zone, "repo_dir": FLAGS.remote_repo}


def _print_commands(commands: list[tuple]) -> dict[str, str]:
    """Dry run: each command as a copy-pasteable shell line."""
    for _, argv in commands:
        print(shlex.join(argv))
    return {}


def _report(run, status: str) -> None:
    print(f"{run.name}: {status}", flush=True)


def _exit_code(statuses: dict[str, str]) -> int:
    """0 if nothing failed, 75 if the only trouble was preemption, 1 otherwise."""
    bad = {s for s in statuses.values() if s not in ("done", "preempted") and "job" not in s}
    if bad:
        return 1
    return EXIT_PREEMPTED if "preempted" in statuses.values() else EXIT_OK


def _optuna(sweep_name: str, workdir: epath.Path) -> int:
    """Bayesian search: optuna asks, each trial trains locally like a sweep run, summary tells."""
    if FLAGS.backend != "local" or FLAGS.dry_run:
        raise UserError("--search=optuna runs with --backend=local and without --dry-run")
    if storage.is_remote(workdir):  # the study is an SQLite file
        raise UserError(f"--search=optuna needs a local --workdir, not {workdir}")
    path, arg = sweep_lib.parse_config_flag(FLAGS.config)
    base = config_lib.load_config_file(path, arg)
    space = search_lib.load_search_space(path, arg)
    with _writing(workdir):
        workdir.mkdir(parents=True, exist_ok=True)

    def launch(run) -> str:
        config_lib.apply_overrides(copy.deepcopy(base), run.overrides)  # typos fail here
        extra = sweep_lib.tracking_overrides(base, sweep_name, run.overrides)
        argv = sweep_lib.train_argv(FLAGS.config, run, extra, python=sys.executable)
        return backends.run_local([(run, argv)], devices=FLAGS.devices[:1])[run.name]

    study = search_lib.run_study(
        workdir,
        space,
        trials=FLAGS.trials,
        objective=FLAGS.objective,
        direction=FLAGS.direction,
        seed=FLAGS.study_seed,
        launch=launch,
    )
    print(f"best trial {study.best_trial.number}: {FLAGS.objective}={study.best_value:.4f}")
    print("best overrides:", study.best_params)
    return EXIT_OK


def main(argv: list[str]) -> int:
    """Plan the sweep, write its manifest, launch the unfinished runs, print their statuses."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(_usage())
        return EXIT_OK
    try:
        _parse(argv)
        workdir = storage.workdir_path(FLAGS.workdir)
        sweep_name = FLAGS.name or workdir.name
        if FLAGS.search == "optuna":
            return _optuna(sweep_name, workdir)
        base, runs = _load(FLAGS.workdir)  # the string: gs://... must keep its "//"
        commands = _commands(base, runs, sweep_name)
        if FLAGS.backend == "slurm" and not FLAGS.dry_run:
            slurm.import_submitit()  # fail before anything is written

        def record() -> None:
            manifest = sweep_lib.build_sweep_manifest(
                argv=argv, config=FLAGS.config, base=base, runs=runs
            )
            with _writing(workdir):
                sweep_lib.write_sweep_manifest(workdir, manifest)

        statuses = _dispatch(commands, sweep_name, workdir, record)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    _print_table(runs, statuses)
    return _exit_code(statuses)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
