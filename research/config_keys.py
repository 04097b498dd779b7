"""Every config key shared by all experiments, with its default and a comment on its meaning.

`base_config()` is where config files start; research.config resolves, validates and dumps.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from research.optim import rules

PARALLEL_MODES = ("jit", "pmap")
TRANSFER_STRATEGIES = (
    "none",
    "scratch",
    "linear_probe",
    "finetune",
    "partial",
    "progressive",
    "llrd",
    "l2sp",
    "ewc",
)
# Keys that say how a run executes, not what it computes: a workdir may be resumed with other
# values (e.g. a run preempted on 8 devices continues on 1).
# `divergence` only decides when a broken run is stopped, so it is one of them too.
RUNTIME_KEYS = (
    "parallel",
    "tracking",
    "divergence",
    "data.data_dir",
    "data.in_memory",
    "checkpoint.async_save",
)


def base_config() -> ml_collections.ConfigDict:
    """Every key shared by all experiments, with defaults (locked); config files start here."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128  # global, over all devices and hosts
    c.eval_batch_size = config_dict.placeholder(int)  # None -> batch_size
    c.total_steps = config_dict.placeholder(int)
    c.total_epochs = config_dict.placeholder(float)
    c.log_every_steps = 50
    c.eval_every_steps = config_dict.placeholder(int)  # None -> only at the end
    c.eval_every_epochs = config_dict.placeholder(float)
    c.init_from = config_dict.placeholder(str)  # a workdir or checkpoints dir to warm-start from
    c.diagnostics = True  # per-layer gradient norms, update ratios, dead ReLUs at log steps

    c.model = ml_collections.ConfigDict({"name": "mlp"})
    c.task = ml_collections.ConfigDict({"name": "classification", "label_smoothing": 0.0})
    c.data = _data_defaults()
    c.optimizer = _optimizer_defaults()
    c.regularization = ml_collections.ConfigDict({"l1": 0.0, "l2": 0.0})  # penalties in the loss
    c.param_rules = rules.DEFAULT_RULES  # (regex, group, lr multiplier, decay), first match wins
    c.unfreeze = _unfreeze_defaults()
    # EWC against forgetting in continual runs: after each task, the Fisher of its data (or,
    # with mode l2sp, the identity) anchors the parameters with penalty 0.5 * weight * F d^2.
    c.ewc = ml_collections.ConfigDict(
        {
            "weight": 0.0,  # 0: off
            "mode": "ewc",  # ewc | l2sp
            "gamma": 1.0,  # online EWC: F <- gamma * F_old + F_new
            "fisher": "empirical",  # empirical | sampled (labels from the model)
            "fisher_examples": 500,
        }
    )
    c.distill = ml_collections.ConfigDict(
        {
            "teacher": config_dict.placeholder(str),  # a finished run's workdir
            "temperature": 4.0,
            "weight": 0.5,  # of the T^2-scaled KL term; 1 - weight goes to the hard labels
        }
    )
    c.mixup = ml_collections.ConfigDict(
        {
            "method": "none",  # none | mixup | cutmix
            "alpha": 0.2,  # lambda ~ Beta(alpha, alpha)
            "per_example": True,  # one lambda per example (else one per device shard)
            "cross_shard": False,  # partners from the whole global batch, across devices
        }
    )
    # Stop when checkpoint.best_metric has not improved by more than min_delta for `patience`
    # evals; the best checkpoint becomes the final state (None: never stop early).
    c.early_stopping = ml_collections.ConfigDict(
        {"patience": config_dict.placeholder(int), "min_delta": 0.0}
    )
    # Stop with exit 3 when the training loss is non-finite, or finite but above loss_factor x
    # its value at the first step for `patience` consecutive log steps (0: non-finite only).
    c.divergence = ml_collections.ConfigDict({"loss_factor": 10.0, "patience": 3})
    c.transfer = _transfer_defaults()
    c.evaluation = _evaluation_defaults()
    c.checkpoint = _checkpoint_defaults()
    c.parallel = ml_collections.ConfigDict(
        {
            "mode": "jit",  # jit (NamedSharding, global view) | pmap (per-device, pmean)
            "distributed": False,  # call jax.distributed.initialize() (multi-host)
            "num_devices": config_dict.placeholder(int),  # None -> all; fewer: single process only
            # Fully sharded data parallelism (jit only): each array of the state split over
            # groups of `fsdp` devices (research/sharding.py); 1 = every device holds it whole.
            "fsdp": 1,
            # (regex on the array's path in the state, axis to split or -1 = keep whole),
            # first match wins; arrays no rule matches are split on their largest axis.
            "fsdp_rules": (),
        }
    )
    c.tracking = _tracking_defaults()
    # Locked, so a misspelled key in a config file fails where it is written instead of adding
    # a key nothing reads. `model` and `task` may be replaced whole: their keys are checked
    # against the model's and task's options when they are built.
    c.lock()
    return c


