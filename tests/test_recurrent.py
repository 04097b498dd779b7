"""Recurrent cells and models: the material's equations, scan vs loop, flax's cells, bidirectional
and padded runs, variational dropout, attention weights, training and vanishing gradients."""

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.errors import ConfigError, DataError
from research.models import MODELS, get_model
from research.models.recurrent import CELLS, RecurrentNet, make_cell

KINDS = tuple(CELLS)


@functools.cache
def _jitted_apply(module: nn.Module):
    return jax.jit(module.apply, static_argnames=("train",))


def _apply(module: nn.Module, variables, *args, **kwargs):
    """module.apply under jit, compiled once per module and shapes, not op by op (fast tests)."""
    return _jitted_apply(module)(variables, *args, **kwargs)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _gate(p: dict, k: int, n: int, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The material's W_k . [h_{t-1}, x_t] + b_k for gate k of n, from the fused parameters."""
    blocks = lambda w: np.split(np.asarray(w, np.float64), n, axis=-1)[k]  # noqa: E731
    w = np.concatenate([blocks(p["recurrent_kernel"]), blocks(p["input_kernel"])], axis=0)
    return np.concatenate([h, x], axis=-1) @ w + blocks(p["bias"])


def _reference(kind: str, p: dict, xs: np.ndarray, carry) -> np.ndarray:
    """Step-by-step NumPy run of the cell equations; returns the hidden states (B, T, H)."""
    xs = np.asarray(xs, np.float64)
    if kind == "lstm":
        c, h = (np.asarray(a, np.float64) for a in carry)
    else:
        h = np.asarray(carry, np.float64)
    out = []
    for t in range(xs.shape[1]):
        x = xs[:, t]
        if kind == "rnn":  # h_t = tanh(W_x x_t + W_h h_{t-1} + b)
            h = np.tanh(_gate(p, 0, 1, x, h))
        elif kind == "lstm":
            i, f = _sigmoid(_gate(p, 0, 4, x, h)), _sigmoid(_gate(p, 1, 4, x, h))
            c_tilde, o = np.tanh(_gate(p, 2, 4, x, h)), _sigmoid(_gate(p, 3, 4, x, h))
            c = f * c + i * c_tilde
            h = o * np.tanh(c)
        else:
            zero_h = np.zeros_like(h)
            r, z = _sigmoid(_gate(p, 0, 3, x, h)), _sigmoid(_gate(p, 1, 3, x, h))
            w_hn = np.split(np.asarray(p["recurrent_kernel"], np.float64), 3, axis=-1)[2]
            recurrent = h @ w_hn + np.asarray(p["recurrent_bias"], np.float64)
            n = np.tanh(_gate(p, 2, 3, x, zero_h) + r * recurrent)
            h = (1.0 - z) * n + z * h
        out.append(h)
    return np.stack(out, axis=1)


def _random_params(params, seed: int, scale: float = 0.5):
    """Every parameter redrawn from N(0, scale^2), so no zero bias hides a mistake."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [scale * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(tree, new)


def _cell_setup(kind: str, batch: int = 3, time: int = 6, features: int = 4, hidden: int = 5):
    cell = make_cell(kind, hidden)
    xs = jax.random.normal(jax.random.PRNGKey(1), (batch, time, features))
    carry = jax.tree.map(
        lambda a: 0.5 * jax.random.normal(jax.random.PRNGKey(2), a.shape),
        cell.initialize_carry(jax.random.PRNGKey(0), (batch, features)),
    )
    params = _random_params(
        jax.jit(cell.init)(jax.random.PRNGKey(3), carry, xs[:, 0])["params"], seed=4
    )
    return cell, params, xs, carry


@pytest.mark.parametrize("kind", KINDS)
def test_cell_scan_matches_numpy_equations_and_python_loop(kind):
    cell, params, xs, carry = _cell_setup(kind)
    scanned = _apply(nn.RNN(cell), {"params": {"cell": params}}, xs, initial_carry=carry)
    np.testing.assert_allclose(scanned, _reference(kind, params, xs, carry), atol=1e-5)
    looped, state, step = [], carry, jax.jit(cell.apply)
    for t in range(xs.shape[1]):
        state, y = step({"params": params}, state, xs[:, t])
        looped.append(y)
    np.testing.assert_allclose(scanned, jnp.stack(looped, axis=1), atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cells_match_flax_cells_on_shared_weights(kind):
    cell, params, xs, carry = _cell_setup(kind)
    w_x, w_h, b = (params[k] for k in ("input_kernel", "recurrent_kernel", "bias"))
    if kind == "lstm":
        ref_cell = nn.LSTMCell(5)
        split = lambda a: dict(zip("ifgo", jnp.split(a, 4, axis=-1), strict=True))  # noqa: E731
        wx, wh, bb = split(w_x), split(w_h), split(b)
        ref = {f"i{g}": {"kernel": wx[g]} for g in "ifgo"}
        ref |= {f"h{g}": {"kernel": wh[g], "bias": bb[g]} for g in "ifgo"}
    else:
        ref_cell = nn.GRUCell(5)
        split = lambda a: dict(zip("rzn", jnp.split(a, 3, axis=-1), strict=True))  # noqa: E731
        wx, wh, bb = split(w_x), split(w_h), split(b)
        ref = {f"i{g}": {"kernel": wx[g], "bias": bb[g]} for g in "rzn"}
        ref |= {"hr": {"kernel": wh["r"]}, "hz": {"kernel": wh["z"]}}
        ref["hn"] = {"kernel": wh["n"], "bias": params["recurrent_bias"]}
    ours = _apply(nn.RNN(cell), {"params": {"cell": params}}, xs, initial_carry=carry)
    theirs = _apply(nn.RNN(ref_cell), {"params": {"cell": ref}}, xs, initial_carry=carry)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_initialisation_orthogonal_recurrent_glorot_input_and_forget_bias(kind):
    features, hidden = 6, 8
    cell = make_cell(kind, hidden, forget_bias=1.5)
    carry = cell.initialize_carry(jax.random.PRNGKey(0), (2, features))
    p = jax.jit(cell.init)(jax.random.PRNGKey(1), carry, jnp.zeros((2, features)))["params"]
    gates = CELLS[kind].num_gates
    for block in jnp.split(p["recurrent_kernel"], gates, axis=-1):
        np.testing.assert_allclose(block.T @ block, np.eye(hidden), atol=1e-5)
    assert float(jnp.max(jnp.abs(p["input_kernel"]))) <= np.sqrt(6 / (features + hidden))
    expected_bias = np.zeros(gates * hidden)
    if kind == "lstm":
        expected_bias[hidden : 2 * hidden] = 1.5
    np.testing.assert_array_equal(p["bias"], expected_bias)


def _shapes(model: RecurrentNet, x: jax.Array):
    """The model's variables as shapes and dtypes: traced, not compiled (tests that redraw every
    parameter need no real initialisation)."""
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)


def test_bidirectional_is_forward_plus_reversed_backward_on_reversed_inputs():
    model = RecurrentNet(num_classes=2, cell="lstm", hidden_sizes=(5,), bidirectional=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 7, 4))
    params = _random_params(_shapes(model, x)["params"], seed=2)
    _, aux = _apply(model, {"params": params}, x, train=False)
    run = lambda name, inputs: _apply(  # noqa: E731
        nn.RNN(make_cell("lstm", 5)), {"params": params["layer1"][name]}, inputs
    )
    forward = run("forward", x)
    backward = jnp.flip(run("backward", jnp.flip(x, axis=1)), axis=1)
    np.testing.assert_allclose(aux["states"], jnp.concatenate([forward, backward], -1), atol=1e-6)
    # "last" pooling: the forward state at the end, the backward state after reading step 0.
    np.testing.assert_allclose(
        aux["pre_logits"], jnp.concatenate([forward[:, -1], backward[:, 0]], -1), atol=1e-6
    )


def test_padded_steps_are_inert_and_attention_ignores_them():
    model = RecurrentNet(
        num_classes=3,
        cell=("lstm", "gru"),
        hidden_sizes=(5, 4),
        bidirectional=True,
        pooling="attention",
        layer_norm=True,
    )
    lengths = np.array([7, 3])
    x = np.array(jax.random.normal(jax.random.PRNGKey(1), (2, 7, 2)))
    x[1, 3:] = 1e3  # garbage padding must not leak in
    params = _random_params(_shapes(model, x)["params"], seed=5)
    logits, aux = _apply(model, {"params": params}, x, train=False, seq_lengths=lengths)
    for row, n in enumerate(lengths):
        alone, alone_aux = _apply(model, {"params": params}, x[row : row + 1, :n], train=False)
        np.testing.assert_allclose(logits[row], alone[0], atol=1e-5)
        np.testing.assert_allclose(aux["states"][row, :n], alone_aux["states"][0], atol=1e-5)
        np.testing.assert_array_equal(aux["states"][row, n:], 0.0)
    real = np.arange(7)[None, :] < lengths[:, None]
    weights = np.asarray(aux["attention"])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(weights[~real] == 0.0) and np.all(weights[real] > 0.0)
    pooled = np.einsum("bt,btf->bf", weights, aux["states"])
    np.testing.assert_allclose(aux["pre_logits"], pooled, atol=1e-6)


def test_last_pooling_takes_each_sequences_last_real_step_and_a_mask_equals_lengths():
    # Forward half at the last real step, backward half at step 0 (where the backward run ends).
    model = RecurrentNet(num_classes=2, cell="lstm", hidden_sizes=(3,), bidirectional=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 2))
    lengths = np.array([5, 2, 1])
    params = {"params": _random_params(_shapes(model, x)["params"], seed=1)}
    _, aux = _apply(model, params, x, train=False, seq_lengths=lengths)
    states = np.asarray(aux["states"])
    for row, n in enumerate(lengths):
        expected = np.concatenate([states[row, n - 1, :3], states[row, 0, 3:]])
        np.testing.assert_array_equal(aux["pre_logits"][row], expected)
    by_mask = _apply(model, params, x, train=False, mask=np.arange(5) < lengths[:, None])
    chex.assert_trees_all_equal(by_mask[1], aux)


def test_recurrent_dropout_uses_one_mask_for_every_step_and_is_off_in_eval():
    # Identity kernels and a constant input c: h_t = tanh(c + m * h_{t-1} / (1 - p)), so a unit
    # whose recurrent input is dropped at step t reads exactly tanh(c), a kept one more.
    hidden, time, c = 16, 6, 0.5
    model = RecurrentNet(num_classes=1, cell="rnn", hidden_sizes=(hidden,), recurrent_dropout=0.5)
    x = jnp.full((8, time, hidden), c)
    params = flax.core.unfreeze(_random_params(_shapes(model, x)["params"], seed=0))
    cell = params["layer1"]["forward"]["cell"]
    cell["input_kernel"], cell["recurrent_kernel"] = jnp.eye(hidden), jnp.eye(hidden)
    cell["bias"] = jnp.zeros(hidden)

    def dropped(train: bool, seed: int) -> np.ndarray:
        _, aux = _apply(
            model, {"params": params}, x, train=train, rngs={"dropout": jax.random.PRNGKey(seed)}
        )
        return np.isclose(np.asarray(aux["states"])[:, 1:], np.tanh(c), rtol=0, atol=1e-7)

    masks = dropped(True, seed=0)  # (batch, time - 1, hidden)
    assert np.all(masks == masks[:, :1]), "the mask changed between time steps"
    assert 0.3 < masks.mean() < 0.7
    assert np.any(masks != dropped(True, seed=1)), "the mask does not depend on the rng"
    assert not dropped(False, seed=0).any()


def _train(model: RecurrentNet, x, y, loss_fn, params, steps: int = 25) -> list[float]:
    """Losses of `steps` Adam steps on one batch from `params`."""
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    def loss(p, key):
        out, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
        return loss_fn(out, y)

    @jax.jit
    def step(p, s, key):
        value, grads = jax.value_and_grad(loss)(p, key)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    losses = []
    for i in range(steps):
        params, opt_state, value = step(params, opt_state, jax.random.PRNGKey(i))
        losses.append(float(value))
    return losses


TRAINED = {
    "rnn_tiny": {},
    "lstm_tiny": {},
    "gru_tiny": {},
}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_tiny_models_fit_a_fixed_batch(name):
    model = get_model({"name": name, **TRAINED[name]}, num_classes=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 10, 2))
    y = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 3)
    xent = lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()  # noqa: E731
    # Redrawn parameters (small normal) spare compiling an initialisation; the initialisers are
    # checked cell by cell above and every registered model is initialised in test_models.py.
    params = _random_params(_shapes(model, x)["params"], seed=0, scale=0.3)
    losses = _train(model, x, y, xent, params)
    assert losses[-1] < 0.7 * losses[0], losses


def test_hybrid_bidirectional_attention_regressor_takes_num_outputs_and_fits():
    options = {
        "cell": ("lstm", "gru"),
        "hidden_sizes": (8, 8),
        "bidirectional": True,
        "pooling": "attention",
        "layer_norm": True,
        "recurrent_dropout": 0.1,
        "num_outputs": 3,
    }
    model = get_model({"name": "lstm", **options}, num_classes=0)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 12))  # a univariate series per row
    y = x[:, -3:]  # "forecast" the window's own last values: learnable from the states
    shapes = _shapes(model, x)["params"]
    assert shapes["head"]["kernel"].shape == (16, 3)
    params = _random_params(shapes, seed=0, scale=0.3)
    losses = _train(model, x, y, lambda out, y: jnp.mean((out - y) ** 2), params)
    assert losses[-1] < 0.5 * losses[0], losses


def _grad_norms(kind: str, time: int = 100, batch: int = 8, hidden: int = 32) -> np.ndarray:
    """||dL/dh_t|| for every t, L a random readout of the last state, at initialisation."""
    cell = make_cell(kind, hidden, forget_bias=1.0)
    xs = jax.random.normal(jax.random.PRNGKey(0), (time, batch, 4))
    carry = cell.initialize_carry(jax.random.PRNGKey(0), (batch, 4))
    params = jax.jit(cell.init)(jax.random.PRNGKey(1), carry, xs[0])
    readout = jax.random.normal(jax.random.PRNGKey(2), (hidden,))

    def loss(shifts):  # dL/dshift_t = dL/dh_t, h_t being the state that leaves step t
        def step(state, inputs):
            x, shift = inputs
            state, h = cell.apply(params, state, x)
            state = (state[0], state[1] + shift) if kind == "lstm" else state + shift
            return state, h + shift

        _, hs = jax.lax.scan(step, carry, (xs, shifts))
        return jnp.sum(hs[-1] @ readout)

    grads = jax.jit(jax.grad(loss))(jnp.zeros((time, batch, hidden)))
    return np.linalg.norm(np.asarray(grads).reshape(time, -1), axis=1)


def test_gradients_vanish_far_faster_through_a_tanh_rnn_than_an_lstm():
    rnn, lstm = _grad_norms("rnn"), _grad_norms("lstm")
    rnn_decay, lstm_decay = rnn[0] / rnn[-1], lstm[0] / lstm[-1]  # 99 steps back vs the end
    assert rnn_decay < 1e-3 * lstm_decay, (rnn_decay, lstm_decay)
    assert rnn_decay < 1e-8


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unrolled_scans_and_the_final_carry_path_give_the_same_outputs_and_gradients(kind):
    """unroll=4 over 7 steps (a remainder) against unroll=1, and "last" pooling without lengths
    (the final carry, after layer norm and dropout) against full lengths (a gather of states)."""
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 7, 2))
    options = {"cell": kind, "hidden_sizes": (4, 3), "layer_norm": True, "dropout_rate": 0.3}
    models = {u: RecurrentNet(num_classes=2, unroll=u, **options) for u in (1, 4)}
    params = {"params": _random_params(_shapes(models[1], x)["params"], seed=2)}
    rngs = {"dropout": jax.random.PRNGKey(3)}

    def outputs_and_grads(model, **lengths):
        def loss(p):
            logits, aux = model.apply(p, x, train=True, rngs=rngs, **lengths)
            return jnp.sum(logits**2), aux["pre_logits"]

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    reference = outputs_and_grads(models[1], seq_lengths=np.full(3, 7))
    for model in models.values():
        chex.assert_trees_all_close(outputs_and_grads(model), reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="model.unroll must be a positive integer, got 0"):
        get_model({"name": kind, "unroll": 0}, num_classes=2)


def test_registry_names_options_and_errors():
    for cell in KINDS:
        assert MODELS[cell][1] == {"cell": cell} and MODELS[f"{cell}_tiny"][0] is RecurrentNet
    model = get_model(
        {"name": "lstm", "cell": ("lstm", "gru"), "hidden_sizes": (4, 3)}, num_classes=5
    )
    variables = _shapes(model, jnp.zeros((2, 5, 3)))
    paths = {"/".join(k) for k in flax.traverse_util.flatten_dict(variables["params"])}
    assert {"layer1/forward/cell/recurrent_kernel", "layer2/forward/cell/recurrent_bias"} < paths
    assert variables["params"]["head"]["kernel"].shape == (3, 5)
    with pytest.raises(ConfigError, match="model.cell 'transformer'"):
        get_model({"name": "rnn", "cell": "transformer"}, num_classes=2)
    with pytest.raises(ConfigError, match="model.cell names 2 cells for 1 layers"):
        get_model({"name": "rnn", "cell": ("lstm", "gru")}, num_classes=2)
    with pytest.raises(ConfigError, match="model.pooling"):
        get_model({"name": "rnn", "pooling": "max"}, num_classes=2)
    with pytest.raises(ConfigError, match="model.recurrent_dropout"):
        get_model({"name": "rnn", "recurrent_dropout": 1.0}, num_classes=2)
    with pytest.raises(ConfigError, match="model.num_outputs"):
        get_model({"name": "rnn"}, num_classes=0)
    with pytest.raises(DataError, match="not both"):
        apply = functools.partial(model.apply, train=False, seq_lengths=[5, 5], mask=True)
        jax.eval_shape(apply, variables, jnp.zeros((2, 5, 3)))


def test_bfloat16_compute_keeps_float32_params_carry_and_outputs():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3))
    f32 = get_model({"name": "lstm_tiny", "pooling": "attention"}, num_classes=4)
    bf16 = get_model(
        {"name": "lstm_tiny", "pooling": "attention", "dtype": "bfloat16"}, num_classes=4
    )
    shapes = _shapes(bf16, x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes))
    variables = {"params": _random_params(shapes["params"], seed=3, scale=0.3)}
    low, aux = _apply(bf16, variables, x, train=False)
    high, _ = _apply(f32, variables, x, train=False)
    assert low.dtype == jnp.float32 and aux["states"].dtype == jnp.float32  # the carry's
    np.testing.assert_allclose(low, high, atol=0.05)
