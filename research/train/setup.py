"""Build everything a run needs from its config, before anything is written to the workdir.

A user mistake (unknown model, missing dataset, batch size that does not divide the devices)
surfaces here as a UserError, so a failed start leaves the workdir untouched.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from research import config as cfg
from research import data
from research.data import sequences
from research.data.prepared import PreparedData, stored_vocab_size
from research.data.subsets import SubsetSource, labels_of
from research.errors import ConfigError
from research.models import RecurrentNet, get_model
from research.models.linear_head import LinearHead
from research.optim import Optimizer, build_optimizer
from research.optim.mixup import make_batch_mixer
from research.parallel import Parallel
from research.tasks import ClassificationTask, Task, get_task
from research.train.extension import Extension
from research.train.state import make_init_fn
from research.train.step import make_eval_step, make_train_step
from research.train.step_parts import (
    BatchMix,
    Diagnostics,
    DistillationLoss,
    FrozenStatistics,
    LearningRateScale,
    MovingAverage,
    Penalty,
    StepPart,
    TaskLoss,
    TruncatedBPTT,
)
from research.transfer.source import cache_features, check_init_from
from research.transfer.strategy import batch_norm_inference, caches_features, is_probe
from research.transfer.teacher import Teacher, load_teacher

# The splits a run reads, by the metric prefix they are reported under.
SPLIT_KEYS = {"train": "train_split", "eval": "eval_split", "test": "test_split"}


@dataclasses.dataclass(frozen=True)
class Run:
    """The resolved config and the objects built from it."""

    config: ml_collections.FrozenConfigDict
    par: Parallel
    optimizer: Optimizer
    teacher: Teacher | None
    model: nn.Module
    task: Task
    sources: dict[str, Any]
    transform: Callable[[dict], dict]
    augment: Callable[[dict, np.random.Generator], dict] | None
    init_fn: Callable[[jax.Array], Any]
    train_step: Callable  # the step of log steps (with diagnostics when they are on)
    quiet_step: Callable  # the other steps' (the same state update, no diagnostics)
    eval_step: Callable
    # The data as prepared (its vocabulary, a series' periods and training period); `sources`
    # are its sources or derived from them (cached features of a linear probe).
    prepared: PreparedData
    # Config keys the extensions set for the optimizer alone (optimizer_overrides.json).
    optimizer_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        """Training steps of the whole run."""
        return self.config.total_steps


def build_run(config: ml_collections.ConfigDict, extensions: Sequence[Extension] = ()) -> Run:
    """Resolve the config against the dataset and build model, task, optimizer and steps;
    the optimizer with the `extensions`' optimizer overrides (a transfer strategy's rules)."""
    info = data.dataset_info(config.data.name, config.data.data_dir)
    prepared = _open_sources(config, info)
    sources, num_classes = prepared.sources, prepared.num_classes
    config = cfg.resolve(config, num_train_examples=len(sources["train"]))
    p = config.parallel
    par = Parallel.create(p.mode, p.num_devices, p.fsdp, p.fsdp_rules)
    cfg.check_batch_divides(config, par.num_devices)
    check_init_from(config)
    first = sources["train"][0]
    task = get_task(
        config.task,
        num_classes=num_classes,
        total_steps=config.total_steps,
        input_size=int(np.prod(np.shape(first["image"]))) if "image" in first else 0,
        vocab_size=prepared.vocab_size,
        output_shape=prepared.output_shape,
        log_levels=prepared.log_levels,
    )
    transform = _image_transform(config.data, task.transform())
    augment = data.make_augment(**config.data.augment)
    sample = transform(sources["train"][0])
    inputs = task.inputs({k: v[None] for k, v in sample.items()})
    model = get_model(
        config.model,
        num_classes=task.model_outputs,
        bn_axis_name=par.axis_name,
        input_shape=inputs.shape[1:],
        vocab_size=prepared.vocab_size,
    )
    task.check_model(model)  # e.g. a VAE objective needs a model with a Gaussian encoder
    if caches_features(config):
        if augment is not None:
            raise ConfigError(
                "transfer.cache_features computes features once, without data.augment; "
                "turn augmentation off or set transfer.cache_features=False"
            )
        abstract = _abstract_variables(model, inputs, par)
        sources = cache_features(config, model, sources, transform, abstract)
        model = LinearHead.like(model, task.model_outputs)
        transform = task.transform()
        inputs = sources["train"].take([0])["image"]
    abstract_params = _abstract_params(model, inputs)
    optimizer_config, overrides = _optimizer_config(config, abstract_params, extensions)
    optimizer = build_optimizer(optimizer_config, abstract_params)
    teacher = load_teacher(config.distill, task.model_outputs, inputs)
    parts = _step_parts(config, task, optimizer, par, teacher, _zero_carry(model, config))
    init_fn = make_init_fn(model, optimizer.tx, inputs, parts)
    step = functools.partial(
        make_train_step,
        model,
        task,
        optimizer,
        axis_name=par.axis_name,
        batch_norm_inference=batch_norm_inference(config),
        inference_mode=is_probe(config),
    )
    sharding = _state_sharding(par, init_fn)
    train_step = par.compile_train_step(step(parts), sharding)
    # Diagnostics reach the host only at log steps: the other steps skip computing them.
    quiet_parts = tuple(part for part in parts if not isinstance(part, Diagnostics))
    quiet_step = train_step
    if quiet_parts != parts:
        quiet_step = par.compile_train_step(step(quiet_parts), sharding)
    eval_step = make_eval_step(model, task, axis_name=par.axis_name)
    return Run(
        config=config,
        par=par,
        optimizer=optimizer,
        teacher=teacher,
        model=model,
        task=task,
        sources=sources,
        transform=transform,
        augment=augment,
        init_fn=init_fn,
        train_step=train_step,
        quiet_step=quiet_step,
        eval_step=par.compile_eval_step(eval_step),
        prepared=prepared,
        optimizer_overrides=overrides,
    )


def split_names(d: Any, sizes: dict[str, int]) -> dict[str, str]:
    """The TFDS split strings read as train/eval/test; with k folds, fold `fold` of the train
    split (contiguous, by index) is evaluated on and the other folds are trained on."""
    names = {prefix: d[key] for prefix, key in SPLIT_KEYS.items()}
    k, fold, train = d.num_folds, d.fold, d.train_split
    if not k:
        return names
    if not 0 <= fold < k or k < 2:
        raise ConfigError(f"data.fold={fold} must be in [0, data.num_folds={k}) with k >= 2")
    if train not in sizes:
        raise ConfigError(
            f"data.num_folds needs data.train_split to name a whole split, got '{train}'"
        )
    n = sizes[train]
    lo, hi = round(fold * n / k), round((fold + 1) * n / k)
    rest = [f"{train}[:{lo}]" if lo else "", f"{train}[{hi}:]" if hi < n else ""]
    return {**names, "train": "+".join(r for r in rest if r), "eval": f"{train}[{lo}:{hi}]"}


def _step_parts(
    config: Any,
    task: Task,
    optimizer: Optimizer,
    par: Parallel,
    teacher: Teacher | None,
    zero_carry: Any,
) -> tuple[StepPart, ...]:
    """The train step's parts the config asks for, in the order their hooks run."""
    c = config
    parts: list[StepPart] = [TaskLoss(task) if teacher is None else DistillationLoss(task, teacher)]
    if optimizer.regularizer is not None:
        parts.append(Penalty(optimizer.regularizer))
    mixer = _batch_mixer(config, task, par)
    if mixer is not None:
        parts.append(BatchMix(mixer))
    if zero_carry is not None:
        parts.append(TruncatedBPTT(zero_carry))
    if c.optimizer.schedule == "plateau":
        parts.append(LearningRateScale())
    if c.optimizer.ema_decay is not None:
        parts.append(MovingAverage(c.optimizer.ema_decay))
    if c.unfreeze.batch_norm == "frozen":
        parts.append(FrozenStatistics(optimizer))
    if c.diagnostics:
        parts.append(Diagnostics(optimizer.table, par.axis_name))
    return tuple(parts)


