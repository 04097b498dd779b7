"""The features a run may use, as extensions of the one loop (see `research/train/extension.py`).

A new feature is a subclass of `Extension` in its own module plus one entry in `_all`; the loop
itself never changes. The order is the order of every phase: the teacher and the source weights
enter a fresh state before anything else, the family reports write their figures last.
"""

from __future__ import annotations

from typing import Any

from research.reporting.classification import ClassificationReport
from research.reporting.forecasting import ForecastReport
from research.reporting.generative import GenerativeReport
from research.reporting.sequence import SequenceReport
from research.train.continual import ContinualStages
from research.train.distillation import Distillation
from research.train.extension import Extension
from research.train.transfer import Transfer


def _all() -> tuple[Extension, ...]:
    return (
        Distillation(),
        Transfer(),
        ContinualStages(),
        ClassificationReport(),
        GenerativeReport(),
        ForecastReport(),
        SequenceReport(),
    )


def available() -> tuple[Extension, ...]:
    """Every feature, in phase order: what `build_run` asks for optimizer overrides (the run,
    and with it `applies`, does not exist yet)."""
    return _all()


def check(run: Any) -> None:
    """Every feature's check of the built run (also of features it does not use: a key set for
    a feature the run cannot have is an error)."""
    for extension in _all():
        extension.check(run)


def for_run(run: Any) -> tuple[Extension, ...]:
    """The extensions this run uses, in phase order."""
    return tuple(extension for extension in _all() if extension.applies(run))
