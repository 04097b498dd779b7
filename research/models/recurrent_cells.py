"""Recurrent cells: vanilla RNN, LSTM and GRU, to the course material's equations.

The cells follow the course material's equations and plug into `flax.linen.RNN` (a `scan` over
time, no Python unrolling). Each keeps one fused input kernel, one fused recurrent kernel and one
bias, with the gates side by side in the last axis, so a step costs two matmuls:

- `SimpleRNNCell`: h_t = tanh(W_x x_t + W_h h_{t-1} + b).
- `LSTMCell`, gates in the order (i, f, g, o) as flax, Keras and PyTorch keep them:
  i, f, o = sigmoid(W_x* x_t + W_h* h_{t-1} + b*), g = tanh(W_xg x_t + W_hg h_{t-1} + b_g),
  c_t = f * c_{t-1} + i * g, h_t = o * tanh(c_t); the forget bias starts at `forget_bias`.
- `GRUCell`, gates (r, z, n), the "reset after" convention of flax, PyTorch and Keras
  (`reset_after=True`): r = sigmoid(W_xr x + b_r + W_hr h), z = sigmoid(W_xz x + b_z + W_hz h),
  n = tanh(W_xn x + b_n + r * (W_hn h + b_hn)), h_t = (1 - z) * n + z * h_{t-1}; z is the share
  of the old state that is kept.

Input kernels start glorot (or any `KERNEL_INITS` name), recurrent kernels orthogonal gate by gate,
biases at zero except the LSTM forget gate. With `recurrent_dropout` (and `deterministic=False`)
the state entering the recurrent kernel is multiplied by one dropout mask drawn once per sequence
(variational dropout, Gal & Ghahramani): the `dropout` rng must not be split over time steps,
which `RecurrentNet` arranges by scanning with `split_rngs={"params": False, "dropout": False}`.
The carry stays float32 whatever the compute `dtype`, so long scans do not drift in bfloat16.
"""

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.errors import ConfigError
from research.models.layers import Initializer, get_kernel_init


