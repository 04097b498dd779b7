"""The parts a train step is made of. Each adds one thing to the textbook step and owns the
`state.extras` entry it keeps, if any; `research/train/step.py` runs their hooks in order.

Hooks (every one optional; the default leaves things as they are):

    init_extras(params)                         a fresh state's extras entries
    prepare(batch, keys, state)                 the batch, rewritten before the model sees it
    model_kwargs(state, batch)                  keyword arguments of the model call
    loss(state, params, batch, outputs, aux)    a term of the objective: (value, metrics)
    transform_updates(state, updates)           the optimizer's updates, before they apply
    after_update(old, new, aux)                 the state after the update (extras, statistics)
    metrics(state, grads, updates, aux, m)      the step's metrics `m`, added to or adjusted

A new step feature is one `StepPart` subclass here and its place in `research/train/setup.py`'s
list; the step itself does not change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from research.optim import Optimizer
from research.optim.diagnostics import dead_units, gradient_diagnostics
from research.optim.layer_decay import keep_frozen_statistics
from research.tasks import Task
from research.train.state import TrainState
from research.transfer.teacher import Teacher

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# Sub-streams of a step's (per-device) key. Dropout keeps the key itself, so adding streams
# leaves every earlier run's dropout masks bit-identical.
SAMPLE_STREAM, PREPARE_STREAM = 1, 2


@dataclasses.dataclass(frozen=True)
class StepKeys:
    """A train step's random keys: `step` is `fold_in(state.rng, step)`, the same on every
    device; `device` is it folded with the device index under pmap (else the same key)."""

    step: jax.Array
    device: jax.Array

    @property
    def dropout(self) -> jax.Array:
        """The model's "dropout" stream."""
        return self.device

    @property
    def sample(self) -> jax.Array:
        """The model's "sample" stream (e.g. a VAE's reparameterisation noise)."""
        return jax.random.fold_in(self.device, SAMPLE_STREAM)

    @property
    def prepare(self) -> jax.Array:
        """What `task.prepare` draws from (e.g. input corruption)."""
        return jax.random.fold_in(self.device, PREPARE_STREAM)


class StepPart:
    """One feature of the train step; subclasses override the hooks they need."""

    def init_extras(self, params: Any) -> dict[str, Any]:
        """This part's entries of a fresh state's `extras` (shapes matter: checkpoints)."""
        return {}

    def prepare(self, batch: Batch, keys: StepKeys, state: TrainState) -> Batch:
        """The batch the model sees."""
        return batch

    def model_kwargs(self, state: TrainState, batch: Batch) -> dict[str, Any]:
        """Keyword arguments of the model call besides its input."""
        return {}

    def loss(
        self, state: TrainState, params: Any, batch: Batch, outputs: Any, aux: dict
    ) -> tuple[jax.Array, Metrics] | None:
        """(term of the objective, its metrics), or None when this part adds no term."""
        return None

    def transform_updates(self, state: TrainState, updates: Any) -> Any:
        """The updates that will be applied to the parameters."""
        return updates

    def after_update(self, old: TrainState, new: TrainState, aux: dict) -> TrainState:
        """The next state (`old` is the state the step started from)."""
        return new

    def metrics(
        self, state: TrainState, grads: Any, updates: Any, aux: dict, metrics: Metrics
    ) -> Metrics:
        """The step's metrics (without the `train/` prefix)."""
        return metrics


@dataclasses.dataclass(frozen=True)
class TaskLoss(StepPart):
    """The task: prepares the batch, names the model's extra arguments, and is the objective."""

    task: Task

    def prepare(self, batch: Batch, keys: StepKeys, state: TrainState) -> Batch:
        return self.task.prepare(batch, state.step, keys.prepare)

    def model_kwargs(self, state: TrainState, batch: Batch) -> dict[str, Any]:
        return self.task.model_kwargs(batch)

    def loss(self, state, params, batch, outputs, aux):
        return self.task.loss(outputs, aux, batch)


@dataclasses.dataclass(frozen=True)
class DistillationLoss(TaskLoss):
    """The task with a teacher (kept in `extras["teacher"]`): the objective is the distillation
    loss; the task's metrics are still reported, with `distill_kl` and `ce`, its two parts."""

    teacher: Teacher

    def init_extras(self, params: Any) -> dict[str, Any]:
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.teacher.abstract_variables)
        return {"teacher": zeros}  # filled from the teacher's run (research/train/distillation.py)

    def loss(self, state, params, batch, outputs, aux):
        _, metrics = self.task.loss(outputs, aux, batch)
        teacher_logits = self.teacher.logits(state.extras["teacher"], self.task.inputs(batch))
        loss, parts = self.teacher.loss(outputs, teacher_logits, batch)
        return loss, {**metrics, **parts}


