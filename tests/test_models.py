"""Model contract: (outputs, aux), shapes, and parameter names that carry depth."""

import flax
import jax
import jax.numpy as jnp
import pytest

from research.errors import ConfigError
from research.models import MODELS, get_model


def _init(name: str, shape: tuple[int, ...], **overrides):
    model = get_model({"name": name, **overrides}, num_classes=10)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)
    return model, variables


def _paths(tree) -> list[str]:
    return ["/".join(k) for k in flax.traverse_util.flatten_dict(tree)]


def test_mlp_tiny_shapes_and_names():
    model, variables = _init("mlp_tiny", (3, 8, 8, 1))
    logits, aux = model.apply(variables, jnp.ones((3, 8, 8, 1)), train=False)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert aux["pre_logits"].shape == (3, 16)
    assert sorted(_paths(variables["params"])) == [
        "head/bias",
        "head/kernel",
        "layer1/bias",
        "layer1/kernel",
    ]


def test_cnn_tiny_shapes_and_depth_names():
    model, variables = _init("cnn_tiny", (2, 8, 8, 1), batch_norm=True)
    logits, aux = model.apply(variables, jnp.ones((2, 8, 8, 1)), train=False)
    assert logits.shape == (2, 10)
    assert aux["stage1"].shape == (2, 4, 4, 4) and aux["stage2"].shape == (2, 2, 2, 8)
    assert aux["pre_logits"].shape == (2, 16)
    paths = _paths(variables["params"])
    assert "stage1/block1/conv/kernel" in paths and "stage2/block2/bn/scale" in paths
    # No conv bias in front of BatchNorm: it would be cancelled by the mean subtraction.
    assert not any(p.endswith("conv/bias") for p in paths)
    assert _paths(variables["batch_stats"])[0] == "stage1/block1/bn/mean"


def test_cnn_baseline_is_four_conv_layers():
    _, variables = _init("cnn", (1, 8, 8, 1))
    convs = [p for p in _paths(variables["params"]) if p.endswith("conv/kernel")]
    assert len(convs) == 4


def test_dropout_active_only_in_training():
    model, variables = _init("cnn_tiny", (4, 8, 8, 1))
    x = jnp.ones((4, 8, 8, 1))
    eval_a, _ = model.apply(variables, x, train=False)
    eval_b, _ = model.apply(variables, x, train=False)
    train_out, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert jnp.array_equal(eval_a, eval_b)
    assert not jnp.allclose(eval_a, train_out)


def test_bfloat16_compute_keeps_float32_params():
    model, variables = _init("cnn_tiny", (2, 8, 8, 1), dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
    logits, aux = model.apply(variables, jnp.ones((2, 8, 8, 1)), train=False)
    assert aux["stage1"].dtype == jnp.bfloat16 and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_builds(name):
    model, variables = _init(name, (2, 8, 8, 1))
    logits, aux = model.apply(variables, jnp.ones((2, 8, 8, 1)), train=False)
    assert logits.shape == (2, 10) and "pre_logits" in aux


def test_unknown_model_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model.name 'resnet9000'"):
        get_model({"name": "resnet9000"}, num_classes=10)
    with pytest.raises(ConfigError, match="model.widht"):
        get_model({"name": "mlp", "widht": 3}, num_classes=10)
