"""Distillation as a feature of the loop: a fresh state carries the teacher's variables.

The teacher itself (model, weights, loss) is research/transfer/teacher.py; the train step's
`DistillationLoss` (research/train/step_parts.py) makes it the objective.
"""

from __future__ import annotations

from typing import Any

import jax

from research.train.extension import Extension


class Distillation(Extension):
    """A fresh state carries the teacher's variables in its extras (so checkpoints do too)."""

    def applies(self, run: Any) -> bool:
        return run.teacher is not None

    def initial_state(self, run: Any, state: Any, rng: jax.Array) -> Any:
        teacher = run.teacher.load(run.par.replicated)
        return state.replace(extras={**state.extras, "teacher": teacher})
