"""The source weights of a transfer run: `init_from` checked, loaded (without a replaced head)
and, for a cached linear probe, turned into features once."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np

from research import rundir, storage
from research.checkpoint import load_state
from research.data import ArraySource, eval_batches
from research.errors import ConfigError
from research.transfer.strategy import replaces_head


def check_init_from(config: Any) -> None:
    """Raise a ConfigError when `init_from` is missing on disk, or a strategy needs it unset."""
    path, strategy = config.init_from, config.transfer.strategy
    if path and not storage.workdir_path(path).exists():
        raise ConfigError(f"init_from: '{path}' does not exist (a run's workdir or checkpoints/)")
    if not path and strategy not in ("none", "scratch"):
        raise ConfigError(f"transfer.strategy='{strategy}' needs init_from (the source weights)")


def without_head(tree: Any, head: str) -> dict:
    """`tree` (a params or batch_stats dict) without its head modules."""
    return {k: v for k, v in flax.core.unfreeze(tree).items() if not re.fullmatch(head, k)}


def load_source(config: Any, abstract_variables: dict) -> dict:
    """`{"params", "batch_stats"}` from `init_from`, without the head when it is replaced.

    `abstract_variables` are the run's own shapes; the head is skipped (kept by the caller)
    when `replaces_head`, so a 1000-class source fits a 5-class run.
    """
    t = config.transfer
    directory = rundir.checkpoints_of(config.init_from)
    target = dict(abstract_variables)
    if replaces_head(config):
        target = {k: without_head(v, t.head) for k, v in target.items()}
    target = {k: v for k, v in target.items() if v}
    return load_state(directory, target) if target else {}


def cache_features(
    config: Any, model: nn.Module, sources: dict, transform: Callable, abstract: dict
) -> dict[str, ArraySource]:
    """Each split's pre_logits features under the frozen source model, computed once.

    `abstract` holds the model's variable shapes with shardings. The model runs in inference
    mode (BatchNorm statistics, no dropout), as the uncached linear probe does, so training a
    head on these features is the same computation.
    """
    loaded = load_source(config, abstract)
    variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    variables = {k: {**v, **loaded.get(k, {})} for k, v in variables.items()}
    features = jax.jit(lambda v, x: model.apply(v, x, train=False)[1]["pre_logits"])
    # One batch shape for every split (one compilation), no larger than the largest split.
    size = min(256, max(len(source) for source in sources.values()))
    out = {}
    for prefix, source in sources.items():
        feats, labels = [], []
        for batch in eval_batches(source, global_batch_size=size, transform=transform):
            n = int(batch["mask"].sum())
            feats.append(np.asarray(features(variables, batch["image"]))[:n])
            labels.append(batch["label"][:n])
        arrays = {"image": np.concatenate(feats), "label": np.concatenate(labels)}
        out[prefix] = ArraySource(arrays)
    return out
