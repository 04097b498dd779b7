"""The project's networks and Adam step written by hand in PyTorch, for the benchmark.

`build(spec, batch)` rebuilds the model family `spec.kind` layer by layer as research/models
defines it (same layers, widths, paddings, strides, dropout and BatchNorm settings, the same
initialisers) and returns an eager train step on the fixed batch. Options the builders do not
implement must keep the project's default, else a ValueError names them. The ResNet's modules
carry torchvision's names, so `research.port.torchvision` can load its weights into the
project's model (the tests compare the two networks' outputs that way).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# The option helpers are framework-free; keras_steps imports Keras only inside its functions.
from research.bench.options import check_spec, model_options
from research.bench.spec import Batch, Spec, Step

# --- initialisers (flax's, in torch's (out, in, ...) weight layout) ---------------------------


def _truncated_normal(weight: torch.Tensor, scale: float) -> None:
    """flax's truncated variance scaling over fan_in: variance `scale / fan_in` after cutting at
    two standard deviations (hence the 0.8796 correction of the untruncated stddev)."""
    fan_in = weight[0].numel()
    std = math.sqrt(scale / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


KERNEL_INITS: Mapping[str, Callable[[torch.Tensor, float], None]] = {
    "normal": lambda w, scale: nn.init.normal_(w, std=scale),
    "glorot": lambda w, scale: nn.init.xavier_uniform_(w),
    "he": lambda w, scale: _truncated_normal(w, 2.0),
    "orthogonal": lambda w, scale: nn.init.orthogonal_(w),
    "lecun": lambda w, scale: _truncated_normal(w, 1.0),
}


@torch.no_grad()
def init_weights(module: nn.Module, kernel_init: str, init_scale: float) -> None:
    """Every Linear and Conv2d under `module`: `kernel_init` weights, zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            KERNEL_INITS[kernel_init](layer.weight, init_scale)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _activation(name: str) -> nn.Module:
    """The project's activation `name`; flax's gelu is the tanh approximation."""
    modules = {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": lambda: nn.GELU(approximate="tanh"),
    }
    if name not in modules:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(modules)}")
    return modules[name]()


# --- MLP and CNN --------------------------------------------------------------------------------


