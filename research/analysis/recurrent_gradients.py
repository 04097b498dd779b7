"""Vanishing gradients in recurrent models: ||dL/dh_t|| against the time step t.

How far back in time a training signal reaches is the size of dL/dh_t, h_t the hidden state that
leaves step t. It is read off with an additive shift: the model's last recurrent layer is re-run
with a zero `shift_t` added to the state leaving each step (and to that step's output), so
dL/dshift_t = dL/dh_t for every t from one reverse pass. Through a tanh RNN the norm falls by
orders of magnitude going back in time (Bengio et al., 1994; Pascanu et al., 2013); an LSTM's
additive cell state and a GRU's gated copy keep it far larger.
"""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research import storage
from research.errors import ConfigError
from research.models.layers import dense
from research.models.recurrent import RecurrentNet, as_sequence, make_cell
from research.reporting import figures

LossFn = Callable[[jax.Array], jax.Array]


def _check_supported(model: RecurrentNet) -> None:
    """Only the forward, last-step-pooled, unnormalised stack is re-run here."""
    if model.bidirectional:
        raise ConfigError(
            "hidden-state gradients need model.bidirectional=False (a backward run has no "
            "single state leaving step t); use a unidirectional model"
        )
    if model.pooling != "last":
        raise ConfigError(
            f"hidden-state gradients need model.pooling='last', got '{model.pooling}'; "
            "use pooling='last'"
        )
    if model.layer_norm:
        raise ConfigError("hidden-state gradients need model.layer_norm=False; turn it off")


def _cell_options(model: RecurrentNet) -> dict[str, Any]:
    """The cell options RecurrentNet passes to every layer, at evaluation (no dropout)."""
    return {
        "kernel_init": model.kernel_init,
        "init_scale": model.init_scale,
        "recurrent_dropout": model.recurrent_dropout,
        "forget_bias": model.forget_bias,
        "dtype": model.dtype,
    }


def _embedded(model: RecurrentNet, params: Mapping, inputs: jax.Array) -> jax.Array:
    """The first layer's input, (batch, time, features) in the compute dtype, as the model
    makes it (token ids go through its `embed` table when it has a vocabulary)."""
    x = jnp.asarray(inputs)
    if getattr(model, "vocab_size", 0):  # models without a vocabulary field take features
        embed = nn.Embed(model.vocab_size, model.embed_dim, dtype=model.dtype)
        x = embed.apply({"params": params["embed"]}, x)
    return as_sequence(x).astype(model.dtype)


def _run_layer(
    model: RecurrentNet, params: Mapping, layer: int, x: jax.Array, shift: jax.Array | None
) -> jax.Array:
    """Layer `layer` (1-based) of the model re-run with its own cell and parameters by a scan
    over time from a zero state: [B, T, H] states. `shift` [T, B, H], when given, is added to
    the state leaving each step (for the LSTM to h, not c) and to that step's output."""
    kind, width = model.layer_cells[layer - 1], model.hidden_sizes[layer - 1]
    cell = make_cell(kind, width, **_cell_options(model))
    variables = {"params": params[f"layer{layer}"]["forward"]["cell"]}
    xs = jnp.swapaxes(x, 0, 1)
    if shift is None:
        shift = jnp.zeros((*xs.shape[:2], width), jnp.float32)

    def step(state: Any, step_inputs: tuple[jax.Array, jax.Array]) -> tuple[Any, jax.Array]:
        x_t, shift_t = step_inputs
        state, h = cell.apply(variables, state, x_t)
        state = (state[0], state[1] + shift_t) if kind == "lstm" else state + shift_t
        return state, h + shift_t

    carry = cell.initialize_carry(jax.random.PRNGKey(0), xs.shape[1:])
    return jnp.swapaxes(jax.lax.scan(step, carry, (xs, shift))[1], 0, 1)


def shifted_loss(
    model: RecurrentNet, params: Mapping, inputs: jax.Array, loss_fn: LossFn
) -> Callable[[jax.Array], jax.Array]:
    """The loss as a function of `shift` [T, B, H], added to the state leaving each step of the
    last layer (for the LSTM to h, not c) and to its output. At zero it is
    loss_fn(model.apply({"params": params}, inputs, train=False)[0])."""
    _check_supported(model)
    x = _embedded(model, params, inputs)
    last = len(model.hidden_sizes)
    for layer in range(1, last):  # dropout between layers is off at evaluation
        x = _run_layer(model, params, layer, x, None)
    init = {"kernel_init": model.kernel_init, "init_scale": model.init_scale}
    head = dense(model.head_size, name="head", dtype=model.dtype, **init)

    def loss(shift: jax.Array) -> jax.Array:
        states = _run_layer(model, params, last, x, shift)
        outputs = head.apply({"params": params["head"]}, states[:, -1])
        return loss_fn(outputs.astype(jnp.float32))

    return loss


def hidden_state_gradients(
    model: RecurrentNet, params: Mapping, inputs: jax.Array, loss_fn: LossFn
) -> np.ndarray:
    """[T] mean over the batch of ||dL/dh_t||_2, h_t the state leaving step t of the model's
    last recurrent layer and L = loss_fn(model outputs), a scalar. Unidirectional models with
    pooling 'last' and no layer norm only (ConfigError otherwise)."""
    loss = shifted_loss(model, params, inputs, loss_fn)
    batch, time = jnp.shape(inputs)[:2]
    # float32 like the cells' carry, which stays float32 whatever the compute dtype
    shift = jnp.zeros((time, batch, model.hidden_sizes[-1]), jnp.float32)
    grads = np.asarray(jax.jit(jax.grad(loss))(shift))
    return np.linalg.norm(grads, axis=-1).mean(axis=1)


def plot_hidden_gradients(
    norms: Mapping[str, np.ndarray], path: str | Path, title: str = ""
) -> Path:
    """One line per model (label = key) of ||dL/dh_t|| against t on a log axis, saved to `path`
    (parents created); a vanishing gradient is a line falling steeply towards t = 0."""
    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, values in norms.items():
        values = np.asarray(values)
        ax.plot(np.arange(len(values)), values, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$ (batch mean)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = storage.workdir_path(path)
    return figures.save(fig, path, dpi=120, layout=False, bbox_inches="tight")
