"""Which of the project's model options the benchmark's PyTorch and Keras builders implement.

`model_options(spec)` resolves a spec's options against the project's class and registry
defaults and refuses any option the builders would silently ignore; `check_spec` refuses an
unknown kind, precision or loss. Framework-free: research/bench/torch_steps.py and
keras_steps.py both call them before importing their framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from research.bench.spec import Spec
from research.models import MODELS

PRECISIONS = ("float32", "bfloat16")

# Options that do not change the network's function: plumbing, precision (--precision) and
# how the project computes scans and convolutions (unroll, conv).
_IGNORED = frozenset(
    {"name", "dtype", "bn_axis_name", "num_classes", "num_outputs", "input_shape", "unroll", "conv"}
)
_INIT = frozenset({"kernel_init", "init_scale"})
# Per kind: the project's class, and the options the builders implement (any other option must
# keep the project's default). A bernoulli VAE decoder has no scale, so decoder_scale and
# learn_scale change nothing there.
KINDS: Mapping[str, tuple[str, frozenset[str]]] = {
    "mlp": ("MLP", _INIT | {"hidden_sizes", "dropout_rate", "activation"}),
    "cnn": (
        "CNN",
        _INIT
        | {
            "stage_features",
            "blocks_per_stage",
            "dense_features",
            "dropout_rate",
            "head_dropout_rate",
            "batch_norm",
        },
    ),
    "lstm": ("RecurrentNet", _INIT | {"hidden_sizes", "dropout_rate", "forget_bias"}),
    "resnet": (
        "ResNet",
        frozenset(
            {"block", "stage_blocks", "widths", "stem_features", "bn_epsilon", "conv_bias"}
            | {"stride_in_1x1"}  # the bottleneck's stride on its first 1x1 conv (v1)
        ),
    ),
    "vae": (
        "VAE",
        _INIT | {"hidden_sizes", "latent_size", "activation", "decoder_scale", "learn_scale"},
    ),
}


def check_spec(spec: Spec, precision: str) -> None:
    """ValueError on an unknown kind, a precision other than float32/bfloat16, or a loss the
    kind cannot train on."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
    if spec.kind not in KINDS:
        raise ValueError(f"unknown kind '{spec.kind}'; known: {', '.join(KINDS)}")
    if (spec.loss == "vae_bce") != (spec.kind == "vae"):
        raise ValueError(f"kind '{spec.kind}' cannot train on loss '{spec.loss}'")


def model_options(spec: Spec) -> dict[str, Any]:
    """The project model's options for `spec`: class defaults, the registry's, then the spec's.

    A ValueError names any option set away from the project's default that the builders do not
    implement, so a benchmark never compares different networks silently.
    """
    name = str(spec.options.get("name", spec.kind))
    class_name, supported = KINDS[spec.kind]
    if name not in MODELS or MODELS[name][0].__name__ != class_name:
        raise ValueError(f"model '{name}' is not a {class_name}, the kind '{spec.kind}'")
    cls, registered = MODELS[name]
    base = {
        f.name: _plain(f.default)
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING
    }
    base.update({k: _plain(v) for k, v in registered.items()})
    options = {**base, **{k: _plain(v) for k, v in spec.options.items() if k not in _IGNORED}}
    changed = sorted(
        k for k in options if k not in supported and (k not in base or options[k] != base[k])
    )
    if spec.kind == "lstm" and options["cell"] != "lstm":
        changed.append("cell")  # a registry name such as "gru" changes the cell by default
    if changed:
        values = ", ".join(f"{k}={options[k]!r}" for k in changed)
        raise ValueError(f"the {spec.kind} benchmark builders support no {values}")
    return options


def _plain(value: Any) -> Any:
    """Lists as tuples, so a config's list equals the class default's tuple."""
    return tuple(value) if isinstance(value, list) else value
