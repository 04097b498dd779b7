"""Two processes with 4 CPU devices each train exactly like one process with 8 (jit and pmap).

Real `jax.distributed` processes on loopback, so the cross-process collectives (gradients,
BatchNorm statistics, eval sums) are exercised, not just the single-process mesh.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from research import config as cfg
from research import data
from research.tracking import read_metrics
from research.train import loop

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.py"
PROCESSES, LOCAL_DEVICES, STEPS = 2, 4, 20
TIMEOUT_S = 180  # a hung collective must not block CI; a normal pair takes ~10 s
# Dropout off: its masks depend on the device layout, so drivers would differ by more than rounding.
OVERRIDES = {
    "total_steps": STEPS,
    "log_every_steps": 1,
    "eval_every_steps": 10,
    "checkpoint.every_steps": 10,
    "model.dropout_rate": 0.0,
    "tracking.plots": False,
}

# One process of a 2-process job: argv = process_id port config workdir report overrides-json.
# It records what *this* process logs (every process runs Tracker.log; only process 0 writes
# metrics.jsonl), so the test can check that the hosts agree, not just process 0's file.
CHILD = """
import json, sys
import jax
from research import config as cfg
from research.tracking import Tracker
from research.train import loop

process_id, port, config_file, workdir, report, overrides = sys.argv[1:]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
# Gloo advertises the address of the machine's hostname unless told otherwise; keep it on loopback.
from jax._src import xla_bridge
make_gloo = xla_bridge._jax.make_gloo_tcp_collectives
xla_bridge._jax.make_gloo_tcp_collectives = lambda **kw: make_gloo(hostname="127.0.0.1", **kw)
jax.distributed.initialize(
    f"127.0.0.1:{port}",
    num_processes=2,
    process_id=int(process_id),
    coordinator_bind_address=f"127.0.0.1:{port}",
    initialization_timeout=60,
)
logged = []
log = Tracker.log
def log_and_record(self, step, metrics):
    log(self, step, metrics)
    logged.append({"step": int(step), **{k: float(v) for k, v in metrics.items()}})
Tracker.log = log_and_record
config = cfg.load_config_file(config_file)
cfg.apply_overrides(config, json.loads(overrides))
result = loop.train_and_evaluate(config, workdir)
with open(report, "w") as f:
    json.dump({
        "status": result.status,
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "logged": logged,
        "summary": result.summary,
    }, f, default=float)
"""


def _free_port() -> int:
    """A free TCP port on loopback for the coordinator."""
    try:
        import portpicker  # noqa: PLC0415  (optional test helper)

        return portpicker.pick_unused_port()
    except ImportError:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    """Wait for every process; stop early if one fails, since its peers would block on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if None not in codes or any(code not in (None, 0) for code in codes):
            return
        time.sleep(0.1)


def _start(procs: list[subprocess.Popen], port: int, args: list[list], logs: list[Path]) -> None:
    """Start the processes of one job, appending to `procs` so a failed start can be cleaned up."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
        "JAX_PLATFORMS": "cpu",
        "WANDB_MODE": "disabled",
    }
    for i in range(PROCESSES):
        with open(logs[i], "w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, str(i), str(port), *map(str, args[i])],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )


def _run_two_processes(workdir: Path, overrides: dict) -> list[dict]:
    """Train `overrides` on 2 processes x 4 CPU devices; each process's report, by process id."""
    logs = [workdir.parent / f"{workdir.name}.{i}.log" for i in range(PROCESSES)]
    reports = [workdir.parent / f"{workdir.name}.{i}.json" for i in range(PROCESSES)]
    args = [[SMOKE, workdir, report, json.dumps(overrides)] for report in reports]
    # The free port can be taken by someone else before the coordinator binds it (nothing has
    # been written by then): try again on another port.
    for _ in range(3):
        procs = []
        try:
            _start(procs, _free_port(), args, logs)
            _wait_all(procs, TIMEOUT_S)
        finally:
            for p in procs:  # only our own children, by handle
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if "Failed to add port" not in logs[0].read_text():
            break
    for i, p in enumerate(procs):
        assert p.returncode == 0, (
            f"process {i} exited {p.returncode}:\n{logs[i].read_text()[-3000:]}"
        )
    return [json.loads(report.read_text()) for report in reports]


