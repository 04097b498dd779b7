"""Tracker (JSONL, summary, W&B offline), run ids, the progress bar and the run manifest."""

import json
import math
import os
import shutil
import subprocess
import time

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import manifest as manifest_lib
from research.errors import ConfigError, WorkdirError
from research.tracking import Progress, Tracker, read_metrics, run_id

_CONFIG = {"seed": 0, "model": {"width": 8}}
_MANIFEST = {"git": {"sha": "abc", "dirty": False}}


def _tracker(workdir, **kwargs) -> Tracker:
    kwargs.setdefault("wandb_mode", "disabled")
    return Tracker(workdir, config=_CONFIG, manifest=_MANIFEST, **kwargs)


def _lines(workdir) -> list[str]:
    return (workdir / "metrics.jsonl").read_text().splitlines()


def test_log_writes_one_json_object_per_line_with_plain_floats(tmp_path):
    with _tracker(tmp_path) as tracker:
        tracker.log(1, {"train/loss": np.float32(0.5), "train/lr": jnp.asarray(1e-3)})
        tracker.log(2, {"eval/accuracy": 1, "train/loss": float("nan")})
        # Flushed per line: readable while the run is still going.
        assert len(_lines(tmp_path)) == 2

    assert (
        _lines(tmp_path)[0] == '{"step": 1, "train/loss": 0.5, "train/lr": 0.0010000000474974513}'
    )
    records = read_metrics(tmp_path)
    assert records[0] == {"step": 1, "train/loss": 0.5, "train/lr": float(np.float32(1e-3))}
    assert records[1]["eval/accuracy"] == 1.0 and isinstance(records[1]["eval/accuracy"], float)
    assert math.isnan(records[1]["train/loss"])


def test_log_rejects_bad_keys_and_non_scalars(tmp_path):
    with _tracker(tmp_path) as tracker:
        with pytest.raises(ValueError, match="<split>/<name>"):
            tracker.log(1, {"loss": 1.0})
        with pytest.raises(ValueError, match="scalar"):
            tracker.log(1, {"train/loss": np.ones(3)})
    assert read_metrics(tmp_path) == []


def test_truncate_after_drops_later_steps_and_appending_continues(tmp_path):
    with _tracker(tmp_path) as tracker:
        for step in range(1, 6):
            tracker.log(step, {"train/loss": float(step)})
    with _tracker(tmp_path) as resumed:
        resumed.truncate_after(3)
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
        resumed.log(4, {"train/loss": 40.0})
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def test_resume_without_metrics_history_warns_once(tmp_path, capsys):
    with _tracker(tmp_path) as tracker:
        for step in range(1, 4):
            tracker.log(step, {"train/loss": float(step)})
    (tmp_path / "metrics.jsonl").unlink()  # deleted between the kill and the resume
    with _tracker(tmp_path) as resumed:
        resumed.truncate_after(3)
        resumed.log(4, {"train/loss": 4.0})
    path = tmp_path / "metrics.jsonl"
    assert capsys.readouterr().err == (
        f"warning: {path} is missing; the metrics of steps 1..3 are gone "
        "(training resumes from step 3)\n"
    )
    assert [r["step"] for r in read_metrics(tmp_path)] == [4]

    path.write_text('{"step": 7, "train/loss": 7.0}\n')  # only rows after the resume step
    with _tracker(tmp_path) as resumed:
        resumed.truncate_after(5)
    err = capsys.readouterr().err
    assert err == (
        f"warning: {path} holds no rows up to step 5; the metrics of steps 1..5 are gone "
        "(training resumes from step 5)\n"
    )
    assert read_metrics(tmp_path) == []


def test_fresh_start_and_intact_resume_do_not_warn(tmp_path, capsys):
    with _tracker(tmp_path) as tracker:
        tracker.truncate_after(0)  # a fresh run: nothing to lose
        tracker.log(1, {"train/loss": 1.0})
    with _tracker(tmp_path) as resumed:
        resumed.truncate_after(1)
    (tmp_path / "metrics.jsonl").unlink()
    with _tracker(tmp_path, is_main=False) as other:  # only process 0 speaks
        other.truncate_after(1)
    with _tracker(tmp_path) as early:  # stopped at step 4, before the first log step (10)
        early.truncate_after(4, first_logged=10)
    assert capsys.readouterr().err == ""


def test_torn_last_line_is_tolerated_then_removed(tmp_path):
    with _tracker(tmp_path) as tracker:
        tracker.log(1, {"train/loss": 1.0})
        tracker.log(2, {"train/loss": 2.0})
    # What a SIGKILL in the middle of a write leaves behind.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train/lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]

    with _tracker(tmp_path) as resumed:
        resumed.truncate_after(2)
        resumed.log(3, {"train/loss": 3.0})
    assert _lines(tmp_path)[-1] == '{"step": 3, "train/loss": 3.0}'
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_reopening_after_a_torn_line_does_not_glue_records(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "tr')
    with _tracker(tmp_path) as tracker:  # no truncate_after: opening alone must repair the file
        tracker.log(2, {"train/loss": 2.0})
    assert read_metrics(tmp_path) == [
        {"step": 1, "train/loss": 1.0},
        {"step": 2, "train/loss": 2.0},
    ]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(WorkdirError, match="metrics.jsonl:2"):
        read_metrics(tmp_path)


def test_summary_json_is_sorted_pretty_and_plain(tmp_path):
    with _tracker(tmp_path) as tracker:
        tracker.write_summary({"test/accuracy": np.float32(0.75), "best/step": np.int64(40)})
    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text) == {"best/step": 40, "test/accuracy": 0.75}
    assert text == '{\n  "best/step": 40,\n  "test/accuracy": 0.75\n}\n'