def _data_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "digits",  # a TFDS dataset name
            "data_dir": config_dict.placeholder(
                str
            ),  # None -> $TFDS_DATA_DIR or ~/tensorflow_datasets
            "train_split": "train",
            "eval_split": "validation",
            "test_split": "test",
            "in_memory": True,  # load small splits into RAM once; set False for large datasets
            # k-fold cross-validation: with num_folds = k > 0, fold `fold` of the train split is
            # the eval split and the other k-1 folds are trained on (sweep over data.fold).
            "num_folds": 0,
            "fold": 0,
            # Label subsets for transfer studies: keep only these classes (relabelled 0..k-1 in
            # the given order) and, on the train split, only the first n examples per class in a
            # seeded shuffle (data.subset_seed), so k-shot sets are nested as n grows.
            "classes": config_dict.placeholder(tuple),
            "train_examples_per_class": config_dict.placeholder(int),
            "subset_seed": 0,
            # Anomaly detection: drop these classes from the train split only (labels are kept
            # as they are; eval and test still hold them), see evaluation.anomaly_classes.
            "train_exclude_classes": (),
            # Images: resize every split to image_size x image_size (variable-size datasets such
            # as caltech101 need it); `preprocess` "SOURCE:ARCH" (e.g. "keras:vgg16") applies a
            # ported model's input preprocessing to 0-255 pixels instead of scaling to [0, 1].
            "image_size": config_dict.placeholder(int),
            "preprocess": config_dict.placeholder(str),
            "augment": ml_collections.ConfigDict(
                {
                    "flip": False,  # random horizontal flips
                    "crop_padding": 0,  # pad by this many pixels, random crop back (shifts)
                    # random-resized crop: area fraction drawn from [min_scale, 1] (1.0: off)
                    "min_scale": 1.0,
                }
            ),
            "series": _series_defaults(),
            "text": _text_defaults(),
            # Truncated BPTT: train on consecutive windows of batch_size parallel streams, in
            # order, carrying each stream's recurrent state (without gradient) to its next window.
            "tbptt": False,
        }
    )


def _series_defaults() -> ml_collections.ConfigDict:
    # Forecasting from one series (research/data/sequences.py): the dataset's "value" records in
    # data.train_split, cut into windows; with data.num_folds, time-series cross-validation.
    return ml_collections.ConfigDict(
        {
            "input_steps": 0,  # window length; 0: the dataset is not read as a series
            "horizon": 1,  # steps forecast at once (direct multi-horizon)
            "stride": 1,  # between training windows (eval and test use every origin)
            "targets": (),  # columns of "value" to forecast; () -> all
            "fractions": (0.7, 0.15, 0.15),  # chronological train / eval / test periods
            "scaler": "standard",  # standard | minmax | none, fitted on the training period
            "fill_gaps": True,  # linear interpolation of NaNs, within each period
            "difference": False,  # predict the change from the last observed value
            "log": False,  # model log(values) (positive series; metrics stay in original units)
            "season": 1,  # seasonal-naive period in steps (sunspots 11, co2 52, elnino 12)
            "ar_order": config_dict.placeholder(
                int
            ),  # linear AR baseline lags; None -> input_steps
            "cv": "expanding",  # folds with data.num_folds: expanding | sliding
        }
    )


def _text_defaults() -> ml_collections.ConfigDict:
    # Tokenized text (research/data/text.py); the vocabulary comes from the train split only.
    return ml_collections.ConfigDict(
        {
            "level": config_dict.placeholder(str),  # char | word; None: not a text dataset
            "field": "text",  # the dataset's text feature
            "lowercase": True,
            "min_count": 1,  # tokens seen fewer times in training are out of vocabulary
            "max_vocab": config_dict.placeholder(int),  # ids in all, PAD and OOV included
            "max_length": 256,  # classification: tokens kept per text (right-padded)
            "truncate": "post",  # post: keep the beginning | pre: keep the end
            "lm_length": 0,  # > 0: next-token windows of this length (language modelling)
        }
    )


