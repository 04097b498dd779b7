"""The benchmarked workloads and the project's train step for each.

Every workload is a bundled config with the bench's changes: plain Adam at a constant rate (no
warmup, clipping or diagnostics, so that the PyTorch and Keras steps can do exactly the same),
the batch size of the row, and `model.dtype` from the precision. The project's step is the one
`build_run` compiles for a real run (`Run.quiet_step`), fed a batch of the run's own data.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from research import flops
from research.bench.spec import Batch, Spec, Step
from research.config import apply_overrides, load_config_file
from research.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LSTM_LENGTHS = (50, 100, 200, 400)  # the adding problem's bundled lengths


@dataclasses.dataclass(frozen=True)
class Workload:
    """A row of the benchmark: a config file (and its argument), overrides and batch size."""

    name: str
    config: str  # relative to configs/
    kind: str  # the Spec kind
    batch_size: int
    overrides: tuple[tuple[str, Any], ...] = ()
    arg: str | None = None

    def load(self, precision: str) -> ml_collections.ConfigDict:
        """The config the project's step is built from."""
        config = load_config_file(CONFIGS / self.config, self.arg)
        if self.kind == "resnet":  # a fresh model section: the quickstart CNN's keys do not apply
            config.model = ml_collections.ConfigDict({"name": dict(self.overrides)["model.name"]})
        config.model.dtype = precision  # every family has the key; not every config sets it
        apply_overrides(config, {**_BENCH_OVERRIDES, **dict(self.overrides)})
        apply_overrides(config, {"batch_size": self.batch_size})
        return config


_BENCH_OVERRIDES: dict[str, Any] = {
    "optimizer.name": "adam",
    "optimizer.schedule": "constant",
    "optimizer.warmup_steps": 0,
    "optimizer.grad_clip_norm": None,
    "diagnostics": False,
    "tracking.wandb_mode": "disabled",
}


def _resnet(depth: int, size: int, batch_size: int) -> Workload:
    """ResNet-`depth` on the digits resized to size x size, as 3-channel normalised images (the
    torchvision preprocessing broadcasts the gray channel to RGB)."""
    return Workload(
        f"resnet{depth}_{size}",
        "quickstart.py",
        "resnet",
        batch_size,
        (
            ("model.name", f"resnet{depth}"),
            ("data.image_size", size),
            ("data.preprocess", f"torchvision:resnet{depth}"),
        ),
    )


def _lstm(length: int) -> Workload:
    """The adding problem's one-layer 128-unit LSTM at sequence length T."""
    return Workload(
        f"lstm_t{length}", "sequence/adding.py", "lstm", 50, (("data.name", f"adding/t{length}"),)
    )


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("mlp", "mlp_digits.py", "mlp", 64),
        Workload("cnn", "quickstart.py", "cnn", 64),
        *(_lstm(t) for t in LSTM_LENGTHS),
        _resnet(18, 32, 32),
        _resnet(50, 32, 32),
        _resnet(18, 224, 8),
        _resnet(50, 224, 8),
        Workload("vae", "generative/vae_digits.py", "vae", 64),
    )
}


def get(name: str) -> Workload:
    """The workload called `name`; a ConfigError lists the known ones."""
    if name not in WORKLOADS:
        raise ConfigError(f"unknown benchmark workload '{name}'; known: {', '.join(WORKLOADS)}")
    return WORKLOADS[name]


@dataclasses.dataclass
class ProjectStep:
    """The project's compiled step for a workload, the neutral spec and the batch it trains on."""

    spec: Spec
    batch: Batch
    step: Step


def build_project(workload: Workload, precision: str = "float32", seed: int = 0) -> ProjectStep:
    """Builds the run, its first batch of real data and the compiled step: lowering,
    compilation and the first call are timed as `first_step_s`; FLOPs are counted from the
    step's jaxpr (research/flops.py), bytes from XLA's memory analysis."""
    from research.train.setup import build_run  # noqa: PLC0415 (heavy: only when benchmarking)

    config = workload.load(precision)
    config.seed = seed
    run = build_run(config)
    host = _first_batch(run)
    batch = run.par.put_batch(host)
    state = run.par.init_state(run.init_fn, jax.random.PRNGKey(seed))
    step_flops = flops.count(run.quiet_step, state, batch)
    start = time.perf_counter()
    compiled = run.quiet_step.lower(state, batch).compile()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    first_step_s = time.perf_counter() - start
    holder = {"state": state}

    def run_step() -> None:
        holder["state"], out = compiled(holder["state"], batch)
        jax.block_until_ready(out)

    step = Step(
        run=run_step,
        num_params=_count(state.params),
        first_step_s=first_step_s,
        peak_bytes=_peak_bytes(compiled),
        flops=step_flops,
    )
    return ProjectStep(spec=_spec(workload, run), batch=_neutral_batch(run, host), step=step)


def _first_batch(run: Any) -> dict[str, np.ndarray]:
    """The first `batch_size` training examples, transformed as the pipeline does."""
    examples = [run.transform(run.sources["train"][i]) for i in range(run.config.batch_size)]
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def _neutral_batch(run: Any, host: dict[str, np.ndarray]) -> Batch:
    """The project batch as (x, y) for the other frameworks."""
    if "inputs" in host:  # sequence regression
        targets = host["targets"].astype(np.float32)
        return Batch(np.asarray(host["inputs"], np.float32), targets.reshape(len(targets), -1))
    x = np.asarray(host["image"], np.float32)
    return Batch(x, host["label"].astype(np.int32) if "label" in host and _labels(run) else None)


def _labels(run: Any) -> bool:
    """Whether the run's task trains on labels (classification) rather than its input."""
    return run.config.task.name == "classification"


def _spec(workload: Workload, run: Any) -> Spec:
    model = dict(run.config.model)
    options = {k: v for k, v in model.items() if k not in ("name", "dtype")}
    if workload.kind == "resnet":
        options = {"name": model["name"]}
    loss = {"mlp": "cross_entropy", "cnn": "cross_entropy", "resnet": "cross_entropy"}
    sample = run.transform(run.sources["train"][0])
    shape = np.shape(sample["inputs"] if "inputs" in sample else sample["image"])
    outputs = run.task.model_outputs
    return Spec(
        kind=workload.kind,  # type: ignore[arg-type]
        options=options,
        input_shape=tuple(int(n) for n in shape),
        num_outputs=int(outputs) if isinstance(outputs, int) else int(np.prod(outputs)),
        loss=loss.get(workload.kind, "mse" if workload.kind == "lstm" else "vae_bce"),  # type: ignore[arg-type]
        learning_rate=float(run.config.optimizer.learning_rate),
    )


def _count(params: Any) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def _peak_bytes(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries of the compiled step on one device, less what the donated
    state shares between arguments and outputs (XLA's memory analysis)."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    return int(total)