def make_mlp(o: Mapping[str, Any], input_shape: Sequence[int], outputs: int) -> nn.Module:
    """Flatten, hidden Linear + activation + dropout layers, linear head (models/mlp.py)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in o["hidden_sizes"]:
        layers += [nn.Linear(width, hidden), _activation(o["activation"])]
        layers.append(nn.Dropout(o["dropout_rate"]))
        width = hidden
    model = nn.Sequential(*layers, nn.Linear(width, outputs))
    init_weights(model, o["kernel_init"], o["init_scale"])
    return model


def make_cnn(o: Mapping[str, Any], input_shape: Sequence[int], outputs: int) -> nn.Module:
    """Conv stages, 2x2 max pooling and dropout, dense, head dropout, head (models/cnn.py)."""
    height, width, channels = input_shape
    layers: list[nn.Module] = []
    for features in o["stage_features"]:
        for _ in range(o["blocks_per_stage"]):
            layers += _conv_block(channels, features, o["batch_norm"])
            channels = features
        # ceil_mode: flax's SAME pooling keeps a last, partial window on odd sizes.
        layers += [nn.MaxPool2d(2, 2, ceil_mode=True), nn.Dropout(o["dropout_rate"])]
        height, width = -(-height // 2), -(-width // 2)
    # torch flattens (C, H, W) where flax flattens (H, W, C): a permutation of fc's rows only.
    layers += [nn.Flatten(), nn.Linear(height * width * channels, o["dense_features"]), nn.ReLU()]
    layers += [nn.Dropout(o["head_dropout_rate"]), nn.Linear(o["dense_features"], outputs)]
    model = nn.Sequential(*layers)
    init_weights(model, o["kernel_init"], o["init_scale"])
    return model


def _conv_block(channels: int, features: int, batch_norm: bool) -> list[nn.Module]:
    """3x3 SAME conv (no bias before BatchNorm), BatchNorm, ReLU (layers.ConvBlock)."""
    conv = nn.Conv2d(channels, features, 3, padding=1, bias=not batch_norm)
    # flax's momentum 0.9 weighs the old statistics; torch's 0.1 weighs the new batch.
    norm = [nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)] if batch_norm else []
    return [conv, *norm, nn.ReLU()]


# --- LSTM ---------------------------------------------------------------------------------------


class LSTMNet(nn.Module):
    """Stacked LSTM layers, each followed by dropout with one mask per sequence, then a linear
    head on the last step's state (models/recurrent.py, cell "lstm", pooling "last").

    One nn.LSTM per layer rather than `num_layers`: the project drops out after every layer,
    the last included, with the mask broadcast over time; torch's inter-layer dropout draws a
    mask per element and skips the last layer.
    """

    def __init__(self, o: Mapping[str, Any], features: int, outputs: int) -> None:
        super().__init__()
        sizes = (features, *o["hidden_sizes"])
        self.layers = nn.ModuleList(
            nn.LSTM(n_in, n_out, batch_first=True) for n_in, n_out in itertools.pairwise(sizes)
        )
        self.dropout_rate = float(o["dropout_rate"])
        self.head = nn.Linear(sizes[-1], outputs)
        self._init(o)

    @torch.no_grad()
    def _init(self, o: Mapping[str, Any]) -> None:
        """Per gate, as the project's cells: input kernels `kernel_init`, recurrent kernels
        orthogonal, bias zero but the forget gate's at `forget_bias`; the head `kernel_init`.

        torch keeps two bias vectors (b_ih, b_hh) where the project has one; b_hh stays zero and
        frozen, so the layer computes the same function with the same trainable parameters.
        """
        for lstm in self.layers:
            hidden = lstm.hidden_size
            for gate in range(4):
                rows = slice(gate * hidden, (gate + 1) * hidden)
                KERNEL_INITS[o["kernel_init"]](lstm.weight_ih_l0[rows], o["init_scale"])
                nn.init.orthogonal_(lstm.weight_hh_l0[rows])
            lstm.bias_ih_l0.zero_()[hidden : 2 * hidden] = o["forget_bias"]
            lstm.bias_hh_l0.zero_().requires_grad_(False)
        init_weights(self.head, o["kernel_init"], o["init_scale"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lstm in self.layers:
            x, _ = lstm(x)
            if self.training and self.dropout_rate > 0:
                mask = x.new_ones((x.shape[0], 1, x.shape[2]))
                x = x * F.dropout(mask, self.dropout_rate, training=True)
        return self.head(x[:, -1])


# --- ResNet (torchvision's module names) --------------------------------------------------------


def _conv_bn(
    channels: int, features: int, kernel: int, stride: int, o: Mapping[str, Any]
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A conv padded kernel // 2 on each side (as the project's) and its BatchNorm."""
    conv = nn.Conv2d(channels, features, kernel, stride, kernel // 2, bias=o["conv_bias"])
    return conv, nn.BatchNorm2d(features, eps=o["bn_epsilon"], momentum=0.1)


class ResNetBlock(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 to 4 * width) residual block; the stride
    sits on the 3x3 conv (v1.5) unless `stride_in_1x1`; a projection where the shape changes."""

    def __init__(self, channels: int, width: int, stride: int, o: Mapping[str, Any]) -> None:
        super().__init__()
        if o["block"] == "bottleneck":
            first, middle = (stride, 1) if o["stride_in_1x1"] else (1, stride)
            layers = [(width, 1, first), (width, 3, middle), (4 * width, 1, 1)]
        else:
            layers = [(width, 3, stride), (width, 3, 1)]
        self.depth = len(layers)
        for k, (features, kernel, strides) in enumerate(layers, start=1):
            conv, bn = _conv_bn(channels if k == 1 else width, features, kernel, strides, o)
            setattr(self, f"conv{k}", conv)
            setattr(self, f"bn{k}", bn)
        self.out_features = layers[-1][0]
        self.downsample = None
        if stride != 1 or channels != self.out_features:
            self.downsample = nn.Sequential(*_conv_bn(channels, self.out_features, 1, stride, o))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for k in range(1, self.depth + 1):
            y = getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(y if k == 1 else F.relu(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ResNet(nn.Module):
    """7x7/2 stem conv, BN, ReLU, 3x3/2 max pool, residual stages (the first block of every
    stage after the first strides by 2), global average pool, linear head (models/resnet.py)."""

    def __init__(self, o: Mapping[str, Any], channels: int, outputs: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(channels, o["stem_features"], 7, 2, o)
        self.maxpool = nn.MaxPool2d(3, 2, 1)  # pads with -inf, as the project's pool
        channels = o["stem_features"]
        for s, (blocks, width) in enumerate(zip(o["stage_blocks"], o["widths"], strict=True), 1):
            stage = []
            for b in range(blocks):
                stage.append(ResNetBlock(channels, width, 2 if s > 1 and b == 0 else 1, o))
                channels = stage[-1].out_features
            setattr(self, f"layer{s}", nn.Sequential(*stage))
        self.num_stages = len(o["widths"])
        self.fc = nn.Linear(channels, outputs)
        self._init()

    @torch.no_grad()
    def _init(self) -> None:
        """He normal (fan_out) convs, BN scale one and bias zero, LeCun normal head."""
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        init_weights(self.fc, "lecun", 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(torch.mean(x, dim=(2, 3)))


# --- VAE ----------------------------------------------------------------------------------------


class VAE(nn.Module):
    """MLP VAE: hidden layers, mean and logvar heads, z = mean + exp(logvar / 2) * eps, the
    hidden sizes reversed, pixel logits (models/vae.py, bernoulli decoder). Returns
    (logits (B, pixels), mean, logvar); z is sampled in training only, as the project's."""

    def __init__(self, o: Mapping[str, Any], input_shape: Sequence[int]) -> None:
        super().__init__()
        pixels, latent = math.prod(input_shape), o["latent_size"]
        self.encoder = self._stack(pixels, o["hidden_sizes"], o["activation"])
        width = o["hidden_sizes"][-1] if o["hidden_sizes"] else pixels
        self.mean, self.logvar = nn.Linear(width, latent), nn.Linear(width, latent)
        reverse = tuple(reversed(o["hidden_sizes"]))
        self.decoder = self._stack(latent, reverse, o["activation"])
        self.output = nn.Linear(reverse[-1] if reverse else latent, pixels)
        init_weights(self, o["kernel_init"], o["init_scale"])

    @staticmethod
    def _stack(width: int, sizes: Sequence[int], activation: str) -> nn.Sequential:
        layers: list[nn.Module] = []
        for hidden in sizes:
            layers += [nn.Linear(width, hidden), _activation(activation)]
            width = hidden
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x.flatten(1))
        mean, logvar = self.mean(h).float(), self.logvar(h).float()
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        return self.output(self.decoder(z)), mean, logvar