def test_run_id_is_stable_and_distinct_per_workdir(tmp_path, monkeypatch):
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    assert run_id(a) == run_id(str(a)) == run_id(f"{a}/")
    assert run_id(a) != run_id(b)
    assert run_id(a).startswith("a-")
    monkeypatch.chdir(tmp_path)
    assert run_id("runs/a") == run_id(a)  # relative paths resolve against the cwd
    assert all(c.isalnum() or c in "-_" for c in run_id(tmp_path / "odd name:#?"))


def test_non_main_process_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with _tracker(workdir, is_main=False) as tracker:
        tracker.truncate_after(0)
        tracker.log(1, {"train/loss": 1.0})
        tracker.write_summary({"test/accuracy": 1.0})
        tracker.log_images([])
    assert not workdir.exists()


def test_bad_wandb_mode_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ConfigError, match="tracking.wandb_mode"):
        _tracker(tmp_path, wandb_mode="sometimes")


def test_wandb_mode_from_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with _tracker(tmp_path, wandb_mode="offline") as tracker:
        tracker.log(1, {"train/loss": 1.0})
    assert not (tmp_path / "wandb").exists()


def test_offline_wandb_run_is_created_under_workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    start = time.monotonic()
    with _tracker(tmp_path, wandb_mode="offline", name="t", tags=("test",)) as tracker:
        tracker.log(1, {"train/loss": 1.0})
        tracker.write_summary({"test/accuracy": 0.5})
    runs = [p for p in (tmp_path / "wandb").iterdir() if p.name.startswith("offline-run-")]
    assert len(runs) == 1 and runs[0].name.endswith(run_id(tmp_path))
    assert any(runs[0].glob("*.wandb"))
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 1.0}]
    assert time.monotonic() - start < 30  # measured ~1 s on 2 CPU cores


def test_progress_shows_rates_from_the_initial_step(capsys):
    bar = Progress(100, initial_step=40, global_batch_size=32, enabled=True)
    time.sleep(0.05)
    bar.update(50, loss=np.float32(0.123456))
    bar.close()
    final = capsys.readouterr().err.rsplit("\r", 1)[-1]
    assert "50/100" in final and "step/s" in final and "loss=0.1235" in final
    steps_per_s = float(final.split("ex/s=")[1].split()[0].rstrip("]")) / 32
    assert 10 / 2.0 < steps_per_s < 10 / 0.05  # 10 steps of this run in ~0.05 s, not 50 steps
    silent = Progress(10, enabled=False)
    silent.update(5, loss=1.0)
    silent.close()


def test_build_manifest_records_environment(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setenv("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    monkeypatch.setenv("WANDB_API_KEY", "secret")
    manifest = manifest_lib.build_manifest(
        mesh_shape={"data": 8}, seeds={"seed": np.int64(3)}, argv=["train.py", "--x=1"]
    )
    assert manifest["mesh_shape"] == {"data": 8}
    assert manifest["seeds"] == {"seed": 3}
    assert manifest["argv"] == ["train.py", "--x=1"]
    assert manifest["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    assert manifest["env"]["JAX_DEFAULT_MATMUL_PRECISION"] == "highest"
    assert "WANDB_API_KEY" not in manifest["env"]
    assert manifest["devices"]["device_count"] == 8
    assert manifest["devices"]["device_kinds"] == {"cpu": 8}
    assert manifest["devices"]["process_count"] == 1
    assert manifest["packages"]["jax"] == manifest_lib.package_versions(["jax"])["jax"]
    assert manifest_lib.package_versions(["no-such-package-x"]) == {
        "no-such-package-x": "not installed"
    }
    assert manifest["timestamp_utc"].endswith("+00:00")
    json.dumps(manifest)  # plain JSON all the way down


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_info_on_a_repo_and_outside_one(tmp_path):
    assert manifest_lib.git_info(tmp_path) == {"sha": "unknown", "dirty": "unknown"}

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    assert manifest_lib.git_info(tmp_path)["sha"] == "unknown"  # no commits yet
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    info = manifest_lib.git_info(tmp_path)
    assert len(info["sha"]) == 40 and info["dirty"] is False
    (tmp_path / "f.txt").write_text("b")
    assert manifest_lib.git_info(tmp_path)["dirty"] is True


def test_git_info_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert manifest_lib.git_info() == {"sha": "unknown", "dirty": "unknown"}


def test_write_json_is_atomic_sorted_and_handles_numpy(tmp_path):
    path = tmp_path / "sub" / "x.json"
    manifest_lib.write_json(path, {"b": np.float32(1.5), "a": (np.int32(2), jnp.zeros(2))})
    assert (
        path.read_text()
        == '{\n  "a": [\n    2,\n    [\n      0.0,\n      0.0\n    ]\n  ],\n  "b": 1.5\n}\n'
    )
    assert os.listdir(path.parent) == ["x.json"]  # no temporary left behind
    config = ml_collections.ConfigDict({"model": {"width": 8}, "seeds": (1, 2)})
    manifest_lib.write_json(path, config)
    assert json.loads(path.read_text()) == {"model": {"width": 8}, "seeds": [1, 2]}