@dataclasses.dataclass(frozen=True)
class Penalty(StepPart):
    """The optimizer's L1/L2 penalty, added to the objective and reported as `penalty`."""

    regularizer: Callable[[Any], jax.Array]

    def loss(self, state, params, batch, outputs, aux):
        penalty = self.regularizer(params)
        return penalty, {"penalty": penalty}


@dataclasses.dataclass(frozen=True)
class BatchMix(StepPart):
    """Mixup/CutMix: the batch rewritten from the step's undivided key (jit and pmap alike)."""

    mixer: Callable[[jax.Array, Batch], Batch]

    def prepare(self, batch: Batch, keys: StepKeys, state: TrainState) -> Batch:
        return self.mixer(keys.step, batch)


@dataclasses.dataclass(frozen=True)
class TruncatedBPTT(StepPart):
    """Each stream continues from its last state (`extras["carry"]`), with no gradient path
    back into the previous batch; streams marked `reset` start over from zero."""

    zero_carry: Any  # the recurrent model's zero state for the (global) batch

    def init_extras(self, params: Any) -> dict[str, Any]:
        return {"carry": jax.tree.map(jnp.zeros_like, self.zero_carry)}

    def model_kwargs(self, state: TrainState, batch: Batch) -> dict[str, Any]:
        return {"initial_carry": _reset_streams(state.extras["carry"], batch.get("reset"))}

    def after_update(self, old: TrainState, new: TrainState, aux: dict) -> TrainState:
        # The carry is a constant to the next step's differentiation.
        return new.replace(extras={**new.extras, "carry": jax.lax.stop_gradient(aux["carry"])})


@dataclasses.dataclass(frozen=True)
class LearningRateScale(StepPart):
    """Reduce-on-plateau: `extras["lr_scale"]` (set by the loop's monitor) multiplies every
    update and the reported learning rate."""

    def init_extras(self, params: Any) -> dict[str, Any]:
        return {"lr_scale": jnp.ones((), jnp.float32)}

    def transform_updates(self, state: TrainState, updates: Any) -> Any:
        return jax.tree.map(lambda u: u * state.extras["lr_scale"], updates)

    def metrics(self, state, grads, updates, aux, metrics):
        return {**metrics, "learning_rate": metrics["learning_rate"] * state.extras["lr_scale"]}


@dataclasses.dataclass(frozen=True)
class MovingAverage(StepPart):
    """An exponential moving average of the parameters in `extras["ema"]` (what evaluation
    uses when it is kept)."""

    decay: float

    def init_extras(self, params: Any) -> dict[str, Any]:
        return {"ema": jax.tree.map(jnp.copy, params)}

    def after_update(self, old: TrainState, new: TrainState, aux: dict) -> TrainState:
        d = self.decay
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, new.extras["ema"], new.params)
        return new.replace(extras={**new.extras, "ema": ema})


@dataclasses.dataclass(frozen=True)
class FrozenStatistics(StepPart):
    """BatchNorm statistics of modules whose parameters do not train at this step keep their
    values (`unfreeze.batch_norm='frozen'`)."""

    optimizer: Optimizer

    def after_update(self, old: TrainState, new: TrainState, aux: dict) -> TrainState:
        if not old.batch_stats:
            return new
        trainable = self.optimizer.trainable(self.optimizer.update_step(old.step))
        stats = keep_frozen_statistics(old.batch_stats, new.batch_stats, trainable)
        return new.replace(batch_stats=stats)


@dataclasses.dataclass(frozen=True)
class Diagnostics(StepPart):
    """Per-module gradient norms, per-group update ratios and dead-ReLU fractions
    (research.optim.diagnostics)."""

    table: list[dict[str, Any]]
    axis_name: str | None = None

    def metrics(self, state, grads, updates, aux, metrics):
        return {
            **metrics,
            **gradient_diagnostics(grads, updates, state.params, self.table),
            **dead_units(aux, self.axis_name),
        }


def default_parts(task: Task, optimizer: Optimizer) -> tuple[StepPart, ...]:
    """The plain step: the task's loss, the optimizer's penalty (if any), frozen parts'
    BatchNorm statistics kept."""
    penalty = () if optimizer.regularizer is None else (Penalty(optimizer.regularizer),)
    return (TaskLoss(task), *penalty, FrozenStatistics(optimizer))


def _reset_streams(carry: Any, reset: jax.Array | None) -> Any:
    """Zero the carried state of the streams that start over in this batch (`reset` == 1)."""
    if reset is None:
        return carry
    keep = 1.0 - reset.astype(jnp.float32)
    return jax.tree.map(lambda c: c * keep.reshape((-1,) + (1,) * (c.ndim - 1)), carry)
