"""FLOPs counted from the jaxpr (research/flops.py) against hand counts and XLA's count."""

import jax
import jax.numpy as jnp
import pytest

from research import flops
from research.models.cnn import CNN
from research.models.mlp import MLP
from research.models.recurrent import RecurrentNet

B = 8


def _forward_flops(model, x) -> float:
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    return flops.count(lambda v, x: model.apply(v, x, train=False)[0], variables, x)


def test_primitives_are_counted_exactly():
    a, b = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 11))
    batched = lambda a, b: jax.lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,))))  # noqa: E731
    assert flops.count(batched, a, b) == 2 * 3 * 5 * 11 * 7
    x, k = jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 4, 6))
    conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert flops.count(conv, x, k) == 2 * (2 * 7 * 7 * 6) * (3 * 3 * 4)
    grouped = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
    )
    assert flops.count(grouped, x, jnp.ones((3, 3, 2, 6))) == 2 * (2 * 7 * 7 * 6) * (3 * 3 * 2)
    assert flops.count(lambda v: jnp.sum(v * v + 1.0), jnp.ones(10)) == 10 + 10 + 10


def test_a_scan_body_counts_once_per_step_and_a_cond_as_its_dearest_branch():
    w = jnp.ones((16, 16))

    def recurrence(h0, length):
        return jax.lax.scan(lambda h, _: (h @ w, None), h0, None, length=length)[0]

    per_step = flops.count(lambda h: h @ w, jnp.ones((4, 16)))
    assert flops.count(lambda h: recurrence(h, 30), jnp.ones((4, 16))) == 30 * per_step
    branches = lambda p, h: jax.lax.cond(p, lambda h: h @ w @ w, lambda h: h @ w, h)  # noqa: E731
    assert flops.count(branches, True, jnp.ones((4, 16))) == 2 * per_step


def test_mlp_forward_against_a_hand_count():
    sizes = (64, 256, 128, 10)
    matmuls = sum(2 * B * m * n for m, n in zip(sizes, sizes[1:], strict=False))
    bias_and_relu = B * (sum(sizes[1:]) + sum(sizes[1:-1]))
    counted = _forward_flops(MLP(num_classes=10, hidden_sizes=(256, 128)), jnp.ones((B, 8, 8, 1)))
    assert counted == matmuls + bias_and_relu


def test_cnn_forward_against_a_hand_count_of_its_convolutions_and_dense_layers():
    model = CNN(num_classes=10, stage_features=(8, 16), blocks_per_stage=2, dense_features=32)
    # 8x8x1 -> two 3x3 convs to 8 channels at 8x8 -> pool -> two to 16 at 4x4 -> pool -> 2x2x16.
    convs = 2 * 8 * 8 * 9 * (1 * 8 + 8 * 8) + 2 * 4 * 4 * 9 * (8 * 16 + 16 * 16)
    dense = 2 * (64 * 32 + 32 * 10)
    counted = _forward_flops(model, jnp.ones((B, 8, 8, 1)))
    # The rest is elementwise (bias, ReLU, max pooling): a few percent here.
    assert B * (convs + dense) <= counted <= 1.06 * B * (convs + dense)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_forward_grows_with_the_length_and_matches_a_hand_count(cell):
    hidden, features = 32, 2
    gates = {"lstm": 4, "gru": 3}[cell]
    model = RecurrentNet(cell=cell, hidden_sizes=(hidden,), num_outputs=1)
    counts = {t: _forward_flops(model, jnp.ones((B, t, features))) for t in (10, 20)}
    ten_steps = counts[20] - counts[10]  # the fixed costs (head) cancel
    matmuls = 2 * B * (features + hidden) * gates * hidden
    assert 10 * matmuls <= ten_steps <= 1.25 * 10 * matmuls  # gates' elementwise: < 25%
    assert counts[20] == pytest.approx(2 * counts[10], rel=0.02)


def test_an_lstm_gradient_is_counted_per_step_where_xla_counts_the_body_once():
    """Backpropagation through time: about 3x the forward's matmuls at every one of T steps."""
    hidden, features, length = 16, 2, 12
    model = RecurrentNet(cell="lstm", hidden_sizes=(hidden,), num_outputs=1, unroll=1)
    x, y = jnp.ones((B, length, features)), jnp.ones((B, 1))
    params = model.init(jax.random.PRNGKey(0), x, train=False)

    def loss(p):
        return jnp.mean((model.apply(p, x, train=False)[0] - y) ** 2)

    grad = jax.jit(jax.grad(loss))
    counted = flops.count(grad, params)
    matmuls = 2 * B * (features + hidden) * 4 * hidden * length
    # forward, and backward products against the inputs and against the weights
    assert 3 * matmuls <= counted <= 3.6 * matmuls
    xla = grad.lower(params).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert xla["flops"] < counted / 4  # the body of each scan counted once