def _transfer_defaults() -> ml_collections.ConfigDict:
    # How a run starts from `init_from` (a ported checkpoint or another run); see
    # research/transfer/strategy.py. "none" leaves init_from, param_rules and unfreeze as given.
    return ml_collections.ConfigDict(
        {
            # none | scratch | linear_probe | finetune | partial | progressive | llrd | l2sp | ewc
            "strategy": "none",
            "head": "head",  # top-level module(s) re-initialised for the new classes (regex)
            "replace_head": True,
            "batch_norm": "frozen",  # frozen (use and keep the source statistics) | update
            "blocks": 1,  # partial: train the last `blocks` blocks (and everything above them)
            # progressive: one more block (from the top) unfreezes every this many steps
            "unfreeze_every_steps": config_dict.placeholder(int),
            "unfreeze_every_epochs": config_dict.placeholder(float),
            "layer_decay": 0.75,  # llrd
            "weight": 0.01,  # l2sp / ewc penalty weight (0.5 * weight * F * (w - w_source)^2)
            "cache_features": True,  # linear_probe: backbone features computed once
        }
    )


def _evaluation_defaults() -> ml_collections.ConfigDict:
    # Artifacts of the final test pass for image classifiers (research/reporting/classification.py),
    # reconstruction runs (reporting/generative.py) and sequence runs (sequence.py, forecasting.py).
    return ml_collections.ConfigDict(
        {
            "artifacts": True,
            "embedding_examples": 1000,  # PCA / t-SNE of pre_logits features (or latents)
            "gradcam_examples": 8,
            "gradcam_layer": config_dict.placeholder(str),  # None -> the last stage{s} module
            # Reconstruction runs: labels scored as anomalies by reconstruction error / -ELBO
            # (usually the data.train_exclude_classes); () -> no anomaly metrics.
            "anomaly_classes": (),
        }
    )


def _optimizer_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            # sgd | momentum | nesterov | adam | adamw | rmsprop | adagrad | adadelta
            "name": "adam",
            "learning_rate": 1e-3,  # peak learning rate
            "momentum": 0.9,  # momentum, nesterov
            "b1": 0.9,  # adam, adamw
            "b2": 0.999,
            "eps": 1e-8,  # adam, adamw, rmsprop, adagrad, adadelta (Keras uses 1e-7)
            "rms_decay": 0.9,  # rmsprop: decay of the squared-gradient average
            "adadelta_rho": 0.95,
            "initial_accumulator": 0.1,  # adagrad
            "weight_decay": 0.0,  # decoupled (AdamW style), for any optimizer; see param_rules
            # constant | step | exponential | cosine | warmup_cosine | linear | cyclic | plateau
            "schedule": "warmup_cosine",
            "warmup_steps": config_dict.placeholder(int),
            "warmup_epochs": config_dict.placeholder(float),
            "end_lr_factor": 0.0,  # cosine/linear: final lr; cyclic: lowest lr (x learning_rate)
            "decay_rate": 0.1,  # step/exponential: factor per decay_every
            "decay_every_steps": config_dict.placeholder(int),
            "decay_every_epochs": config_dict.placeholder(float),
            "hold_steps": config_dict.placeholder(int),  # step/exponential: constant first
            "hold_epochs": config_dict.placeholder(float),
            "cycle_steps": config_dict.placeholder(int),  # cyclic: half a triangle
            "cycle_epochs": config_dict.placeholder(float),
            "grad_clip_norm": config_dict.placeholder(float),  # None -> no clipping
            "grad_clip_value": config_dict.placeholder(float),
            "accumulate_steps": 1,  # gradient accumulation: one update every k train steps
            "layer_decay": config_dict.placeholder(float),  # layer-wise lr decay, e.g. 0.75
            "ema_decay": config_dict.placeholder(float),  # e.g. 0.999: evaluate averaged params
            # plateau: multiply the lr by plateau_factor after plateau_patience evals without
            # an improvement of checkpoint.best_metric by more than plateau_min_delta
            "plateau_factor": 0.5,
            "plateau_patience": 3,
            "plateau_min_delta": 0.0,
        }
    )


def _unfreeze_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "groups": (),  # param_rules groups, in the order they start training
            "at_steps": config_dict.placeholder(tuple),  # when each group starts training
            "at_epochs": config_dict.placeholder(tuple),
            "batch_norm": "frozen",  # BatchNorm statistics of frozen parts: frozen | update
        }
    )


def _checkpoint_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "every_steps": config_dict.placeholder(int),  # None -> only at the end
            "every_epochs": config_dict.placeholder(float),
            "keep": 3,
            "best_metric": "eval/accuracy",  # "" -> keep only the latest ones
            "best_mode": "max",
            "async_save": True,
        }
    )


def _tracking_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "wandb_mode": "offline",
            "project": "research",
            "entity": config_dict.placeholder(str),
            "group": config_dict.placeholder(str),
            "tags": (),
            "progress": True,
            "plots": True,
        }
    )
