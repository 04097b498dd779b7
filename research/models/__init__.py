"""Model registry: `get_model(config.model, num_classes=...)` builds any family by name.

Classifiers get `num_classes`; families without a classification head (autoencoders, VAEs)
ignore it and instead get `input_shape`, the shape of one example their decoder reproduces.
"""

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import flax.linen as nn

from research.errors import ConfigError
from research.models.autoencoder import Autoencoder, ConvAutoencoder
from research.models.cnn import CNN
from research.models.layers import get_activation, get_kernel_init, resolve_dtype
from research.models.mlp import MLP
from research.models.mobilenet import MobileNetV2
from research.models.recurrent import RecurrentNet
from research.models.resnet import ResNet
from research.models.vae import LIKELIHOODS, VAE, ConvVAE
from research.models.vgg import VGG

# VGG depth -> convs per stage (torchvision's configurations A, B, D, E).
_VGG_STAGE_BLOCKS = MappingProxyType(
    {
        11: (1, 1, 2, 2, 2),
        13: (2, 2, 2, 2, 2),
        16: (2, 2, 3, 3, 3),
        19: (2, 2, 4, 4, 4),
    }
)
# ResNet depth -> (block, blocks per stage), as in torchvision.
_RESNET_STAGES = MappingProxyType(
    {
        18: ("basic", (2, 2, 2, 2)),
        34: ("basic", (3, 4, 6, 3)),
        50: ("bottleneck", (3, 4, 6, 3)),
        101: ("bottleneck", (3, 4, 23, 3)),
        152: ("bottleneck", (3, 8, 36, 3)),
    }
)

# name -> (module class, default keyword arguments); a config's model.* keys override the defaults.
MODELS: Mapping[str, tuple[type[nn.Module], Mapping[str, Any]]] = MappingProxyType(
    {
        "mlp": (MLP, {}),
        "mlp_tiny": (MLP, {"hidden_sizes": (16,)}),
        "cnn": (CNN, {}),
        "cnn_tiny": (CNN, {"stage_features": (4, 8), "dense_features": 16}),
        **{
            f"vgg{depth}{suffix}": (VGG, {"stage_blocks": blocks, "batch_norm": bn})
            for depth, blocks in _VGG_STAGE_BLOCKS.items()
            for suffix, bn in (("", False), ("_bn", True))
        },
        "vgg_tiny": (
            VGG,
            {
                "stage_blocks": (1, 1),
                "stage_features": (4, 8),
                "classifier": "gap",
                "batch_norm": True,
            },
        ),
        **{
            f"resnet{depth}": (ResNet, {"block": block, "stage_blocks": blocks})
            for depth, (block, blocks) in _RESNET_STAGES.items()
        },
        "resnet_tiny": (
            ResNet,
            {"block": "basic", "stage_blocks": (1, 1), "widths": (4, 8), "stem_features": 4},
        ),
        "mobilenet_v2": (MobileNetV2, {}),
        "mobilenet_v2_tiny": (
            MobileNetV2,
            {
                "alpha": 0.25,
                "settings": ((1, 8, 1, 1), (6, 8, 1, 2), (6, 16, 1, 2)),
                "last_features": 32,
            },
        ),
        **{cell: (RecurrentNet, {"cell": cell}) for cell in ("rnn", "lstm", "gru")},
        **{
            f"{cell}_tiny": (RecurrentNet, {"cell": cell, "hidden_sizes": (8,)})
            for cell in ("rnn", "lstm", "gru")
        },
        "ae": (Autoencoder, {}),
        "ae_tiny": (Autoencoder, {"hidden_sizes": (16,), "latent_size": 4}),
        "conv_ae": (ConvAutoencoder, {}),
        "conv_ae_tiny": (ConvAutoencoder, {"stage_features": (4, 8), "latent_size": 4}),
        "vae": (VAE, {}),
        "vae_tiny": (VAE, {"hidden_sizes": (16,), "latent_size": 4}),
        "conv_vae": (ConvVAE, {}),
        "conv_vae_tiny": (ConvVAE, {"stage_features": (4, 8), "latent_size": 4}),
    }
)


def get_model(
    model_config: Mapping[str, Any],
    *,
    num_classes: int,
    bn_axis_name: str | None = None,
    input_shape: Sequence[int] | None = None,
    vocab_size: int | None = None,
) -> nn.Module:
    """Instantiate `model_config.name` with the config's other keys as constructor arguments.

    `num_classes` goes to families with a head; `input_shape` (one example's shape, from the
    data) to families with a decoder, unless the config sets `model.input_shape` itself;
    `vocab_size` (token data) to families that embed token ids, unless the config sets it.
    """
    kwargs = dict(model_config)
    name = kwargs.pop("name")
    if name not in MODELS:
        raise ConfigError(f"unknown model.name '{name}'; known: {', '.join(sorted(MODELS))}")
    cls, defaults = MODELS[name]
    fields = cls.__dataclass_fields__
    kwargs = {**defaults, **kwargs}
    if "num_classes" in fields:
        kwargs["num_classes"] = num_classes
    if "dtype" in kwargs:
        kwargs["dtype"] = resolve_dtype(kwargs["dtype"])
    if "bn_axis_name" in fields:
        kwargs["bn_axis_name"] = bn_axis_name
    if "input_shape" in fields:
        kwargs["input_shape"] = _input_shape(name, kwargs.get("input_shape") or input_shape)
    if "vocab_size" in fields and vocab_size and not kwargs.get("vocab_size"):
        kwargs["vocab_size"] = vocab_size  # token inputs: embed them
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ConfigError(
            f"model '{name}' has no option(s) {', '.join(unknown)} (model.{unknown[0]})"
        )
    model = cls(**kwargs)
    _check_named_choices(model)
    return model


def _input_shape(name: str, shape: Sequence[int] | None) -> tuple[int, ...]:
    """One example's shape as a tuple; a decoder cannot be built without it."""
    if not shape:
        raise ConfigError(
            f"model '{name}' needs the shape of one input (model.input_shape, e.g. (8, 8, 1))"
        )
    return tuple(int(d) for d in shape)


def _check_named_choices(model: nn.Module) -> None:
    """Fail on an unknown initializer, activation or likelihood, or a convolutional decoder
    without an image shape, now, not at the first `init` of a run."""
    if hasattr(model, "kernel_init"):
        get_kernel_init(model.kernel_init, model.init_scale)
    if hasattr(model, "activation"):
        get_activation(model.activation)
    if hasattr(model, "likelihood") and model.likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"unknown model.likelihood '{model.likelihood}'; known: {', '.join(LIKELIHOODS)}"
        )
    if hasattr(model, "decoder_scale") and not model.decoder_scale > 0:
        raise ConfigError(f"model.decoder_scale must be positive, got {model.decoder_scale}")
    if hasattr(model, "stage_features") and len(getattr(model, "input_shape", ())) not in (0, 3):
        raise ConfigError(
            f"model.input_shape={model.input_shape}: a convolutional autoencoder needs "
            "images (height, width, channels)"
        )
