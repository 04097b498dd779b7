"""The teacher of a distillation run: another run's model, rebuilt from its workdir.

The teacher's architecture comes from `<teacher workdir>/config.json` and its weights from that
run's latest checkpoint (`init_from`-style path). Its variables ride in the train state
(`extras["teacher"]`), so the compiled step takes them as an input, not as baked-in constants.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from research import rundir
from research.checkpoint import load_state
from research.errors import ConfigError
from research.models import get_model
from research.optim.distill import distillation_loss


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen model, where its weights are, and the distillation hyperparameters."""

    model: nn.Module
    checkpoints: Path
    abstract_variables: Any
    temperature: float
    weight: float

    def logits(self, variables: Any, inputs: jax.Array) -> jax.Array:
        """The teacher's logits in inference mode (BatchNorm running statistics, no dropout)."""
        outputs, _ = self.model.apply(variables, inputs, train=False)
        return jax.lax.stop_gradient(outputs)

    def loss(self, student_logits: jax.Array, teacher_logits: jax.Array, batch: dict) -> tuple:
        """(objective, metrics): weight * T^2 KL(teacher || student) + (1 - weight) * CE."""
        targets = batch["targets"] if "targets" in batch else batch["label"]
        return distillation_loss(
            student_logits,
            teacher_logits,
            targets,
            temperature=self.temperature,
            weight=self.weight,
        )

    def load(self, sharding: jax.sharding.Sharding) -> Any:
        """The teacher's variables from its latest checkpoint, placed with `sharding`."""
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            self.abstract_variables,
        )
        return load_state(self.checkpoints, abstract)


def load_teacher(distill: Any, num_outputs: int, sample_inputs: jax.Array) -> Teacher | None:
    """The teacher named by `distill.teacher` (a run's workdir), or None without one."""
    if not distill.teacher:
        return None
    teacher = rundir.RunDir.at(distill.teacher)
    config = rundir.read_config(teacher.root)
    if config is None:
        raise ConfigError(f"distill.teacher: {teacher.root} holds no config.json (a finished run)")
    model = get_model(config["model"], num_classes=num_outputs)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    shapes = jax.eval_shape(lambda: model.init(rngs, sample_inputs, train=False))
    variables = {k: shapes[k] for k in ("params", "batch_stats") if k in shapes}
    return Teacher(
        model=model,
        checkpoints=teacher.checkpoints,
        abstract_variables=variables,
        temperature=distill.temperature,
        weight=distill.weight,
    )