def _batch_mixer(config: Any, task: Task, par: Parallel) -> Callable | None:
    """Mixup/CutMix from `config.mixup`, within device shards unless `cross_shard`."""
    m = config.mixup
    if m.method == "none":
        return None
    if not isinstance(task, ClassificationTask) or task.model_outputs < 2:
        raise ConfigError("mixup.method needs task.name='classification' (softmax over classes)")
    return make_batch_mixer(
        m.method,
        alpha=m.alpha,
        per_example=m.per_example,
        num_classes=task.num_classes,
        label_smoothing=task.label_smoothing,
        num_shards=1 if m.cross_shard else par.num_devices,
        axis_name=par.axis_name,
    )


def _abstract_variables(model: nn.Module, inputs: jax.Array, par: Parallel) -> dict:
    """Shapes of the model's params and batch_stats, replicated over the mesh (restore targets)."""
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    shapes = jax.eval_shape(lambda: model.init(rngs, inputs, train=False))
    return {
        k: jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=par.replicated), v
        )
        for k, v in shapes.items()
        if k in ("params", "batch_stats")
    }


def _optimizer_config(
    config: ml_collections.FrozenConfigDict, params: Any, extensions: Sequence[Extension]
) -> tuple[ml_collections.FrozenConfigDict, dict[str, Any]]:
    """(the config the optimizer is built from, the keys the extensions set in it): each
    extension in turn sees the config as the ones before it left it."""
    overrides: dict[str, Any] = {}
    for extension in extensions:
        changed = extension.optimizer_overrides(config, params)
        if not changed:
            continue
        c = ml_collections.ConfigDict(config.to_dict())
        for key, value in changed.items():
            *sections, name = key.split(".")
            node = c
            for section in sections:
                node = node[section]
            node[name] = value
        config = ml_collections.FrozenConfigDict(c)
        overrides.update(changed)
    return config, overrides


