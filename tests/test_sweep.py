"""Sweeps: expansion helpers, run names, finished/interrupted planning, the manifest, backends."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import gcs_emulator
import pytest

from research import backends, sweep
from research import config as config_lib
from research.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# A two-run sweep of a run small enough to train twice in a test (5 steps, no plots).
TINY_CONFIG = '''
"""Two 5-step MLP runs on digits, for the sweep launcher test."""

import ml_collections

from research.config import base_config


def get_config(arg=None):
    """The smoke run, shortened."""
    c = base_config()
    c.batch_size = 32
    c.total_steps = 5
    c.log_every_steps = 5
    c.diagnostics = False
    c.model = ml_collections.ConfigDict({"name": "mlp_tiny", "dropout_rate": 0.0})
    c.checkpoint.best_metric = ""
    c.checkpoint.async_save = False
    c.tracking.progress = False
    c.tracking.plots = False
    return c


def get_sweep(arg=None):
    """Two seeds."""
    return [{"seed": 0}, {"seed": 1, "optimizer.name": "sgd"}]
'''


def _launch(
    *args: str, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, "launch/sweep.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_product_zip_sizes_and_order():
    runs = sweep.product({"optimizer.name": ["sgd", "adam"]}, seed=[0, 1, 2])
    assert len(runs) == 6
    assert runs[0] == {"optimizer.name": "sgd", "seed": 0}
    assert runs[-1] == {"optimizer.name": "adam", "seed": 2}
    assert sweep.product(optimizer__learning_rate=[0.1]) == [{"optimizer.learning_rate": 0.1}]
    assert sweep.zip_(seed=[0, 1], batch_size=[8, 16]) == [
        {"seed": 0, "batch_size": 8},
        {"seed": 1, "batch_size": 16},
    ]
    with pytest.raises(ConfigError, match="equal length"):
        sweep.zip_(seed=[0, 1], batch_size=[8])
    with pytest.raises(ConfigError, match="list of values"):
        sweep.product(seed=3)


def test_kfold_and_combine():
    assert sweep.kfold(3) == [{"data.fold": 0}, {"data.fold": 1}, {"data.fold": 2}]
    runs = sweep.combine(sweep.kfold(2), sweep.product(seed=[0, 1, 2]))
    assert len(runs) == 6 and {"data.fold": 1, "seed": 2} in runs
    with pytest.raises(ConfigError, match="seed"):
        sweep.combine(sweep.product(seed=[0]), sweep.product(seed=[1]))


def test_random_search_is_deterministic_and_in_range():
    space = {
        "optimizer.learning_rate": (1e-4, 1e-1, "log"),
        "batch_size": (16, 256, "log"),
        "mixup.alpha": (0.0, 1.0, "linear"),
        "optimizer.name": ["sgd", "adam", "adamw"],
    }
    runs = sweep.random_search(space, n=50, seed=3)
    assert len(runs) == 50
    assert runs == sweep.random_search(space, n=50, seed=3)
    assert runs != sweep.random_search(space, n=50, seed=4)
    # The order in which the space lists its keys does not change the draws.
    assert runs == sweep.random_search(dict(reversed(space.items())), n=50, seed=3)
    for run in runs:
        assert 1e-4 <= run["optimizer.learning_rate"] <= 1e-1
        assert isinstance(run["batch_size"], int) and 16 <= run["batch_size"] <= 256
        assert run["optimizer.name"] in space["optimizer.name"]
    assert {run["optimizer.name"] for run in runs} == set(space["optimizer.name"])
    with pytest.raises(ConfigError, match="choices"):
        sweep.random_search({"seed": 3}, n=1)


def test_run_name_readable_stable_and_distinct():
    name = sweep.run_name({"seed": 1, "optimizer.name": "adam"})
    assert name == "optimizer.name-adam_seed-1"
    assert sweep.run_name({"optimizer.name": "adam", "seed": 1}) == name
    assert sweep.run_name({"optimizer.learning_rate": 1e-5}) == "optimizer.learning_rate-1e-05"
    candidates = [
        {"seed": 1},
        {"seed": "1"},
        {"seed": 1.0},
        {"seed": True},
        {"seed": "True"},
        {"data.name": "a b"},
        {"data.name": "a-b"},
        {"data.name": "a/b"},
        {"data.name": "x_seed-2"},
        {"data.name": "x", "seed": 2},
        {"model.hidden_sizes": (256, 128)},
        {"model.hidden_sizes": "256-128"},
        {},
    ]
    names = [sweep.run_name(c) for c in candidates]
    assert len(set(names)) == len(names), names
    long = sweep.run_name({f"key{i}": "v" * 20 for i in range(10)})
    assert len(long) <= sweep.MAX_NAME_LENGTH
    assert long == sweep.run_name({f"key{i}": "v" * 20 for i in reversed(range(10))})
    for name in [*names, long]:
        assert "/" not in name and " " not in name and not name.startswith(".")


def test_format_override_round_trips_through_config_flags(tmp_path):
    values = {
        "optimizer.name": "sgd",
        "optimizer.learning_rate": 1e-5,
        "tracking.tags": ("sweep:a b", "x'y"),
        "model.name": "mlp tiny",
        "parallel.distributed": True,
        "eval_batch_size": 16,
    }
    script = tmp_path / "parse.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            from absl import flags
            from ml_collections import config_flags
            config_flags.DEFINE_config_file("config", None, "")
            flags.FLAGS(sys.argv)
            c = flags.FLAGS.config
            print(json.dumps(c.to_dict()))
            """
        )
    )
    args = [sweep.format_override(k, v) for k, v in values.items()]
    # Through a shell, as a user pastes a dry-run line.
    line = shlex.join([sys.executable, str(script), "--config=configs/smoke.py", *args])
    out = subprocess.run(line, shell=True, cwd=ROOT, capture_output=True, text=True, check=True)
    parsed = json.loads(out.stdout)
    assert parsed["optimizer"]["name"] == "sgd"
    assert parsed["optimizer"]["learning_rate"] == 1e-5
    assert parsed["tracking"]["tags"] == ["sweep:a b", "x'y"]
    assert parsed["model"]["name"] == "mlp tiny"
    assert parsed["parallel"]["distributed"] is True
    assert parsed["eval_batch_size"] == 16


