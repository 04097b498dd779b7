"""Convolutions as image patches times a matmul (research/models/conv.py) against XLA's."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.errors import ConfigError
from research.models import get_model
from research.models.conv import AUTO_MAX_PIXELS, conv_function

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _conv_and_grads(impl: str, x, kernel_size, strides, padding, features=5):
    """A flax nn.Conv (with bias) under `impl`: its output and gradients for input and params."""
    layer = nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=strides,
        padding=padding,
        conv_general_dilated=conv_function(impl),
    )
    params = layer.init(jax.random.PRNGKey(0), x)
    weights = jax.random.normal(
        jax.random.PRNGKey(1), (x.shape[0],) + layer.apply(params, x).shape[1:]
    )

    def loss(p, inputs):
        y = layer.apply(p, inputs)
        return jnp.sum(y * weights), y

    step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    lowered = str(jax.make_jaxpr(step)(params, x))
    assert ("conv_general_dilated" in lowered) == (impl == "xla")  # im2col really ran
    (_, y), grads = jax.jit(step)(params, x)
    return y, grads


@pytest.mark.parametrize(
    "size, kernel_size, strides, padding",
    [
        (8, 3, 1, "SAME"),
        (7, 3, 2, "SAME"),
        (5, 3, 1, "VALID"),
        (9, 7, 2, ((3, 3), (3, 3))),  # a ResNet stem
        (6, 1, 2, "VALID"),  # a strided 1x1 projection
        (2, 3, 1, ((1, 1), (1, 1))),  # most taps in padding
        (1, 3, 1, "SAME"),  # only the centre tap sees the input
        (4, 3, 1, ((0, 2), (1, 0))),  # asymmetric padding
    ],
)
def test_im2col_equals_xla_in_outputs_and_gradients(size, kernel_size, strides, padding):
    x = jax.random.normal(jax.random.PRNGKey(2), (3, size, size, 4))
    reference = _conv_and_grads("xla", x, kernel_size, strides, padding)
    chex.assert_trees_all_close(
        _conv_and_grads("im2col", x, kernel_size, strides, padding), reference, **TOLERANCE
    )


def _uses_xla_conv(model, x) -> bool:
    """Whether the model's forward pass (nested jaxprs included) has an XLA convolution."""
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    return "conv_general_dilated" in str(
        jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
    )


def test_auto_uses_xla_on_large_maps_and_im2col_on_small_ones_on_cpu():
    assert jax.default_backend() == "cpu"
    model = get_model({"name": "cnn_tiny", "conv": "auto"}, num_classes=3)
    side = int(np.sqrt(AUTO_MAX_PIXELS))
    assert not _uses_xla_conv(model, jnp.ones((2, side, side, 1)))
    assert _uses_xla_conv(model, jnp.ones((2, 2 * side, 2 * side, 1)))
    xla = get_model({"name": "cnn_tiny", "conv": "xla"}, num_classes=3)
    assert _uses_xla_conv(xla, jnp.ones((2, side, side, 1)))


@pytest.mark.parametrize("name", ["resnet_tiny", "mobilenet_v2_tiny", "vgg_tiny", "cnn_tiny"])
def test_every_backbone_computes_the_same_function_under_each_conv(name):
    """Same parameter tree, same logits and gradients (MobileNet's depthwise convs stay XLA's)."""
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 32, 32, 3))
    results = {}
    for impl in ("xla", "im2col", "auto"):
        model = get_model({"name": name, "conv": impl}, num_classes=4)
        variables = model.init(jax.random.PRNGKey(0), x, train=False)

        def loss(v, model=model):
            logits, _ = model.apply(v, x, train=False)
            return jnp.sum(logits**2), logits

        results[impl] = (variables, jax.jit(jax.value_and_grad(loss, has_aux=True))(variables))
    for impl in ("im2col", "auto"):
        chex.assert_trees_all_equal(results[impl][0], results["xla"][0])  # same init, same tree
        chex.assert_trees_all_close(results[impl][1], results["xla"][1], rtol=1e-4, atol=1e-5)


def test_an_unknown_conv_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model.conv 'winograd'; known: auto, xla"):
        get_model({"name": "resnet_tiny", "conv": "winograd"}, num_classes=2)