def _state_sharding(par: Parallel, init_fn: Callable[[jax.Array], Any]) -> Any:
    """Where each array of the train state lives (replicated, or split over `fsdp`)."""
    return par.state_sharding(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))


def _abstract_params(model: nn.Module, inputs: jax.Array) -> Any:
    """The parameter tree's shapes, without allocating it (rules and masks need only paths)."""
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    return jax.eval_shape(lambda: model.init(rngs, inputs, train=False))["params"]


def _zero_carry(model: nn.Module, config: Any) -> Any:
    """Truncated BPTT's starting state for the global batch (None without data.tbptt)."""
    if not config.data.tbptt:
        return None
    if not isinstance(model, RecurrentNet):
        raise ConfigError("data.tbptt needs a recurrent model (model.name rnn | lstm | gru)")
    return model.zero_carry(config.batch_size)


def _open_sources(config: Any, info: data.DatasetInfo) -> PreparedData:
    """The run's data: series windows and tokenized text are prepared by research.data.sequences;
    other datasets are read as they are (token ids stored as such give their vocabulary size)."""
    d = config.data
    if sequences.needs_preparation(d):
        return sequences.prepare(d, info, split_names(d, info.splits), config.batch_size)
    sources, num_classes = _open_record_sources(d, info)
    return PreparedData(sources, num_classes, vocab_size=stored_vocab_size(sources))


def _open_record_sources(d: Any, info: data.DatasetInfo) -> tuple[dict[str, Any], int | None]:
    """The train/eval/test sources, restricted to `data.classes` (and k per class for train)."""
    sources = {
        prefix: data.open_source(info.name, split, d.data_dir, in_memory=d.in_memory)
        for prefix, split in split_names(d, info.splits).items()
    }
    if d.train_exclude_classes:
        sources["train"] = _exclude_classes(sources["train"], d)
    if d.classes is None and d.train_examples_per_class is None:
        return sources, info.num_classes
    for prefix, split in split_names(d, info.splits).items():
        per_class = d.train_examples_per_class if prefix == "train" else None
        sources[prefix] = data.select(
            sources[prefix], classes=d.classes, per_class=per_class, seed=d.subset_seed, split=split
        )
    return sources, len(d.classes) if d.classes is not None else info.num_classes


def _exclude_classes(source: Any, d: Any) -> Any:
    """The train source without the records of `data.train_exclude_classes` (labels unchanged:
    an anomaly-detection run trains on the normal classes and is tested on all of them)."""
    if d.classes is not None:
        raise ConfigError(
            "data.train_exclude_classes and data.classes cannot be combined (the latter relabels)"
        )
    labels = labels_of(source)
    excluded = [int(c) for c in d.train_exclude_classes]
    missing = sorted(set(excluded) - set(labels.tolist()))
    if missing:
        raise ConfigError(
            f"data.train_exclude_classes: class {missing[0]} is not in the train split"
        )
    keep = np.flatnonzero(~np.isin(labels, excluded))
    if keep.size == 0:
        raise ConfigError("data.train_exclude_classes leaves no train examples")
    identity = np.arange(int(labels.max()) + 1)
    if isinstance(source, data.ArraySource):
        return data.ArraySource({k: np.asarray(v)[keep] for k, v in source.arrays.items()})
    return SubsetSource(source, keep, identity)


def _image_transform(d: Any, base: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """The task's transform, then `data.image_size` resizing and `data.preprocess`."""
    preprocess = None
    if d.preprocess:
        from research import port  # only runs that use a ported model's preprocessing

        source, _, arch = d.preprocess.partition(":")
        preprocess = port.preprocess(source, arch)
    return data.make_image_transform(base, image_size=d.image_size, preprocess=preprocess)