def test_plan_skips_finished_and_resumes_interrupted(tmp_path):
    runs = sweep.product(seed=[0, 1, 2])
    finished, interrupted, pending = (tmp_path / sweep.run_name(r) for r in runs)
    (finished / "checkpoints").mkdir(parents=True)
    (finished / "summary.json").write_text("{}")
    (interrupted / "checkpoints").mkdir(parents=True)
    pending.mkdir()
    (pending / "log.txt").write_text("error: bad key\n")  # a run that failed before training
    planned = sweep.plan(tmp_path, runs)
    assert [r.status for r in planned] == [sweep.FINISHED, sweep.INTERRUPTED, sweep.PENDING]
    assert [r.workdir for r in planned] == [str(finished), str(interrupted), str(pending)]
    with pytest.raises(ConfigError, match="twice"):
        sweep.plan(tmp_path, [{"seed": 0}, {"seed": 0}])


def test_load_sweep(tmp_path):
    assert len(sweep.load_sweep(ROOT / "configs/fundamentals/optimizers.py")) == 8
    with pytest.raises(ConfigError, match="get_sweep"):
        sweep.load_sweep(ROOT / "configs/smoke.py")
    with pytest.raises(ConfigError, match="not found"):
        sweep.load_sweep(tmp_path / "missing.py")


def test_sweep_manifest_content(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.manifest, "git_info", lambda _: {"sha": "abc", "dirty": True})
    monkeypatch.setattr(sweep, "_git_diff", lambda _: "diff --git a/x b/x\n")
    base = config_lib.load_config_file(ROOT / "configs/smoke.py")
    runs = sweep.plan(tmp_path, sweep.product(seed=[0, 1]))
    argv = ["launch/sweep.py", "--config=configs/smoke.py", f"--workdir={tmp_path}"]
    content = sweep.build_sweep_manifest(argv=argv, config="configs/smoke.py", base=base, runs=runs)
    sweep.write_sweep_manifest(tmp_path, content)
    sweep.write_sweep_manifest(tmp_path, {**content, "command": [*argv, "--parallel=2"]})
    written = json.loads((tmp_path / "sweep.json").read_text())
    assert written["command"] == [*argv, "--parallel=2"]
    assert written["history"][0]["command"] == argv
    assert written["base_config"] == json.loads(config_lib.to_json(base))
    assert written["overrides"] == [{"seed": 0}, {"seed": 1}]
    assert written["runs"] == {"seed-0": {"seed": 0}, "seed-1": {"seed": 1}}
    assert written["git"] == {"sha": "abc", "dirty": True, "diff": "diff --git a/x b/x\n"}
    assert written["packages"]["jax"] != "not installed"


