"""Mistakes a researcher makes with `launch/train.py`, each an exit code and one clear line:
config files, a learning rate that blows up, a read-only workdir, a full disk."""

import contextlib
import subprocess

import pytest
from train_cli import SMOKE, one_error_line, train

from research.errors import EXIT_DIVERGED, EXIT_USER_ERROR
from research.tracking import read_metrics


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def test_a_typo_inside_a_config_file_exits_2_naming_line_and_key(tmp_path, data_dir):
    text = SMOKE.read_text()
    assert "c.optimizer.learning_rate = 1e-2" in text
    config = tmp_path / "mine.py"
    config.write_text(
        text.replace("c.optimizer.learning_rate = 1e-2", "c.optimizer.learning_rat = 1e-5")
    )
    line = next(i for i, s in enumerate(config.read_text().splitlines(), 1) if "learning_rat" in s)
    result = train(tmp_path / "run", data_dir, config=config)
    one_error_line(
        result,
        f"{config}:{line}: unknown config key 'optimizer.learning_rat' "
        "(did you mean 'optimizer.learning_rate'?)",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name,body,message",
    [
        ("smok.py", None, "config file not found"),
        ("syntax.py", "def get_config(:\n", "syntax.py:1: syntax error"),
    ],
)
def test_missing_or_broken_config_file_exits_2(tmp_path, data_dir, name, body, message):
    if body is not None:
        (tmp_path / name).write_text(body)
    one_error_line(train(tmp_path / "run", data_dir, config=tmp_path / name), message)
    assert not (tmp_path / "run").exists()


def test_a_finite_blow_up_exits_3_with_the_step_and_the_kept_checkpoint(tmp_path, data_dir):
    result = train(
        tmp_path,
        data_dir,
        "optimizer.learning_rate=1e6",
        "checkpoint.every_steps=2",
        "checkpoint.best_metric=",
    )
    assert result.returncode == EXIT_DIVERGED, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("diverged: training diverged at step ")
    assert "stayed above 10x its initial value" in line
    rows = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert rows[-1]["train/loss"] > 1e3 * rows[0]["train/loss"] and rows[-1]["step"] < 60
    assert not (tmp_path / "summary.json").exists()
    assert "the latest checkpoint (step " in line and "in a new --workdir" in line


def test_a_blow_up_before_any_checkpoint_says_none_was_saved(tmp_path, data_dir):
    result = train(tmp_path, data_dir, "optimizer.learning_rate=1e6")
    assert result.returncode == EXIT_DIVERGED, result.stderr
    assert "; no checkpoint was saved;" in result.stderr


@contextlib.contextmanager
def _mounted(target, *options):
    """A filesystem mounted on `target` for the test (skips where mounting is not allowed)."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_read_only_workdir_exits_2_before_anything_runs(tmp_path, data_dir):
    source = tmp_path / "source"
    source.mkdir()
    with _mounted(tmp_path / "ro", "--bind", str(source)) as ro:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        result = train(ro / "run", data_dir)
    one_error_line(result, f"cannot write to --workdir {ro / 'run'}: {ro} is read-only")


def test_a_full_disk_exits_2_in_one_line_and_the_run_resumes_after_freeing_space(
    tmp_path, data_dir
):
    # 300 KiB hold the run files and the first checkpoints, not the whole run.
    with _mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=300k", "tmpfs") as disk:
        full = train(disk / "run", data_dir)
        one_error_line(full, "No space left on device; free some space and rerun")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = train(disk / "run", data_dir)
        assert resumed.returncode == 0, resumed.stderr
        steps = [r["step"] for r in read_metrics(disk / "run") if "train/loss" in r]
    assert steps == list(range(1, 61))
    assert full.returncode == EXIT_USER_ERROR
