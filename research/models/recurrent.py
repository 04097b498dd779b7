"""Recurrent networks over the cells of research/models/recurrent_cells.py.

`RecurrentNet` stacks layers `layer{i}` (each `forward` and, when bidirectional, `backward`
RNNs over a `cell`, then an optional `norm`), pools the last layer's states (the state at each
sequence's last real step, attention over the real steps, or none: per-step outputs) and applies
a linear `head`. Each RNN is a `flax.linen.RNN` scan over time with the `dropout` rng broadcast,
so variational recurrent dropout draws one mask per sequence.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import ConfigError, DataError
from research.models.layers import dense
from research.models.recurrent_cells import (
    CELLS,
    GRUCell,
    LSTMCell,
    RecurrentCell,
    SimpleRNNCell,
    make_cell,
)

__all__ = [
    "CELLS",
    "POOLINGS",
    "AttentionPool",
    "GRUCell",
    "LSTMCell",
    "RecurrentLayer",
    "RecurrentNet",
    "SimpleRNNCell",
    "make_cell",
]

POOLINGS = ("last", "attention", "none")


def _scan(cell: RecurrentCell, name: str, unroll: int, **options: Any) -> nn.RNN:
    """nn.RNN over `cell` with the dropout rng broadcast over time (one mask per sequence),
    `unroll` steps per loop iteration."""
    split_rngs = {"params": False, "dropout": False}
    return nn.RNN(cell, split_rngs=split_rngs, unroll=unroll, name=name, **options)


class RecurrentLayer(nn.Module):
    """One recurrent layer: `forward` (and `backward`, run on each sequence reversed within its
    real length and re-aligned) RNNs, outputs concatenated per step, then optional `norm`."""

    cell: str
    features: int
    bidirectional: bool = False
    layer_norm: bool = False
    cell_options: Mapping[str, Any] | None = None
    unroll: int = 1

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        seq_lengths: jax.Array | None,
        *,
        train: bool,
        initial_carry: Any = None,
    ) -> tuple[jax.Array, Any, jax.Array]:
        """(states per step, the forward RNN's final carry, the layer's output at that carry:
        the last step's state when `seq_lengths` is None and the layer is not bidirectional)."""
        # parent=None: each RNN adopts its cell as `cell`, giving paths like layer1/forward/cell.
        options = {**(self.cell_options or {}), "deterministic": not train, "parent": None}
        forward = _scan(make_cell(self.cell, self.features, **options), "forward", self.unroll)
        carry, states = forward(
            x, seq_lengths=seq_lengths, initial_carry=initial_carry, return_carry=True
        )
        final = carry[1] if self.cell == "lstm" else carry  # the output is h; LSTM carries (c, h)
        if self.bidirectional:
            backward = _scan(
                make_cell(self.cell, self.features, **options),
                "backward",
                self.unroll,
                reverse=True,
                keep_order=True,
            )
            states = jnp.concatenate([states, backward(x, seq_lengths=seq_lengths)], axis=-1)
        if self.layer_norm:
            norm = nn.LayerNorm(dtype=options["dtype"], name="norm")
            states = norm(states)
            final = final if self.bidirectional else norm(final)
        return states, carry, final.astype(states.dtype)


class RecurrentNet(nn.Module):
    """A stack of recurrent layers `layer{i}`, pooling over time and a linear `head`.

    Inputs are (batch, time, features) floats; (batch, time) is one feature and trailing axes
    beyond the features are flattened (an image becomes a sequence of rows). `cell` is one of
    rnn | lstm | gru, or a tuple naming each layer's cell (("lstm", "gru") is the LSTM->GRU
    hybrid). `pooling` "last" takes the state at each sequence's last real step (for a
    bidirectional layer: the forward half there and the backward half at step 0, where the
    backward run ends); "attention" scores each real step (additive attention, `attention`) and
    averages the states with the softmax weights. The head has `num_outputs` units when set
    (regression, e.g. a forecast horizon), else `num_classes` logits.

    Variable lengths: `seq_lengths` (batch,) ints, or `mask` (batch, time), true on real steps,
    which must come first (right padding); every length is at least 1. Padded steps never change
    the outputs; their states are zeros in `aux["states"]`. `dropout_rate` is ordinary dropout on
    each layer's outputs (one mask per sequence), `recurrent_dropout` the cells' variational one.
    With `vocab_size` > 0 the inputs are (batch, time) token ids, looked up in an `embed` table
    of `embed_dim` columns. `pooling` "none" applies the head at every step (outputs
    (batch, time, head): language models, per-step labels).
    Truncated BPTT: `initial_carry` (one cell carry per layer, as `zero_carry` makes) starts the
    forward RNNs from a given state, and aux "carry" holds each layer's final state.
    aux: "states" (last layer, per step), "pre_logits" (pooled), "attention" (weights, when used),
    "carry".
    `unroll` time steps run per loop iteration of each scan: the same function, compiled larger;
    4 measured fastest for the adding problem's LSTM on CPU (launch/bench.py; 8 was slower).
    """

    num_classes: int = 0
    num_outputs: int | None = None
    cell: str | Sequence[str] = "lstm"
    hidden_sizes: Sequence[int] = (64,)
    bidirectional: bool = False
    pooling: str = "last"
    vocab_size: int = 0
    embed_dim: int = 64
    recurrent_dropout: float = 0.0
    dropout_rate: float = 0.0
    layer_norm: bool = False
    forget_bias: float = 1.0
    kernel_init: str = "glorot"
    init_scale: float = 0.01
    unroll: int = 4
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate()

    def _validate(self) -> None:
        """Fail at construction on options that cannot build a model."""
        if not self.hidden_sizes:
            raise ConfigError("model.hidden_sizes must name at least one layer")
        cells = self.layer_cells
        if len(cells) != len(self.hidden_sizes):
            raise ConfigError(
                f"model.cell names {len(cells)} cells for {len(self.hidden_sizes)} layers "
                "(model.hidden_sizes); give one cell or one per layer"
            )
        for kind in cells:
            if kind not in CELLS:
                raise ConfigError(f"unknown model.cell '{kind}'; known: {', '.join(CELLS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown model.pooling '{self.pooling}'; known: {POOLINGS}")
        for key in ("recurrent_dropout", "dropout_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.head_size < 1:
            raise ConfigError(
                f"model.num_outputs / num_classes must be positive, got {self.head_size}"
            )
        if not isinstance(self.unroll, int) or self.unroll < 1:
            raise ConfigError(f"model.unroll must be a positive integer, got {self.unroll!r}")

    @property
    def layer_cells(self) -> tuple[str, ...]:
        """The cell of each layer."""
        if isinstance(self.cell, str):
            return (self.cell,) * len(self.hidden_sizes)
        return tuple(self.cell)

    @property
    def head_size(self) -> int:
        """Units of the head: `num_outputs` when set, else `num_classes`."""
        return self.num_classes if self.num_outputs is None else self.num_outputs

    @nn.nowrap
    def zero_carry(self, batch: int) -> tuple[Any, ...]:
        """A zero state for every layer's forward RNN (the start of a truncated-BPTT stream)."""
        if self.bidirectional:
            raise ConfigError("truncated BPTT carries state forward: use bidirectional=False")
        cells = zip(self.layer_cells, self.hidden_sizes, strict=True)
        return tuple(make_cell(k, w).initialize_carry(None, (batch, 1)) for k, w in cells)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        seq_lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
        initial_carry: Sequence[Any] | None = None,
    ) -> tuple[jax.Array, dict]:
        if self.vocab_size:
            x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")(x)
        x = as_sequence(x).astype(self.dtype)
        seq_lengths = _lengths(seq_lengths, mask)
        real = _real_steps(x.shape[0], x.shape[1], seq_lengths)
        options = {
            "kernel_init": self.kernel_init,
            "init_scale": self.init_scale,
            "recurrent_dropout": self.recurrent_dropout,
            "forget_bias": self.forget_bias,
            "dtype": self.dtype,
        }
        cells = zip(self.layer_cells, self.hidden_sizes, strict=True)
        carries = []
        for i, (kind, width) in enumerate(cells, start=1):
            layer = RecurrentLayer(
                cell=kind,
                features=width,
                bidirectional=self.bidirectional,
                layer_norm=self.layer_norm,
                cell_options=options,
                unroll=self.unroll,
                name=f"layer{i}",
            )
            start = None if initial_carry is None else initial_carry[i - 1]
            x, carry, final = layer(x, seq_lengths, train=train, initial_carry=start)
            carries.append(carry)
            if train and self.dropout_rate > 0:
                keep = self._dropout_scale(x)  # one mask per sequence, for x and final alike
                x, final = x * keep, final * keep[:, 0, : final.shape[-1]]  # forward half
        states = jnp.where(real[..., None], x, 0)
        aux = {"states": states, "carry": tuple(carries)}
        if self.pooling == "last" and seq_lengths is None and not self.bidirectional:
            # The final carry's output is the last state; taking it keeps the per-step states
            # out of backpropagation (reading them costs a slice and an add at every step).
            pooled = final
        elif self.pooling == "last":
            pooled = _last_state(states, real, self.bidirectional)
        elif self.pooling == "none":
            pooled = states
        else:
            pooled, aux["attention"] = AttentionPool(self.dtype, name="attention")(states, real)
        aux["pre_logits"] = pooled
        init = {"kernel_init": self.kernel_init, "init_scale": self.init_scale, "dtype": self.dtype}
        outputs = dense(self.head_size, name="head", **init)(pooled)
        return outputs.astype(jnp.float32), aux

    def _dropout_scale(self, x: jax.Array) -> jax.Array:
        """(batch, 1, features): 0 or 1 / (1 - rate), drawn once per sequence and feature."""
        ones = jnp.ones((x.shape[0], 1, x.shape[-1]), x.dtype)
        return nn.Dropout(self.dropout_rate, broadcast_dims=(1,), deterministic=False)(ones)


def as_sequence(x: jax.Array) -> jax.Array:
    """(batch, time) -> (batch, time, 1); (batch, time, a, b, ...) -> (batch, time, a * b * ...)."""
    if x.ndim < 2:
        raise DataError(f"a recurrent model needs (batch, time, features) inputs, got {x.shape}")
    if x.ndim == 2:
        return x[..., None]
    return x.reshape(x.shape[:2] + (-1,))


def _lengths(seq_lengths: jax.Array | None, mask: jax.Array | None) -> jax.Array | None:
    """Sequence lengths from `seq_lengths` or a right-padded `mask`; None when all are full."""
    if seq_lengths is not None and mask is not None:
        raise DataError("pass seq_lengths or mask to a recurrent model, not both")
    if mask is not None:
        return jnp.sum(mask.astype(jnp.int32), axis=-1)
    return None if seq_lengths is None else jnp.asarray(seq_lengths, jnp.int32)


def _real_steps(batch: int, time: int, seq_lengths: jax.Array | None) -> jax.Array:
    """(batch, time) booleans, true on each sequence's real (unpadded) steps."""
    if seq_lengths is None:
        return jnp.ones((batch, time), bool)
    return jnp.arange(time)[None, :] < seq_lengths[:, None]


def _last_state(states: jax.Array, real: jax.Array, bidirectional: bool) -> jax.Array:
    """The state at each sequence's last real step; a backward half is taken at step 0."""
    last = jnp.sum(real, axis=1) - 1
    final = jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0]
    if not bidirectional:
        return final
    half = states.shape[-1] // 2
    return jnp.concatenate([final[:, :half], states[:, 0, half:]], axis=-1)


class AttentionPool(nn.Module):
    """Additive attention over time: score_t = v . tanh(W s_t + b) (`proj`, `score`), softmax
    over real steps (padded steps get weight exactly 0), pooled = sum_t weight_t s_t."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, states: jax.Array, real: jax.Array) -> tuple[jax.Array, jax.Array]:
        hidden = nn.Dense(states.shape[-1], dtype=self.dtype, name="proj")(states)
        scores = nn.Dense(1, use_bias=False, dtype=self.dtype, name="score")(jnp.tanh(hidden))
        scores = jnp.where(real, scores[..., 0].astype(jnp.float32), -jnp.inf)
        weights = jax.nn.softmax(scores, axis=1)  # float32, for plots and sums
        pooled = jnp.einsum("bt,btf->bf", weights.astype(states.dtype), states)
        return pooled, weights