def _per_gate(base: Initializer, num_gates: int) -> Initializer:
    """An initializer for a fused (fan_in, num_gates * features) kernel that initialises each
    gate's block on its own, so every gate's recurrent block is orthogonal by itself."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        fan_in, total = shape
        keys = jax.random.split(key, num_gates)
        blocks = [base(k, (fan_in, total // num_gates), dtype) for k in keys]
        return jnp.concatenate(blocks, axis=-1)

    return init


class RecurrentCell(nn.RNNCellBase):
    """Shared fields and the two fused projections of the cells below."""

    features: int
    kernel_init: str = "glorot"
    recurrent_kernel_init: str = "orthogonal"
    init_scale: float = 0.01
    recurrent_dropout: float = 0.0
    deterministic: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    num_gates = 1  # class constant, not a field

    def _bias_init(self, key: jax.Array, shape: Sequence[int], dtype: Any) -> jax.Array:
        return jnp.zeros(shape, dtype)

    def _project(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(W_x x + b, W_h h') for all gates at once; h' is h after the variational mask."""
        fused = self.num_gates * self.features
        w_x = self.param(
            "input_kernel",
            _per_gate(get_kernel_init(self.kernel_init, self.init_scale), self.num_gates),
            (x.shape[-1], fused),
            self.param_dtype,
        )
        w_h = self.param(
            "recurrent_kernel",
            _per_gate(get_kernel_init(self.recurrent_kernel_init, self.init_scale), self.num_gates),
            (self.features, fused),
            self.param_dtype,
        )
        b = self.param("bias", self._bias_init, (fused,), self.param_dtype)
        h = self._drop_recurrent(h)
        x_part = jnp.dot(x.astype(self.dtype), w_x.astype(self.dtype)) + b.astype(self.dtype)
        return x_part, jnp.dot(h.astype(self.dtype), w_h.astype(self.dtype))

    def _drop_recurrent(self, h: jax.Array) -> jax.Array:
        """Variational dropout on the recurrent input: the rng is the same at every step of a
        scan that does not split `dropout`, hence so is the mask."""
        rate = self.recurrent_dropout
        if self.deterministic or rate == 0.0:
            return h
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate, h.shape)
        return jnp.where(keep, h / (1.0 - rate), 0.0).astype(h.dtype)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Any:
        """A zero state for inputs of shape (*batch, features); the rng is unused."""
        del rng
        return jnp.zeros((*input_shape[:-1], self.features), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        """One feature axis: inputs are (*batch, features)."""
        return 1


class SimpleRNNCell(RecurrentCell):
    """Elman cell: h_t = tanh(W_x x_t + W_h h_{t-1} + b); the carry and the output are h."""

    num_gates = 1

    @nn.compact
    def __call__(self, carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_part, h_part = self._project(carry, x)
        h = jnp.tanh(x_part + h_part).astype(carry.dtype)
        return h, h


class LSTMCell(RecurrentCell):
    """LSTM cell with gates (i, f, g, o); carry (c, h) as flax's, output h.

    `forget_bias` is the forget gate's initial bias: 1.0 keeps the cell state flowing at the start
    of training, so gradients reach early steps (Jozefowicz et al., 2015).
    """

    forget_bias: float = 1.0
    num_gates = 4

    def _bias_init(self, key: jax.Array, shape: Sequence[int], dtype: Any) -> jax.Array:
        bias = jnp.zeros(shape, dtype)
        return bias.at[self.features : 2 * self.features].set(self.forget_bias)

    @nn.compact
    def __call__(
        self, carry: tuple[jax.Array, jax.Array], x: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        c, h = carry
        x_part, h_part = self._project(h, x)
        new_c, new_h = _lstm_update(x_part + h_part, c)
        new_c, new_h = new_c.astype(c.dtype), new_h.astype(h.dtype)
        return (new_c, new_h), new_h

    @nn.nowrap
    def initialize_carry(
        self, rng: jax.Array, input_shape: tuple[int, ...]
    ) -> tuple[jax.Array, jax.Array]:
        """Zero (c, h) for inputs of shape (*batch, features)."""
        zeros = super().initialize_carry(rng, input_shape)
        return zeros, zeros


class GRUCell(RecurrentCell):
    """GRU cell with gates (r, z, n), reset applied after the recurrent product (flax, PyTorch
    and Keras `reset_after=True`); h_t = (1 - z) * n + z * h_{t-1}. The candidate's recurrent
    term has its own bias `recurrent_bias` because r scales it."""

    num_gates = 3

    @nn.compact
    def __call__(self, carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_part, h_part = self._project(carry, x)
        b_hn = self.param("recurrent_bias", nn.initializers.zeros, (self.features,))
        h = _gru_update(x_part, h_part, b_hn.astype(self.dtype), carry.astype(self.dtype))
        h = h.astype(carry.dtype)
        return h, h


# The gates' elementwise updates are rematerialised in backpropagation: a scan then keeps only
# their inputs per step (the pre-activations, c or h) rather than every sigmoid and tanh, and
# each kept array costs a write at every step, which on CPU outweighs recomputing them.
@jax.checkpoint
def _lstm_update(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(c_t, h_t) from the pre-activations (i, f, g, o) side by side and c_{t-1}."""
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    new_c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    return new_c, nn.sigmoid(o) * jnp.tanh(new_c)


@jax.checkpoint
def _gru_update(x_part: jax.Array, h_part: jax.Array, b_hn: jax.Array, h: jax.Array) -> jax.Array:
    """h_t from the input and recurrent projections (r, z, n side by side) and h_{t-1}."""
    x_r, x_z, x_n = jnp.split(x_part, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(h_part, 3, axis=-1)
    r = nn.sigmoid(x_r + h_r)
    z = nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + b_hn))
    return (1.0 - z) * n + z * h


CELLS: Mapping[str, type[RecurrentCell]] = MappingProxyType(
    {"rnn": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}
)


def make_cell(kind: str, features: int, **options: Any) -> RecurrentCell:
    """The cell named `kind` (rnn | lstm | gru); `forget_bias` is dropped for non-LSTM cells."""
    if kind not in CELLS:
        raise ConfigError(f"unknown model.cell '{kind}'; known: {', '.join(CELLS)}")
    if kind != "lstm":
        options.pop("forget_bias", None)
    return CELLS[kind](features, **options)
