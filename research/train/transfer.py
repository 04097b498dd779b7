"""The Transfer extension: a run that starts from `init_from` (a ported checkpoint or another run).

What each `transfer.strategy` trains is decided below the loop (research/transfer/strategy.py)
and reaches the optimizer through the `optimizer_overrides` phase; here the fresh state gets the
source weights (and, for l2sp / ewc, the penalty's anchors and Fisher), and the summary the
source task's accuracy before and after the transfer, read through the run that made
`init_from` (`SourceRun`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import rundir
from research.checkpoint import load_state
from research.config import from_json
from research.data import eval_batches
from research.errors import ConfigError
from research.optim import ewc
from research.optim.rules import param_paths
from research.train.extension import Extension
from research.train.setup import build_run
from research.transfer import strategy
from research.transfer.source import load_source, without_head


def initial_state(run: Any, state: Any, rng: jax.Array) -> Any:
    """The fresh state with the source weights loaded (the head kept fresh when replaced), and
    for l2sp / ewc the penalty's anchors (and Fisher) set from the source."""
    config = run.config
    if not strategy.uses_source(config) or strategy.caches_features(config):
        return state
    abstract = run.par.abstract_state(run.init_fn, rng)
    loaded = load_source(config, {"params": abstract.params, "batch_stats": abstract.batch_stats})
    params = {**flax.core.unfreeze(state.params), **loaded.get("params", {})}
    batch_stats = {**flax.core.unfreeze(state.batch_stats), **loaded.get("batch_stats", {})}
    extras = {**state.extras, "ema": params} if "ema" in state.extras else state.extras
    state = state.replace(params=params, batch_stats=batch_stats, extras=extras)
    if config.transfer.strategy in ("l2sp", "ewc"):
        state = _anchor(run, state)
    return state


def _anchor(run: Any, state: Any) -> Any:
    """Anchors = the loaded weights; Fisher = 1 (l2sp) or the source task's Fisher (ewc); the
    replaced head is not anchored (its Fisher is 0)."""
    t = run.config.transfer
    host = run.par.from_device(state)
    params = flax.core.unfreeze(host.params)
    if t.strategy == "l2sp":
        fisher = jax.tree.map(np.ones_like, params)
    else:
        fisher = source_fisher(run.config, params)
    if strategy.replaces_head(run.config):
        fisher = {
            k: jax.tree.map(np.zeros_like, v) if re.fullmatch(t.head, k) else v
            for k, v in fisher.items()
        }
    anchors = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
    new = ewc.EWCState(anchors, jax.tree.map(jnp.asarray, fisher), jnp.ones((), jnp.int32))
    opt_state = jax.device_put(ewc.with_ewc(host.opt_state, new), run.par.replicated)
    return run.par.to_device(host.replace(opt_state=opt_state))


class SourceRun:
    """The run that produced `init_from`: its model, head, statistics and data (for EWC's Fisher
    and for measuring how much of the source task a transferred backbone keeps)."""

    def __init__(self, config: Any):
        source = rundir.run_of(config.init_from)
        if not source.config.is_file():
            raise ConfigError(
                f"transfer.strategy='{config.transfer.strategy}' needs init_from to be a "
                f"training run's workdir (its data and head), but {source.root} has no "
                "config.json; use l2sp for ported weights"
            )
        source_config = from_json(source.config.read_text())
        source_config.parallel = config.parallel.to_dict()
        source_config.tracking.wandb_mode = "disabled"
        # Only the source's model, data and head are used, never its optimizer: no extensions.
        self.run = build_run(source_config)
        abstract = self.run.par.abstract_state(self.run.init_fn, jax.random.PRNGKey(0))
        self.variables = load_state(
            source.checkpoints,
            {"params": abstract.params, "batch_stats": abstract.batch_stats},
        )

    def fisher(self, params: dict, examples: int, mode: str) -> dict:
        """Diagonal Fisher of the source task at the source weights, on its training data."""
        source = self.run.sources["train"]
        records = [self.run.transform(source[i]) for i in range(min(examples, len(source)))]
        images = np.stack([r["image"] for r in records])
        labels = np.stack([r["label"] for r in records])
        batches = [(images[i : i + 100], labels[i : i + 100]) for i in range(0, len(images), 100)]
        v = jax.device_get(self.variables)
        logits_fn = ewc.classifier_logits_fn(self.run.model, v["batch_stats"] or None)
        rng = jax.random.PRNGKey(self.run.config.seed)
        fisher = ewc.fisher_diagonal(logits_fn, v["params"], batches, rng=rng, mode=mode)
        return {**jax.tree.map(np.zeros_like, params), **without_head(fisher, "(?!)")}

    def accuracy(self, params: dict | None = None, batch_stats: dict | None = None) -> float:
        """Source test accuracy with `params`' backbone (default: the source's own) and the
        source's head."""
        v = jax.device_get(self.variables)
        head = self.run.config.transfer.head
        p = v["params"] if params is None else {**params, **_head_of(v["params"], head)}
        stats = v["batch_stats"] if batch_stats is None else batch_stats
        variables = {"params": p, **({"batch_stats": stats} if stats else {})}
        apply = jax.jit(lambda x: self.run.model.apply(variables, x, train=False)[0])
        correct = total = 0.0
        for batch in eval_batches(
            self.run.sources["test"], global_batch_size=256, transform=self.run.transform
        ):
            predicted = np.argmax(np.asarray(apply(batch["image"])), -1)
            correct += float(np.sum((predicted == batch["label"]) * batch["mask"]))
            total += float(batch["mask"].sum())
        return correct / total


def _head_of(params: dict, head: str) -> dict:
    return {k: v for k, v in params.items() if re.fullmatch(head, k)}


def source_fisher(config: Any, params: dict) -> dict:
    """The EWC Fisher of the source run's task, shaped like `params` (0 where it has none)."""
    return SourceRun(config).fisher(params, config.ewc.fisher_examples, config.ewc.fisher)


def retention(run: Any, state: Any) -> dict[str, float]:
    """Source-task test accuracy before and after transfer (the transferred backbone under the
    source head), for runs whose init_from is a training run with the same backbone."""
    config = run.config
    if not strategy.uses_source(config) or strategy.caches_features(config):
        return {}
    try:
        source = SourceRun(config)
    except ConfigError:
        return {}  # a ported checkpoint: no source task to measure
    host = jax.device_get(run.par.to_host(state))
    params = without_head(host.params, config.transfer.head)
    return {
        "source/test_accuracy_before": source.accuracy(),
        "source/test_accuracy_after": source.accuracy(params, host.batch_stats or None),
    }


class Transfer(Extension):
    """The strategy's rules for the optimizer; source weights (and penalty anchors) in the fresh
    state; retention in the summary."""

    def applies(self, run: Any) -> bool:
        return strategy.uses_source(run.config) and not strategy.caches_features(run.config)

    def optimizer_overrides(
        self, config: ml_collections.FrozenConfigDict, params: Any
    ) -> dict[str, Any]:
        return strategy.optimizer_overrides(config, param_paths(params))

    def initial_state(self, run: Any, state: Any, rng: jax.Array) -> Any:
        return initial_state(run, state, rng)

    def summary(self, run: Any, state: Any, rows: Sequence[dict]) -> dict[str, Any]:
        return retention(run, state)