# --- model, loss and step -----------------------------------------------------------------------


def make_model(spec: Spec) -> nn.Module:
    """The torch network of `spec` (on the CPU, float32, in training mode)."""
    o = model_options(spec)
    shape, outputs = spec.input_shape, spec.num_outputs
    if spec.kind == "mlp":
        return make_mlp(o, shape, outputs)
    if spec.kind == "cnn":
        return make_cnn(o, shape, outputs)
    if spec.kind == "lstm":
        return LSTMNet(o, math.prod(shape[1:]) if len(shape) > 1 else 1, outputs)
    if spec.kind == "resnet":
        return ResNet(o, shape[-1], outputs)
    return VAE(o, shape)


def compute_loss(spec: Spec, outputs: Any, target: torch.Tensor) -> torch.Tensor:
    """The batch mean of `spec.loss` on the model's outputs (float32 whatever the precision)."""
    if spec.loss == "cross_entropy":
        return F.cross_entropy(outputs.float(), target)
    if spec.loss == "mse":
        return F.mse_loss(outputs.float(), target)
    logits, mean, logvar = outputs
    nll = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(1)
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(1)
    return (nll + kl).mean()


def count_params(model: nn.Module) -> int:
    """Trainable parameters of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _tensors(spec: Spec, batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, target) on `device`: images to NCHW, sequences to (B, T, features)."""
    x = np.asarray(batch.x, np.float32)
    if spec.kind in ("cnn", "resnet"):
        x = x.transpose(0, 3, 1, 2)
    elif spec.kind == "lstm":
        x = x.reshape(*x.shape[:2], -1) if x.ndim > 2 else x[..., None]
    if spec.loss == "vae_bce":
        y = torch.from_numpy(x.reshape(x.shape[0], -1).copy())
    elif spec.loss == "cross_entropy":
        y = torch.from_numpy(np.asarray(batch.y, np.int64))
    else:
        y = torch.from_numpy(np.asarray(batch.y, np.float32))
    return torch.from_numpy(np.ascontiguousarray(x)).to(device), y.to(device)


@dataclasses.dataclass
class TorchRun:
    """One Adam step per call on the fixed batch; `last_loss` is the latest step's loss."""

    spec: Spec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    target: torch.Tensor
    bfloat16: bool
    _loss: torch.Tensor | None = dataclasses.field(default=None, init=False, repr=False)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        device = self.inputs.device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.bfloat16):
            loss = compute_loss(self.spec, self.model(self.inputs), self.target)
        loss.backward()
        self.optimizer.step()
        self._loss = loss.detach()  # kept on the device: no host copy inside the timed step
        if device == "cuda":
            torch.cuda.synchronize()

    @property
    def last_loss(self) -> float:
        """The loss of the latest step (before its update), as a Python float."""
        if self._loss is None:
            raise RuntimeError("no step has run yet")
        return float(self._loss)


def build(spec: Spec, batch: Batch, *, precision: str = "float32", seed: int = 0) -> Step:
    """The PyTorch train step of `spec` on `batch`, run once (timed as `first_step_s`)."""
    check_spec(spec, precision)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = make_model(spec).to(device).train()
    inputs, target = _tensors(spec, batch, device)
    if device.type == "cuda" and spec.kind in ("cnn", "resnet"):
        # NHWC kernels are the fast path for convolutions on tensor-core GPUs.
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=spec.learning_rate)
    run = TorchRun(spec, model, optimizer, inputs, target, precision == "bfloat16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    first_step_s = time.perf_counter() - start
    peak_bytes = None
    if device.type == "cuda":
        run()  # the Adam moments exist from the first step on: the second shows the steady peak
        peak_bytes = int(torch.cuda.max_memory_allocated())
    return Step(
        run=run, num_params=count_params(model), first_step_s=first_step_s, peak_bytes=peak_bytes
    )
