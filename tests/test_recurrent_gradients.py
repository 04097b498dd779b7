"""Hidden-state gradients dL/dh_t of recurrent models against float64 finite differences through
a Python-loop unroll, the loss they see against the model's, vanishing through a tanh RNN, the
plot, and the step-time benchmark's table."""

import functools
import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.analysis.recurrent_gradients import (
    hidden_state_gradients,
    plot_hidden_gradients,
    shifted_loss,
)
from research.errors import ConfigError
from research.models.recurrent import RecurrentNet, make_cell

BENCH = Path(__file__).resolve().parents[1] / "launch" / "bench_recurrent.py"
TIME, BATCH, FEATURES, OUTPUTS = 6, 2, 4, 2
SETUPS = [(cell, sizes) for cell in ("rnn", "lstm", "gru") for sizes in ((3,), (4, 3))]


@functools.cache
def _setup(cell: str, sizes: tuple[int, ...]):
    """A tiny model with every parameter redrawn (no zero bias hides a mistake), inputs, and an
    MSE loss on fixed targets; NumPy draws, so nothing is compiled but the model."""
    model = RecurrentNet(cell=cell, hidden_sizes=sizes, num_outputs=OUTPUTS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, TIME, FEATURES)).astype(np.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda a: 0.6 * rng.normal(size=a.shape).astype(np.float32), shapes)
    targets = rng.normal(size=(BATCH, OUTPUTS)).astype(np.float32)
    return model, params["params"], x, lambda outputs: jnp.mean((outputs - targets) ** 2)


def _unrolled_outputs(model, params, x, perturb):
    """The model's outputs by a Python loop over steps, float64 state throughout; perturb[t]
    [B, H] is added to the last layer's state leaving step t (to h, not c, in an LSTM)."""
    last = len(model.hidden_sizes)
    layers = zip(model.layer_cells, model.hidden_sizes, strict=True)
    for layer, (kind, width) in enumerate(layers, start=1):
        cell = make_cell(kind, width, dtype=jnp.float64)
        variables = {"params": params[f"layer{layer}"]["forward"]["cell"]}
        h = jnp.zeros((x.shape[0], width))
        c = h
        outputs = []
        for t in range(x.shape[1]):
            carry, h = cell.apply(variables, (c, h) if kind == "lstm" else h, x[:, t])
            c = carry[0] if kind == "lstm" else None
            h = h + perturb[t] if layer == last else h
            outputs.append(h)
        x = jnp.stack(outputs, axis=1)
    return x[:, -1] @ params["head"]["kernel"] + params["head"]["bias"]


def _finite_difference_norms(model, params, x, loss_fn, eps: float = 1e-6) -> np.ndarray:
    """mean_b ||dL/dh_t|| by central differences along every (t, b, unit) of the last layer."""
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64 = jnp.asarray(x, jnp.float64)
        shape = (x.shape[1], x.shape[0], model.hidden_sizes[-1])
        loss = lambda d: loss_fn(_unrolled_outputs(model, params64, x64, d))  # noqa: E731
        directions = eps * jnp.eye(int(np.prod(shape))).reshape(-1, *shape)
        diffs = jax.jit(jax.vmap(lambda d: loss(d) - loss(-d)))(directions)
        grads = np.asarray(diffs / (2 * eps)).reshape(shape)
        model_outputs = model.apply({"params": params}, x, train=False)[0]
        np.testing.assert_allclose(  # the unroll is the model
            _unrolled_outputs(model, params64, x64, jnp.zeros(shape)), model_outputs, atol=1e-5
        )
    return np.linalg.norm(grads, axis=-1).mean(axis=1)


@pytest.mark.parametrize(("cell", "sizes"), SETUPS)
def test_gradients_match_finite_differences_through_a_python_unroll(cell, sizes):
    model, params, x, loss_fn = _setup(cell, sizes)
    expected = _finite_difference_norms(model, params, x, loss_fn)
    with jax.default_matmul_precision("highest"):
        norms = hidden_state_gradients(model, params, x, loss_fn)
    assert norms.shape == (TIME,)
    np.testing.assert_allclose(norms, expected, rtol=1e-4)


