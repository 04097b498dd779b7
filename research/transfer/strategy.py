"""Transfer strategies as config: what a run starting from `init_from` trains, and how.

`transfer.strategy` is a shorthand over the general machinery (per-parameter rules, unfreezing,
layer-wise decay, EWC), so every strategy is an ordinary run of the one loop:

  scratch       ignore init_from: the from-scratch baseline with the same model and data
  linear_probe  train only the head on frozen features (computed once when cache_features)
  finetune      train everything
  partial       train the last `transfer.blocks` blocks and everything above them
  progressive   start with the head, unfreeze one more block from the top every N steps
  llrd          train everything with layer-wise learning-rate decay `transfer.layer_decay`
  l2sp / ewc    train everything, penalised towards the source weights (identity / Fisher)

The head (top-level modules matching `transfer.head`) is re-initialised when
`transfer.replace_head` (the new task has other classes); the rest is loaded. "Blocks" are the
depth levels of research.optim.layer_decay: `stage{s}/block{b}` modules, ordered by index.

Everything here is a pure function of the config (and the model's parameter paths): no weights
are read and nothing of research/train is imported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from research.errors import ConfigError
from research.optim.layer_decay import depths


def is_head(path: str, head: str) -> bool:
    """Whether parameter `path` belongs to a head module (its top-level name matches `head`)."""
    return re.fullmatch(head, path.split("/")[0]) is not None


def uses_source(config: Any) -> bool:
    """Whether the run starts from `init_from` (every strategy but scratch; 'none' if set)."""
    return bool(config.init_from) and config.transfer.strategy != "scratch"


def replaces_head(config: Any) -> bool:
    """Whether the head starts fresh (a strategy is set and `transfer.replace_head`); with
    strategy 'none' init_from loads everything, so shapes must match exactly."""
    return config.transfer.strategy != "none" and config.transfer.replace_head


def caches_features(config: Any) -> bool:
    """Whether this run trains a linear probe on features computed once (no backbone pass)."""
    return is_probe(config) and config.transfer.cache_features


def is_probe(config: Any) -> bool:
    """A linear probe from source weights: the model runs in inference mode while training (no
    dropout, BatchNorm statistics), so its backbone is a fixed feature extractor and the cached
    and uncached probes compute the same thing."""
    return config.transfer.strategy == "linear_probe" and uses_source(config)


def batch_norm_inference(config: Any) -> bool:
    """Whether BatchNorm runs on the source statistics (inference mode) while training, for the
    strategies that start from source weights (`transfer.batch_norm`); strategy 'none' (a plain
    warm start) trains as the config says."""
    t = config.transfer
    return uses_source(config) and t.strategy != "none" and t.batch_norm == "frozen"


def optimizer_overrides(config: Any, paths: Sequence[str]) -> dict[str, Any]:
    """The config keys the strategy sets for building the optimizer, as {dotted key: value}.

    `paths` are the model's `a/b/c` parameter paths. Empty for none, scratch and finetune, and
    for a freezing strategy that freezes nothing. The run's own config stays as the user gave
    it: these values go only to the optimizer (and to the workdir's optimizer_overrides.json).
    """
    t = config.transfer
    if t.strategy == "linear_probe":
        return _freezing([p for p in paths if not is_head(p, t.head)], config)
    if t.strategy == "partial":
        return _freezing(_below_last_blocks(paths, t.head, t.blocks), config)
    if t.strategy == "progressive":
        rules, groups, starts = _progressive(paths, config)
        return {"param_rules": rules, "unfreeze.groups": groups, "unfreeze.at_steps": starts}
    if t.strategy == "llrd":
        return {"optimizer.layer_decay": t.layer_decay}
    if t.strategy in ("l2sp", "ewc"):
        return {"ewc.weight": t.weight, "ewc.mode": t.strategy}
    return {}


def _freezing(frozen: Sequence[str], config: Any) -> dict[str, Any]:
    """param_rules that freeze exactly the parameters `frozen`, then the user's rules for the
    rest ({} when nothing is frozen: the user's rules stand)."""
    modules = sorted({p.rsplit("/", 1)[0] for p in frozen})
    if not modules:
        return {}
    pattern = "(" + "|".join(re.escape(m) for m in modules) + ")/[^/]+"
    return {"param_rules": ((pattern, "frozen", 0.0, False), *config.param_rules)}


def _levels(paths: Sequence[str], head: str) -> list[list[str]]:
    """Non-head parameter paths grouped by depth level, deepest (nearest the head) first."""
    by_depth: dict[int, list[str]] = {}
    for path, depth in depths(paths).items():
        if not is_head(path, head):
            by_depth.setdefault(depth, []).append(path)
    return [by_depth[d] for d in sorted(by_depth, reverse=True)]


def _below_last_blocks(paths: Sequence[str], head: str, blocks: int) -> list[str]:
    """The parameters below the last `blocks` depth levels (what `partial` freezes)."""
    if blocks < 0:
        raise ConfigError(f"transfer.blocks must be >= 0, got {blocks}")
    return [p for level in _levels(paths, head)[blocks:] for p in level]


def _progressive(paths: Sequence[str], config: Any) -> tuple[tuple, tuple, tuple]:
    """(rules, unfreeze groups, start steps): level k below the head starts at k * every."""
    t = config.transfer
    every = t.unfreeze_every_steps
    if not every or every <= 0:
        raise ConfigError(
            "transfer.strategy='progressive' needs transfer.unfreeze_every_steps (or _epochs) > 0"
        )
    rules, groups, starts = [], [], []
    for k, level in enumerate(_levels(paths, t.head)[1:], start=1):
        group = f"level{k}"
        modules = sorted({p.rsplit("/", 1)[0] for p in level})
        pattern = "(" + "|".join(re.escape(m) for m in modules) + ")"
        rules += [
            (pattern + "/(bias|scale)", group, 1.0, False),
            (pattern + "/[^/]+", group, 1.0, True),
        ]
        if k * every < config.total_steps:  # levels that would start after the end stay frozen
            groups.append(group)
            starts.append(k * every)
        else:
            rules[-2:] = [(pattern + "/[^/]+", "frozen", 0.0, False)]
    return (*rules, *config.param_rules), tuple(groups), tuple(starts)
