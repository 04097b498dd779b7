"""Autoencoders: an MLP (`Autoencoder`) and a convolutional (`ConvAutoencoder`) family.

Parameters live under `encoder/...` and `decoder/...` with names that carry depth:
`encoder/layer{i}`, `encoder/latent`, `decoder/layer{i}`, `decoder/output` (MLP) and
`encoder/stage{s}/conv` (stride-2 convolutions), `encoder/latent`, `decoder/project`,
`decoder/stage{s}/conv` (stride-2 transposed convolutions) for the convolutional variant; layer
and stage numbers count from the input of each half. The decoder mirrors the encoder.

`__call__(x, *, train)` returns `(logits, aux)`: logits of a Bernoulli decoder with x's shape
(sigmoid gives the reconstruction) and aux {"latent": z, "hidden": the encoder's last hidden
activations}. `encode` and `decode` are usable with `model.apply(..., method="encode")`. The
encoder and decoder modules are shared with the VAEs (research.models.vae).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research.models.layers import dense, get_activation, get_kernel_init


class MLPEncoder(nn.Module):
    """Flatten, `layer{i}` dense + activation, then one linear head per name in `heads`."""

    hidden_sizes: Sequence[int]
    latent_size: int
    heads: Sequence[str] = ("latent",)
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[dict[str, jnp.ndarray], jnp.ndarray]:
        """({head: (B, latent_size) float32}, last hidden activations)."""
        act = get_activation(self.activation)
        init = {"kernel_init": self.kernel_init, "init_scale": self.init_scale, "dtype": self.dtype}
        h = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for i, width in enumerate(self.hidden_sizes, start=1):
            h = act(dense(width, name=f"layer{i}", **init)(h))
        outs = {name: dense(self.latent_size, name=name, **init)(h) for name in self.heads}
        return {k: v.astype(jnp.float32) for k, v in outs.items()}, h


class MLPDecoder(nn.Module):
    """`layer{i}` dense + activation (the encoder's widths reversed), then a linear `output`
    reshaped to `output_shape`. With `logscale` set, also a scalar parameter `logscale` (a
    Gaussian decoder's log standard deviation) initialised to it; else None is returned."""

    hidden_sizes: Sequence[int]
    output_shape: Sequence[int]
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    logscale: float | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """(raw outputs (B, *output_shape) float32, the logscale parameter or None)."""
        act = get_activation(self.activation)
        init = {"kernel_init": self.kernel_init, "init_scale": self.init_scale, "dtype": self.dtype}
        h = z.astype(self.dtype)
        for i, width in enumerate(self.hidden_sizes, start=1):
            h = act(dense(width, name=f"layer{i}", **init)(h))
        out = dense(int(np.prod(self.output_shape)), name="output", **init)(h)
        out = out.reshape((z.shape[0], *self.output_shape)).astype(jnp.float32)
        return out, _logscale_param(self, self.logscale)


class ConvStage(nn.Module):
    """One `conv`: a 3x3 (by default) stride-2 convolution, or a transposed one (upsampling)."""

    features: int
    kernel_size: int = 3
    transpose: bool = False
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Halve (or, transposed, double) the spatial size with SAME padding."""
        layer = nn.ConvTranspose if self.transpose else nn.Conv
        return layer(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=(2, 2),
            padding="SAME",
            kernel_init=get_kernel_init(self.kernel_init, self.init_scale),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="conv",
        )(x)


def conv_sizes(input_shape: Sequence[int], stages: int) -> list[tuple[int, int]]:
    """Spatial (height, width) before each stride-2 SAME stage and after the last one."""
    sizes = [(int(input_shape[0]), int(input_shape[1]))]
    for _ in range(stages):
        h, w = sizes[-1]
        sizes.append((-(-h // 2), -(-w // 2)))
    return sizes


class ConvEncoder(nn.Module):
    """`stage{s}/conv` stride-2 convolutions + activation, flatten, linear heads."""

    stage_features: Sequence[int]
    latent_size: int
    heads: Sequence[str] = ("latent",)
    kernel_size: int = 3
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[dict[str, jnp.ndarray], jnp.ndarray]:
        """({head: (B, latent_size) float32}, the last stage's feature map (B, h, w, C))."""
        act = get_activation(self.activation)
        init = {"kernel_init": self.kernel_init, "init_scale": self.init_scale, "dtype": self.dtype}
        h = x.astype(self.dtype)
        for s, features in enumerate(self.stage_features, start=1):
            h = act(ConvStage(features, self.kernel_size, name=f"stage{s}", **init)(h))
        flat = h.reshape((h.shape[0], -1))
        outs = {name: dense(self.latent_size, name=name, **init)(flat) for name in self.heads}
        return {k: v.astype(jnp.float32) for k, v in outs.items()}, h


class ConvDecoder(nn.Module):
    """`project` dense + activation to the encoder's last feature map, then `stage{s}/conv`
    stride-2 transposed convolutions back to `output_shape` (cropped where the encoder rounded
    odd sizes up); the last stage is linear and has the image's channels."""

    stage_features: Sequence[int]  # the encoder's, in encoder order
    output_shape: Sequence[int]
    kernel_size: int = 3
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    logscale: float | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """(raw outputs (B, *output_shape) float32, the logscale parameter or None)."""
        act = get_activation(self.activation)
        init = {"kernel_init": self.kernel_init, "init_scale": self.init_scale, "dtype": self.dtype}
        sizes = conv_sizes(self.output_shape, len(self.stage_features))
        (h0, w0), c0 = sizes[-1], self.stage_features[-1]
        x = act(dense(h0 * w0 * c0, name="project", **init)(z.astype(self.dtype)))
        x = x.reshape((z.shape[0], h0, w0, c0))
        channels = [*reversed(self.stage_features[:-1]), self.output_shape[-1]]
        targets = list(reversed(sizes[:-1]))
        for s, (features, (h, w)) in enumerate(zip(channels, targets, strict=True), start=1):
            x = ConvStage(features, self.kernel_size, True, name=f"stage{s}", **init)(x)
            x = x[:, :h, :w]
            if s < len(channels):
                x = act(x)
        return x.astype(jnp.float32), _logscale_param(self, self.logscale)


def _logscale_param(module: nn.Module, init: float | None) -> jnp.ndarray | None:
    """A scalar `logscale` parameter of `module` starting at `init`; None when `init` is None."""
    if init is None:
        return None
    return module.param("logscale", nn.initializers.constant(init), (), jnp.float32)


def check_input_shape(name: str, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The (H, W, C) or flat shape a decoder reproduces; a model built without one can't decode."""
    if not input_shape:
        raise ValueError(f"{name} needs input_shape (the shape of one input, e.g. (8, 8, 1))")
    return tuple(int(d) for d in input_shape)


class Autoencoder(nn.Module):
    """MLP autoencoder: x -> hidden layers -> z (latent_size) -> mirrored layers -> logits."""

    input_shape: Sequence[int] | None = None  # one example's shape; get_model fills it from data
    hidden_sizes: Sequence[int] = (256, 128)
    latent_size: int = 16
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    def setup(self) -> None:
        """The `encoder` and `decoder` halves."""
        init = {
            "activation": self.activation,
            "kernel_init": self.kernel_init,
            "init_scale": self.init_scale,
            "dtype": self.dtype,
        }
        shape = check_input_shape("Autoencoder", self.input_shape)
        self.encoder = MLPEncoder(self.hidden_sizes, self.latent_size, **init)
        self.decoder = MLPDecoder(tuple(reversed(self.hidden_sizes)), shape, **init)

    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        """(reconstruction logits shaped like x, {"latent", "hidden"}); `train` changes nothing."""
        del train
        heads, hidden = self.encoder(x)
        return self.decode(heads["latent"]), {"latent": heads["latent"], "hidden": hidden}

    def encode(self, x: jnp.ndarray) -> jnp.ndarray:
        """The code z (B, latent_size) of inputs x."""
        return self.encoder(x)[0]["latent"]

    def decode(self, z: jnp.ndarray) -> jnp.ndarray:
        """Reconstruction logits (B, *input_shape) of codes z."""
        return self.decoder(z)[0]


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder: stride-2 conv stages -> dense z -> dense -> transposed convs."""

    input_shape: Sequence[int] | None = None  # (H, W, C); get_model fills it from the data
    stage_features: Sequence[int] = (32, 64)
    latent_size: int = 16
    kernel_size: int = 3
    activation: str = "relu"
    kernel_init: str = "lecun"
    init_scale: float = 0.01
    dtype: Any = jnp.float32

    def setup(self) -> None:
        """The `encoder` and `decoder` halves."""
        init = {
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "kernel_init": self.kernel_init,
            "init_scale": self.init_scale,
            "dtype": self.dtype,
        }
        shape = check_input_shape("ConvAutoencoder", self.input_shape)
        self.encoder = ConvEncoder(self.stage_features, self.latent_size, **init)
        self.decoder = ConvDecoder(self.stage_features, shape, **init)

    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        """(reconstruction logits shaped like x, {"latent", "hidden"}); `train` changes nothing."""
        del train
        heads, hidden = self.encoder(x)
        return self.decode(heads["latent"]), {"latent": heads["latent"], "hidden": hidden}

    def encode(self, x: jnp.ndarray) -> jnp.ndarray:
        """The code z (B, latent_size) of images x (B, H, W, C)."""
        return self.encoder(x)[0]["latent"]

    def decode(self, z: jnp.ndarray) -> jnp.ndarray:
        """Reconstruction logits (B, H, W, C) of codes z."""
        return self.decoder(z)[0]
