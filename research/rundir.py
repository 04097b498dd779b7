"""The workdir layout, in one place: what a run keeps where, and readers of other runs' workdirs.

    <workdir>/config.json      the resolved config (identity of the run)
              manifest.json    code, devices and earlier invocations
              param_rules.txt  the resolved per-parameter table
              optimizer_overrides.json
                               transfer strategies only: the config keys they set for the
                               optimizer (frozen groups, unfreezing, layer decay, EWC)
              vocab.json       token data only: id -> token
              metrics.jsonl    one JSON record per logged step
              summary.json     written last: a run with it is finished
              checkpoints/     Orbax steps
              plots/           figures and per-class tables
              lock             the live writer (host, pid)
              log.txt          a sweep run's output
              port.json        a port of pretrained weights (instead of config.json)

Every module that opens a workdir names its files through `RunDir`; the teacher, transfer, sweep
and report code read other runs through `read_config`, `checkpoints_of` and `status`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from etils import epath

from research import storage
from research.errors import WorkdirError

CONFIG = "config.json"
MANIFEST = "manifest.json"
PARAM_RULES = "param_rules.txt"
OPTIMIZER_OVERRIDES = "optimizer_overrides.json"
VOCABULARY = "vocab.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
PLOTS = "plots"
LOCK = "lock"
LOG = "log.txt"
PORT = "port.json"
# Subdirectories of a run that never hold other runs (a report's own output is `report/`).
RUN_SUBDIRECTORIES = (CHECKPOINTS, PLOTS, "wandb")

# A run's state as seen from its files.
FINISHED, INTERRUPTED, PENDING = "finished", "interrupted", "pending"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The paths of one workdir (local or gs://)."""

    root: epath.Path

    @classmethod
    def at(cls, workdir: str | os.PathLike) -> RunDir:
        return cls(storage.workdir_path(workdir))

    @property
    def config(self) -> epath.Path:
        return self.root / CONFIG

    @property
    def manifest(self) -> epath.Path:
        return self.root / MANIFEST

    @property
    def param_rules(self) -> epath.Path:
        return self.root / PARAM_RULES

    @property
    def optimizer_overrides(self) -> epath.Path:
        return self.root / OPTIMIZER_OVERRIDES

    @property
    def vocabulary(self) -> epath.Path:
        return self.root / VOCABULARY

    @property
    def metrics(self) -> epath.Path:
        return self.root / METRICS

    @property
    def summary(self) -> epath.Path:
        return self.root / SUMMARY

    @property
    def checkpoints(self) -> epath.Path:
        return self.root / CHECKPOINTS

    @property
    def plots(self) -> epath.Path:
        return self.root / PLOTS

    @property
    def lock(self) -> epath.Path:
        return self.root / LOCK

    @property
    def log(self) -> epath.Path:
        return self.root / LOG

    @property
    def port(self) -> epath.Path:
        return self.root / PORT


def status(workdir: str | os.PathLike) -> str:
    """FINISHED if summary.json exists, INTERRUPTED if only checkpoints/ does, else PENDING."""
    run = RunDir.at(workdir)
    if run.summary.is_file():
        return FINISHED
    if run.checkpoints.is_dir():
        return INTERRUPTED
    return PENDING


def read_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """Another run's config.json as a dict; None when the workdir has none (a port, or no run).
    A config.json that is not JSON is a WorkdirError."""
    path = RunDir.at(workdir).config
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise WorkdirError(f"{path} is not valid JSON") from None


def run_of(path: str | os.PathLike) -> RunDir:
    """The run a path names: a workdir, or its checkpoints/ directory."""
    run = RunDir.at(path)
    return RunDir(run.root.parent) if run.root.name == CHECKPOINTS else run


def checkpoints_of(path: str | os.PathLike) -> epath.Path:
    """The checkpoint directory a path names: `<path>/checkpoints` when it is a workdir (or a
    port), else `path` itself (a checkpoint directory given directly)."""
    run = RunDir.at(path)
    return run.checkpoints if run.checkpoints.is_dir() else run.root
