"""Model contract: (outputs, aux), shapes, parameter names that carry depth, initialisers."""

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.errors import ConfigError
from research.models import MODELS, get_model
from research.models.layers import ACTIVATIONS


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


# Full-size backbones are checked shape-only in test_backbones.py (eager init is slow on CPU).
# Classifiers only: autoencoders and VAEs (no head) are covered by test_autoencoders.py.
SMALL = sorted(
    n
    for n, (cls, _) in MODELS.items()
    if (n in ("mlp", "cnn") or n.endswith("_tiny")) and "num_classes" in cls.__dataclass_fields__
)


@pytest.mark.parametrize("name", SMALL)
def test_every_small_registered_model_builds(name):
    size = 32 if name.startswith(("vgg", "resnet", "mobilenet")) else 8
    model, variables = _init(name, (2, size, size, 1))
    logits, aux = model.apply(variables, jnp.ones((2, size, size, 1)), train=False)
    assert logits.shape == (2, 10) and "pre_logits" in aux


def test_unknown_model_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model.name 'resnet9000'"):
        get_model({"name": "resnet9000"}, num_classes=10)
    with pytest.raises(ConfigError, match="model.widht"):
        get_model({"name": "mlp", "widht": 3}, num_classes=10)


# --- initialisers, activations and the 1-logit head -------------------------------------------

FAN_IN, WIDTH = 256, 512  # a large layer: empirical statistics within ~1% of the formulas


def _mlp_kernels(kernel_init: str, **overrides) -> dict[str, jnp.ndarray]:
    """Kernels and biases of a wide MLP (FAN_IN -> WIDTH -> 64) built with `kernel_init`."""
    model = get_model(
        {"name": "mlp", "hidden_sizes": (WIDTH,), "kernel_init": kernel_init, **overrides},
        num_classes=64,
    )
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, FAN_IN)), train=False)
    return flax.traverse_util.flatten_dict(variables["params"], sep="/")


def _check_every_bias_is_zero(params: dict) -> None:
    biases = [v for k, v in params.items() if k.endswith("bias")]
    assert biases and all(not jnp.any(b) for b in biases)


def test_normal_init_has_init_scale_std():
    params = _mlp_kernels("normal", init_scale=0.05)
    for name in ("layer1/kernel", "head/kernel"):
        assert float(jnp.std(params[name])) == pytest.approx(0.05, rel=0.03)
        assert abs(float(jnp.mean(params[name]))) < 0.003
    _check_every_bias_is_zero(params)


def test_glorot_init_is_uniform_within_its_bound():
    params = _mlp_kernels("glorot")
    for name, (fan_in, fan_out) in {
        "layer1/kernel": (FAN_IN, WIDTH),
        "head/kernel": (WIDTH, 64),
    }.items():
        bound = np.sqrt(6 / (fan_in + fan_out))
        kernel = np.asarray(params[name])
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.03)  # uniform's std
    _check_every_bias_is_zero(params)


@pytest.mark.parametrize("scheme, gain", [("he", 2.0), ("lecun", 1.0)])
def test_fan_in_normal_inits_have_the_formula_std(scheme, gain):
    params = _mlp_kernels(scheme, init_scale=123.0)  # init_scale only scales "normal"
    for name, fan_in in {"layer1/kernel": FAN_IN, "head/kernel": WIDTH}.items():
        assert float(jnp.std(params[name])) == pytest.approx(np.sqrt(gain / fan_in), rel=0.03)
    _check_every_bias_is_zero(params)


def test_orthogonal_init_has_orthonormal_columns_or_rows():
    params = _mlp_kernels("orthogonal")
    tall = np.asarray(params["head/kernel"], np.float64)  # 512 x 64: orthonormal columns
    np.testing.assert_allclose(tall.T @ tall, np.eye(64), atol=1e-5)
    wide = np.asarray(params["layer1/kernel"], np.float64)  # 256 x 512: orthonormal rows
    np.testing.assert_allclose(wide @ wide.T, np.eye(FAN_IN), atol=1e-5)


def test_cnn_kernel_init_reaches_convs_and_dense_layers():
    model = get_model(
        {"name": "cnn", "kernel_init": "he", "stage_features": (8, 64), "dense_features": 512},
        num_classes=10,
    )
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    # fan_in of a conv kernel is its receptive field times input channels.
    conv = params["stage2/block2/conv/kernel"]  # 3 x 3 x 64 x 64
    assert float(jnp.std(conv)) == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.03)
    fc = params["fc/kernel"]  # (2 * 2 * 64) x 512
    assert float(jnp.std(fc)) == pytest.approx(np.sqrt(2 / 256), rel=0.03)
    _check_every_bias_is_zero(params)
    ortho = get_model({"name": "cnn_tiny", "kernel_init": "orthogonal"}, num_classes=10)
    variables = ortho.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    kernel = np.asarray(variables["params"]["stage1"]["block2"]["conv"]["kernel"], np.float64)
    columns = kernel.reshape(-1, kernel.shape[-1])  # (3 * 3 * 4) x 4
    np.testing.assert_allclose(columns.T @ columns, np.eye(4), atol=1e-5)


class _FlaxDefaultMLP(nn.Module):
    """mlp_tiny written with flax's default Dense initialisers, as the MLP was before."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="layer1")(x.reshape((x.shape[0], -1))))
        return nn.Dense(10, name="head")(x)


def test_default_lecun_init_reproduces_flax_defaults():
    # Existing configs and their measured results must not change with the new option.
    _, ours = _init("mlp_tiny", (1, 8, 8, 1))
    reference = _FlaxDefaultMLP().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    chex.assert_trees_all_equal(ours["params"], reference["params"])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_mlp_activation(name):
    reference = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}
    reference["gelu"] = jax.nn.gelu
    model, variables = _init("mlp_tiny", (3, 8, 8, 1), activation=name)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
    _, aux = model.apply(variables, x, train=False)
    layer = variables["params"]["layer1"]
    want = reference[name](x.reshape(3, -1) @ layer["kernel"] + layer["bias"])
    np.testing.assert_allclose(aux["layer1"], want, rtol=1e-5, atol=1e-6)


def test_one_output_head_for_binary_tasks():
    model = get_model({"name": "mlp", "hidden_sizes": (2,), "activation": "tanh"}, num_classes=1)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((4, 2)), train=False)
    logits, aux = model.apply(variables, jnp.ones((4, 2)), train=False)
    assert logits.shape == (4, 1) and aux["pre_logits"].shape == (4, 2)
    assert variables["params"]["head"]["kernel"].shape == (2, 1)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_unknown_initializer_or_activation_is_config_error(name):
    with pytest.raises(ConfigError, match=r"model.kernel_init 'xavier'.*glorot"):
        get_model({"name": name, "kernel_init": "xavier"}, num_classes=10)
    with pytest.raises(ConfigError, match="model.init_scale"):
        get_model({"name": name, "kernel_init": "normal", "init_scale": 0.0}, num_classes=10)
    with pytest.raises(ConfigError, match=r"model.activation 'swish'.*gelu"):
        get_model({"name": "mlp", "activation": "swish"}, num_classes=10)