def test_slurm_dry_run_prints_parameters_and_commands(tmp_path):
    out = _launch(
        "--config=configs/fundamentals/optimizers.py",
        f"--workdir={tmp_path}/opt",
        "--backend=slurm",
        "--parallel=3",
        "--gpus_per_node=4",
        "--partition=gpu",
        "--dry-run",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "#SBATCH --array=0-7%3" in lines
    assert "#SBATCH --ntasks-per-node=4" in lines and "#SBATCH --gpus-per-node=4" in lines
    assert "#SBATCH --partition=gpu" in lines
    commands = [shlex.split(line) for line in lines if "launch/train.py" in line]
    assert len(commands) == 8
    sgd = commands[0]
    assert sgd[1:4] == [
        "launch/train.py",
        "--config=configs/fundamentals/optimizers.py",
        f"--workdir={tmp_path}/opt/optimizer.learning_rate-0.1_optimizer.name-sgd"
        "_optimizer.weight_decay-0.0",
    ]
    assert "--config.optimizer.name=sgd" in sgd and "--config.tracking.group=opt" in sgd
    assert "--config.tracking.tags=('sweep:opt',)" in sgd
    assert "--config.parallel.distributed=True" in sgd  # 4 processes per run join one job
    assert not (tmp_path / "opt").exists()  # a dry run writes nothing


def test_tpu_dry_run_prints_gcloud_commands(tmp_path):
    with gcs_emulator.start("bucket") as (url, env):  # the runs' states are read from gs://
        out = _launch(
            "--config=configs/fundamentals/optimizers.py:sgd",
            "--workdir=gs://bucket/opt",
            "--backend=tpu",
            "--tpu_name=pod",
            "--zone=us-central2-b",
            "--dry-run",
            env=env,
        )
        assert gcs_emulator.list_objects(url, "bucket", "") == []  # a dry run writes nothing
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines() if line.startswith("gcloud")]
    assert len(commands) == 8
    head = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
    head += ["--zone=us-central2-b", "--worker=all"]
    assert commands[0][:-1] == head
    remote = commands[0][-1].removeprefix("--command=")
    assert remote.startswith("cd ~/research && python launch/train.py ")
    remote_argv = shlex.split(remote.split(" && ", 1)[1])
    assert "--config=configs/fundamentals/optimizers.py:sgd" in remote_argv
    assert "--config.parallel.distributed=True" in remote_argv
    assert any(a.startswith("--workdir=gs://bucket/opt/optimizer.") for a in remote_argv)
    missing = _launch("--config=configs/smoke.py", "--workdir=x", "--backend=tpu", "--dry-run")
    assert missing.returncode == 2 and "--tpu_name" in missing.stderr


def test_bad_sweep_is_a_user_error(tmp_path):
    out = _launch("--config=configs/smoke.py", f"--workdir={tmp_path}", "--dry-run")
    assert out.returncode == 2 and "get_sweep" in out.stderr
    config = tmp_path / "typo.py"
    config.write_text(TINY_CONFIG.replace('"optimizer.name"', '"optimizer.nmae"'))
    out = _launch(f"--config={config}", f"--workdir={tmp_path}/s", "--dry-run")
    assert out.returncode == 2 and "optimizer.nmae" in out.stderr


def test_bad_flags_and_unwritable_workdir_are_one_line_user_errors(tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cases = {
        # flags -> what the one line must say
        ("--parallel=0", "--dry-run"): "--parallel=0",
        ("--search=optuna", "--trials=0"): "--trials=0",
        (f"--workdir={blocker}/sweep",): f"--workdir={blocker}/sweep: cannot write there",
    }
    for flags, message in cases.items():
        workdir = (
            () if any(f.startswith("--workdir") for f in flags) else (f"--workdir={tmp_path}",)
        )
        out = _launch(f"--config={config}", *workdir, *flags)
        assert out.returncode == 2, (flags, out.stderr)
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
        assert message in out.stderr
    typo = tmp_path / "typo.py"
    typo.write_text(TINY_CONFIG.replace('"optimizer.name"', '"optimizer.nmae"'))
    out = _launch(f"--config={typo}", f"--workdir={tmp_path}/s", "--dry-run")
    assert f"{typo}: get_sweep() run optimizer.nmae-sgd_seed-1: unknown" in out.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "sweep.json").exists()