@pytest.mark.parametrize(("cell", "sizes"), SETUPS)
def test_loss_at_zero_shift_is_the_models_loss(cell, sizes):
    model, params, x, loss_fn = _setup(cell, sizes)
    expected = loss_fn(model.apply({"params": params}, x, train=False)[0])
    shift = jnp.zeros((TIME, BATCH, sizes[-1]))
    np.testing.assert_allclose(shifted_loss(model, params, x, loss_fn)(shift), expected, rtol=1e-6)


@pytest.mark.skipif(
    not hasattr(RecurrentNet, "vocab_size"), reason="RecurrentNet has no token embedding"
)
def test_token_inputs_go_through_the_models_embedding():
    model = RecurrentNet(cell="lstm", hidden_sizes=(3,), num_outputs=1, vocab_size=7, embed_dim=5)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 7, size=(BATCH, TIME)))
    params = model.init(jax.random.PRNGKey(0), tokens, train=False)["params"]
    loss_fn = lambda outputs: jnp.sum(outputs**2)  # noqa: E731
    expected = loss_fn(model.apply({"params": params}, tokens, train=False)[0])
    shift = jnp.zeros((TIME, BATCH, 3))
    np.testing.assert_allclose(shifted_loss(model, params, tokens, loss_fn)(shift), expected)
    assert hidden_state_gradients(model, params, tokens, loss_fn).shape == (TIME,)


def _decay(cell: str, time: int = 100) -> float:
    """||dL/dh_0|| / ||dL/dh_{T-1}|| at initialisation on random inputs."""
    model = RecurrentNet(cell=cell, hidden_sizes=(32,), num_outputs=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, time, 4))
    # op by op (cheaper than compiling init); the parameters do not depend on T
    params = model.init(jax.random.PRNGKey(1), x[:, :1], train=False)
    norms = hidden_state_gradients(model, params["params"], x, lambda y: jnp.mean(y**2))
    return float(norms[0] / norms[-1])


def test_gradients_vanish_through_a_tanh_rnn_not_an_lstm():
    rnn, lstm = _decay("rnn"), _decay("lstm")
    assert rnn < 1e-3 * lstm, (rnn, lstm)
    assert rnn < 1e-8


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"bidirectional": True}, "bidirectional=False"),
        ({"pooling": "attention"}, "pooling='last'"),
        ({"layer_norm": True}, "layer_norm=False"),
    ],
)
def test_unsupported_models_are_config_errors(option, message):
    model = RecurrentNet(cell="gru", hidden_sizes=(3,), num_outputs=1, **option)
    x = jnp.zeros((2, 5, 1))
    params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
    with pytest.raises(ConfigError, match=re.escape(message)):
        hidden_state_gradients(model, params["params"], x, jnp.sum)


def test_plot_writes_a_png(tmp_path):
    norms = {"rnn": np.logspace(-12, 0, 50), "lstm": np.logspace(-3, 0, 50)}
    path = plot_hidden_gradients(norms, tmp_path / "plots" / "grads.png", title="at init")
    assert path == tmp_path / "plots" / "grads.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def _bench_module():
    """launch/bench_recurrent.py loaded in-process (launch/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_recurrent", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_table_has_one_row_per_cell_and_a_column_per_length(tmp_path, capsys):
    bench_recurrent = _bench_module()
    out = tmp_path / "bench" / "table.md"
    argv = ["--lengths=4,8", "--repeats=1", "--hidden=4", "--batch_size=2", "--cells=gru"]
    assert bench_recurrent.main([*argv, f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in printed.splitlines()]
    assert rows[0] == ["cell", "T=4 ms/step", "T=8", "ms per 100 steps of T at T=8 / at T=4"]
    assert rows[2][0] == "gru" and len(rows[2]) == 4
    ms4, ms8, ratio = (float(v) for v in rows[2][1:])
    assert ms4 > 0 and ms8 > 0
    # The ratio is printed to 3 decimals (from the unrounded times): within half a unit of
    # the last place, beside the times' own rounding to 4 significant digits.
    assert ratio == pytest.approx((ms8 / 8) / (ms4 / 4), rel=2e-3, abs=5.1e-4)
    assert any(line.startswith("device: ") and "hidden 4" in line for line in printed.splitlines())
    assert bench_recurrent.main(["--cells=gru,transformer"]) == 2
