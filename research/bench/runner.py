"""One benchmark row: build each framework's step for a workload, time them interleaved."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence

from research.bench import workloads
from research.bench.spec import Step
from research.bench.timing import Timings, interleave

FRAMEWORKS = ("project", "torch", "keras")


@dataclasses.dataclass(frozen=True)
class Row:
    """A workload's steps (by framework) and their interleaved timings."""

    workload: workloads.Workload
    steps: dict[str, Step]
    timings: Timings


def measure(
    name: str,
    frameworks: Sequence[str] = FRAMEWORKS,
    *,
    rounds: int,
    steps_per_round: int,
    precision: str = "float32",
    seed: int = 0,
) -> Row:
    """Builds the workload's step in every framework (the project's first: the others train on
    its batch and rebuild its spec), warms each once more, then times them interleaved."""
    workload = workloads.get(name)
    project = workloads.build_project(workload, precision, seed)
    steps = {"project": project.step}
    for framework in frameworks:
        if framework != "project":
            steps[framework] = _builder(framework)(
                project.spec, project.batch, precision=precision, seed=seed
            )
    steps = {f: steps[f] for f in frameworks}
    for step in steps.values():
        step.run()  # past the first call's allocations
    gc.collect()  # no collection pause inside the timed rounds from the builds' garbage
    timings = interleave(
        {f: s.run for f, s in steps.items()}, rounds=rounds, steps_per_round=steps_per_round
    )
    return Row(workload, steps, timings)


def _builder(framework: str):  # noqa: ANN202 (a build function of torch_steps or keras_steps)
    """The other framework's build function, imported only when asked for."""
    if framework == "torch":
        from research.bench import torch_steps  # noqa: PLC0415

        return torch_steps.build
    if framework == "keras":
        from research.bench import keras_steps  # noqa: PLC0415

        return keras_steps.build
    raise ValueError(f"unknown framework '{framework}'; known: {', '.join(FRAMEWORKS)}")
