"""gs:// workdirs for real, against a Cloud Storage emulator on loopback: a run writes its files
and Orbax checkpoints into the bucket, is killed, resumes exactly, and report.py reads it."""

import json
import os
import signal
import subprocess
import sys

import gcs_emulator
import pytest
from train_cli import ROOT, train

from research.tracking import read_metrics

BUCKET = "bucket"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def emulator():
    """(URL, environment) of a fresh in-memory emulator holding one empty bucket."""
    with gcs_emulator.start(BUCKET) as running:
        yield running


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, data_dir):
    """The same run, uninterrupted, in a local workdir."""
    workdir = tmp_path_factory.mktemp("local")
    result = train(workdir, data_dir)
    assert result.returncode == 0, result.stderr
    return workdir


def _object_json(url: str, name: str):
    return json.loads(gcs_emulator.read_object(url, BUCKET, name))


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def _remote_metrics(url: str, run: str) -> list[dict]:
    text = gcs_emulator.read_object(url, BUCKET, f"{run}/metrics.jsonl").decode()
    return [json.loads(line) for line in text.splitlines()]


def test_a_gs_run_killed_and_resumed_equals_a_local_uninterrupted_one(
    emulator, data_dir, local_reference, tmp_path
):
    url, env = emulator
    run = "sweep/run"
    first = train(f"gs://{BUCKET}/{run}", data_dir, signal_at=("SIGKILL", "step", "45"), env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr
    names = gcs_emulator.list_objects(url, BUCKET, f"{run}/")
    for name in ("config.json", "manifest.json", "metrics.jsonl", "param_rules.txt", "lock"):
        assert f"{run}/{name}" in names, name
    assert f"{run}/summary.json" not in names
    assert not (ROOT / "gs:").exists()  # nothing written to a local directory named after it
    # Saves are asynchronous: a step is complete once Orbax's marker object is written.
    committed = [s for s in (20, 40) if f"{run}/checkpoints/{s}/commit_success.txt" in names]
    assert committed, names
    # The metrics reach the bucket with every checkpoint: the history covers the saved steps.
    assert set(range(1, committed[-1] + 1)) <= set(_losses(_remote_metrics(url, run)))

    second = train(f"gs://{BUCKET}/{run}", data_dir, env=env)
    assert second.returncode == 0, second.stderr
    assert f"resuming from step {committed[-1]} (gs://{BUCKET}/{run}/checkpoints)" in second.stdout
    assert "removing a stale lock" in second.stderr  # the killed owner's pid is gone
    names = gcs_emulator.list_objects(url, BUCKET, f"{run}/")
    assert f"{run}/lock" not in names and f"{run}/plots/learning_curves.png" in names
    assert _losses(_remote_metrics(url, run)) == _losses(read_metrics(local_reference))
    summary = _object_json(url, f"{run}/summary.json")
    reference = json.loads((local_reference / "summary.json").read_text())
    for key in ("test/accuracy", "test/loss", "eval/accuracy", "train/loss", "step"):
        assert summary[key] == reference[key], key
    assert len(_object_json(url, f"{run}/manifest.json")["history"]) == 1  # the killed call

    report = subprocess.run(
        [sys.executable, "launch/report.py", f"gs://{BUCKET}/sweep", "--metric=test/accuracy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("1 runs in 1 groups")
    table = gcs_emulator.read_object(url, BUCKET, "sweep/report/report.md").decode()
    assert f"{reference['test/accuracy']:.4f}" in table