@pytest.mark.slow
def test_local_sweep_runs_in_parallel_then_skips_finished(tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG)
    workdir = tmp_path / "sweep"
    args = (f"--config={config}", f"--workdir={workdir}", "--parallel=2")
    out = _launch(*args, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    names = ["seed-0", "optimizer.name-sgd_seed-1"]
    for name in names:
        assert (workdir / name / "summary.json").is_file(), (workdir / name / "log.txt").read_text()
        assert (workdir / name / "log.txt").is_file()
        assert json.loads((workdir / name / "config.json").read_text())["tracking"]["group"] == (
            "sweep"
        )
    manifest = json.loads((workdir / "sweep.json").read_text())
    assert manifest["overrides"] == [{"seed": 0}, {"seed": 1, "optimizer.name": "sgd"}]
    assert manifest["base_config"]["total_steps"] == 5
    mtime = (workdir / names[0] / "summary.json").stat().st_mtime_ns
    again = _launch(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished") == 2 and "done" not in again.stdout
    assert (workdir / names[0] / "summary.json").stat().st_mtime_ns == mtime
    assert len(json.loads((workdir / "sweep.json").read_text())["history"]) == 1


def test_run_local_reports_exit_codes_and_logs(tmp_path):
    runs = sweep.plan(tmp_path, sweep.product(seed=[0, 3, 75, 2]))
    commands = [
        (run, [sys.executable, "-c", f"print('run {run.name}'); raise SystemExit({code})"])
        for run, code in zip(runs, (0, 3, 75, 2), strict=True)
    ]
    seen = []
    statuses = backends.run_local(commands, parallel=2, on_done=lambda r, s: seen.append(r.name))
    assert statuses == {
        "seed-0": "done",
        "seed-3": "diverged",
        "seed-75": "preempted",
        "seed-2": "user error",
    }
    assert sorted(seen) == sorted(statuses)
    assert (tmp_path / "seed-75" / "log.txt").read_text() == "run seed-75\n"


def test_kfold_splits_partition_the_train_split(tmp_path):
    import numpy as np

    from research import data
    from research.config import base_config
    from research.train.setup import split_names

    info = data.dataset_info("digits", str(tmp_path))
    d = base_config().data
    d.num_folds = 5
    seen, sizes = [], []
    for fold in range(5):
        d.fold = fold
        names = split_names(d, info.splits)
        held = data.open_source("digits", names["eval"], str(tmp_path), in_memory=True)
        rest = data.open_source("digits", names["train"], str(tmp_path), in_memory=True)
        assert len(held) + len(rest) == info.splits["train"]
        sizes.append(len(held))
        seen.append(held.arrays["image"].reshape(len(held), -1))
    everything = data.open_source("digits", "train", str(tmp_path), in_memory=True)
    # The held-out folds, in order, are exactly the train split: each example once.
    np.testing.assert_array_equal(
        np.concatenate(seen), everything.arrays["image"].reshape(len(everything), -1)
    )
    assert max(sizes) - min(sizes) <= 1


def test_local_runs_get_one_gpu_each(tmp_path):
    # Each fake run records the GPU it was given and how many runs held one at that moment.
    script = (
        "import os, pathlib, time; d = os.environ['CUDA_VISIBLE_DEVICES']; "
        "lock = pathlib.Path(os.environ['LOCKS']) / d; assert not lock.exists(); "
        "lock.touch(); time.sleep(0.3); lock.unlink(); print('gpu', d)"
    )
    (tmp_path / "locks").mkdir()
    os.environ["LOCKS"] = str(tmp_path / "locks")
    try:
        runs = [
            sweep.PlannedRun(f"r{i}", {}, str(tmp_path / f"r{i}"), sweep.PENDING) for i in range(5)
        ]
        commands = [(run, [sys.executable, "-c", script]) for run in runs]
        statuses = backends.run_local(commands, devices=["0", "1"])
    finally:
        del os.environ["LOCKS"]
    assert set(statuses.values()) == {"done"}
    used = [(tmp_path / f"r{i}" / "log.txt").read_text().split()[-1] for i in range(5)]
    assert set(used) <= {"0", "1"} and len(set(used)) == 2