def _train_losses(rows: list[dict]) -> dict[int, float]:
    """{step: train/loss} of metrics rows."""
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _during_training(logged: list[dict]) -> list[dict]:
    """What a process logged while training: train metrics every step, evals on their cadence.

    The final eval/test row is left out: a process other than 0 logs it only if it finds no such
    row in process 0's metrics.jsonl yet (the loop's rerun check), which is a matter of timing.
    Wall times are each process's own clock, so they are left out too.
    """
    return [
        {k: v for k, v in row.items() if not k.endswith("/wall_time")}
        for row in logged
        if not any(k.startswith("test/") for k in row)
    ]


def _final_metrics(summary: dict) -> dict[str, float]:
    """The final eval/test metrics of a summary: the part every process computes itself.

    The rest (train/*, best/*) is read back from process 0's metrics.jsonl.
    """
    return {
        k: v
        for k, v in summary.items()
        if k.startswith(("eval/", "test/"))
        and not k.endswith("/wall_time")
        and not isinstance(v, list)
    }


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> dict:
    """The shared config overrides, with the digits dataset built once so children don't race."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.dataset_info("digits", data_dir)
    return {**OVERRIDES, "data.data_dir": data_dir}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, overrides) -> Path:
    """The same run in this process on its 8 devices (conftest), under jit."""
    workdir = tmp_path_factory.mktemp("one_process")
    config = cfg.load_config_file(SMOKE)
    cfg.apply_overrides(config, overrides)
    assert loop.train_and_evaluate(config, workdir).status == loop.COMPLETED
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_two_processes_train_like_one(tmp_path, overrides, reference, mode):
    """Both hosts agree bit for bit, and match one host with all 8 devices to float rounding."""
    workdir = tmp_path / "run"
    first, second = _run_two_processes(workdir, {**overrides, "parallel.mode": mode})
    assert (first["processes"], first["devices"], first["local_devices"]) == (2, 8, 4)
    manifest = json.loads((workdir / "manifest.json").read_text())
    assert manifest["parallel"]["processes"] == 2 and manifest["mesh_shape"] == {"data": 8}
    # Every host computed the same thing: nothing diverged between processes, bit for bit.
    assert first["status"] == second["status"] == loop.COMPLETED
    assert _during_training(first["logged"]) == _during_training(second["logged"])
    assert len(_during_training(first["logged"])) == STEPS + 1  # every step, and the eval at 10
    assert _final_metrics(first["summary"]) == _final_metrics(second["summary"])
    confusion = first["summary"]["test/confusion_matrix"]
    assert confusion == second["summary"]["test/confusion_matrix"]
    # ... and it is what one process with all 8 devices computes, to float rounding.
    losses, ref_losses = (
        _train_losses(read_metrics(workdir)),
        _train_losses(read_metrics(reference)),
    )
    assert sorted(losses) == sorted(ref_losses) == list(range(1, STEPS + 1))
    assert losses == _train_losses(first["logged"])
    assert ref_losses[STEPS] < ref_losses[1]  # it learned, so agreement is not vacuous
    np.testing.assert_allclose(list(losses.values()), list(ref_losses.values()), rtol=1e-5)
    ref_summary = json.loads((reference / "summary.json").read_text())
    final, ref_final = _final_metrics(first["summary"]), _final_metrics(ref_summary)
    assert sorted(final) == sorted(ref_final) and "test/accuracy" in final
    np.testing.assert_allclose([final[k] for k in ref_final], list(ref_final.values()), rtol=1e-5)
    assert confusion == ref_summary["test/confusion_matrix"]
