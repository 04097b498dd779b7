"""Transfer learning: how a run starts from `init_from` (a ported checkpoint or another run).

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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import rundir
from research.checkpoint import load_state
from research.config import from_json
from research.data import ArraySource, eval_batches
from research.errors import ConfigError
from research.models.layers import dense
from research.optim import ewc
from research.optim.layer_decay import depths
from research.optim.rules import param_paths
from research.train.extension import Extension


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


def effective_config(config: Any, params: Any) -> ml_collections.FrozenConfigDict:
    """The config the optimizer is built from: `config` with the strategy's rules applied.

    The run's own config (written to the workdir) stays as the user gave it; the resolved
    per-parameter table (param_rules.txt) shows what the strategy did.
    """
    t = config.transfer
    if t.strategy in ("none", "scratch", "finetune"):
        return config
    c = ml_collections.ConfigDict(config.to_dict())
    paths = param_paths(params)
    if t.strategy == "linear_probe":
        c.param_rules = _freeze_rules([p for p in paths if not is_head(p, t.head)], config)
    elif t.strategy == "partial":
        c.param_rules = _freeze_rules(_below_last_blocks(paths, t.head, t.blocks), config)
    elif t.strategy == "progressive":
        c.param_rules, c.unfreeze.groups, c.unfreeze.at_steps = _progressive(paths, config)
    elif t.strategy == "llrd":
        c.optimizer.layer_decay = t.layer_decay
    elif t.strategy in ("l2sp", "ewc"):
        c.ewc.weight, c.ewc.mode = t.weight, t.strategy
    return ml_collections.FrozenConfigDict(c)


def _freeze_rules(frozen: Sequence[str], config: Any) -> tuple:
    """Rules that freeze exactly the parameters `frozen`, then the user's rules for the rest."""
    modules = sorted({p.rsplit("/", 1)[0] for p in frozen})
    if not modules:
        return tuple(config.param_rules)
    pattern = "(" + "|".join(re.escape(m) for m in modules) + ")/[^/]+"
    return ((pattern, "frozen", 0.0, False), *config.param_rules)


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


def without_head(tree: Any, head: str) -> dict:
    """`tree` (a params or batch_stats dict) without its head modules."""
    return {k: v for k, v in flax.core.unfreeze(tree).items() if not re.fullmatch(head, k)}


def with_source(params: Any, source: Any, head: str) -> dict:
    """`params` with every non-head module replaced by the loaded `source` one."""
    return {**flax.core.unfreeze(params), **without_head(source, head)}


class LinearHead(nn.Module):
    """The linear probe on cached features: a Dense named `head`, like the backbone's head.

    Flax derives a submodule's initial values from its path, so this `head` starts exactly
    where the full model's `head` would (same kernel initialiser, same input width).
    """

    num_classes: int
    kernel_init: str = "lecun"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        del train
        logits = dense(
            self.num_classes,
            name="head",
            kernel_init=self.kernel_init,
            init_scale=0.01,
            dtype=self.dtype,
        )(x.astype(self.dtype))
        return logits.astype(jnp.float32), {"pre_logits": x}


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


def initial_state(run: Any, state: Any, rng: jax.Array) -> Any:
    """The fresh state with the source weights loaded (the head kept fresh when replaced), and
    for l2sp / ewc the penalty's anchors (and Fisher) set from the source."""
    config = run.config
    if not uses_source(config) or caches_features(config):
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
    if replaces_head(run.config):
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
        from research.train.setup import build_run  # setup imports this module

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
    if not uses_source(config) or caches_features(config):
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
    """Source weights (and penalty anchors) in the fresh state; retention in the summary."""

    def applies(self, run: Any) -> bool:
        return uses_source(run.config) and not caches_features(run.config)

    def initial_state(self, run: Any, state: Any, rng: jax.Array) -> Any:
        return initial_state(run, state, rng)

    def summary(self, run: Any, state: Any, rows: Sequence[dict]) -> dict[str, Any]:
        return retention(run, state)
