"""CNN backbones (VGG, ResNet, MobileNetV2): the parameter layout the weight porters rely on,
parameter counts against torchvision/Keras, torch-style adaptive pooling, dtype, BatchNorm,
dropout and the ResNet options. Full-size models are only traced (jax.eval_shape)."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.errors import ConfigError
from research.models import MODELS, get_model
from research.models.layers import adaptive_avg_pool

TINY = ("vgg_tiny", "resnet_tiny", "mobilenet_v2_tiny")

# torchvision's parameter counts (its BatchNorm running statistics are buffers, not parameters).
TORCHVISION_PARAMS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def _abstract(name: str, size: int = 224, num_classes: int = 1000, **overrides):
    """(aux shapes, variable shapes) of a model traced on one size x size RGB image."""
    model = get_model({"name": name, **overrides}, num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    (_, aux), variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False), x
    )
    return aux, variables


def _key(seed: int) -> jax.Array:
    """A typed RBG key: XLA compiles its sampling in a fraction of threefry's time on CPU."""
    return jax.random.key(seed, impl="rbg")


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {"/".join(k): v.shape for k, v in flax.traverse_util.flatten_dict(tree).items()}


class Tiny:
    """A small model, its variables (initialised on first use) and one jitted forward pass, so
    that the tests sharing it compile each once."""

    def __init__(self, name: str, **overrides):
        self.model = get_model({"name": name, **overrides}, num_classes=10)
        self._run = jax.jit(self._forward, static_argnames="train")

    @functools.cached_property
    def variables(self) -> dict:
        """The model's own initial variables for 32x32 RGB inputs."""
        return jax.jit(lambda x: self.model.init(_key(0), x, train=False))(_images())

    def _forward(self, variables, x, seed, *, train: bool):
        rngs = {"dropout": _key(seed)}
        (logits, aux), state = self.model.apply(
            variables, x, train=train, rngs=rngs, mutable=["batch_stats"]
        )
        return logits, aux, state["batch_stats"]

    def __call__(self, x, *, train: bool, seed: int = 0, variables=None):
        """(logits, aux, batch_stats after the pass) on `x`."""
        return self._run(self.variables if variables is None else variables, x, seed, train=train)


@pytest.fixture(scope="module")
def tiny():
    """`tiny(name, **overrides)`: a Tiny built once per module for each distinct request."""
    built = {}

    def get(name: str, **overrides) -> Tiny:
        key = (name, tuple(sorted(overrides.items())))
        if key not in built:
            built[key] = Tiny(name, **overrides)
        return built[key]

    return get


def _images(n: int = 2, size: int = 32) -> jnp.ndarray:
    return jax.random.normal(jax.random.PRNGKey(1), (n, size, size, 3))


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_counts_match_torchvision(name):
    _, variables = _abstract(name)
    assert _count(variables["params"]) == TORCHVISION_PARAMS[name]


def test_param_counts_match_keras():
    # Keras' count_params() includes BatchNorm moving mean/var: params + batch_stats here.
    # MobileNetV2 alpha 1.0: 3,504,872 trainable + 34,112 moving statistics.
    _, variables = _abstract("mobilenet_v2")
    assert (_count(variables["params"]), _count(variables["batch_stats"])) == (3_504_872, 34_112)
    assert _count(variables) == 3_538_984
    # Keras' channel rounding at other widths (one rounds up by the 10% rule, one widens the top).
    assert _count(_abstract("mobilenet_v2", alpha=0.35)[1]) == 1_691_208
    assert _count(_abstract("mobilenet_v2", alpha=1.4)[1]) == 6_156_712
    # Keras ResNet50 (v1, biased convs) and VGG16 (no adaptive pooling).
    keras_resnet = {"conv_bias": True, "stride_in_1x1": True}
    assert _count(_abstract("resnet50", **keras_resnet)[1]) == 25_636_712
    assert _count(_abstract("vgg16", adaptive_pool=None)[1]) == 138_357_544


def test_resnet_parameter_paths():
    _, variables = _abstract("resnet50")
    params = _shapes(variables["params"])
    assert params["stem/conv/kernel"] == (7, 7, 3, 64)
    assert params["stage4/block3/conv3/kernel"] == (1, 1, 512, 2048)
    assert params["stage2/block1/conv2/kernel"] == (3, 3, 128, 128)
    assert params["stage2/block1/proj_conv/kernel"] == (1, 1, 256, 512)
    assert params["stage1/block1/proj_conv/kernel"] == (1, 1, 64, 256)  # 64 -> 256 channels
    assert "stage1/block2/proj_conv/kernel" not in params
    assert not any("conv" in p and p.endswith("/bias") for p in params)
    assert params["head/kernel"] == (2048, 1000)
    stats = _shapes(variables["batch_stats"])
    assert stats["stage3/block6/bn3/var"] == (1024,) and "stage3/block7/bn1/mean" not in stats
    basic = _shapes(_abstract("resnet18")[1]["params"])
    assert "stage1/block1/proj_conv/kernel" not in basic  # 64 -> 64 channels, stride 1
    assert "stage1/block1/conv3/kernel" not in basic
    assert basic["stage2/block1/proj_bn/scale"] == (128,)


def test_vgg_parameter_paths():
    params = _shapes(_abstract("vgg16")[1]["params"])
    assert params["stage5/block3/conv/bias"] == (512,)
    assert "stage5/block4/conv/bias" not in params and not any("/bn/" in p for p in params)
    assert params["fc6/kernel"] == (25088, 4096) and params["fc7/kernel"] == (4096, 4096)
    assert params["head/kernel"] == (4096, 1000)
    with_bn = _shapes(_abstract("vgg16_bn")[1]["params"])
    assert with_bn["stage1/block2/conv/bias"] == (64,)  # torchvision keeps it before BN
    assert with_bn["stage1/block2/bn/scale"] == (64,)
    # torch's adaptive pool makes fc6 independent of the input size; Keras' flatten does not.
    assert _shapes(_abstract("vgg16", size=64)[1]["params"])["fc6/kernel"] == (25088, 4096)
    keras = _shapes(_abstract("vgg16", size=64, adaptive_pool=None)[1]["params"])
    assert keras["fc6/kernel"] == (2 * 2 * 512, 4096)
    gap = _shapes(_abstract("vgg11", classifier="gap")[1]["params"])
    assert "fc6/kernel" not in gap and gap["head/kernel"] == (512, 1000)


def test_mobilenet_parameter_paths():
    params = _shapes(_abstract("mobilenet_v2")[1]["params"])
    assert params["stem/conv/kernel"] == (3, 3, 3, 32)
    assert "stage1/block1/expand_conv/kernel" not in params  # expansion 1
    assert params["stage1/block1/depthwise_conv/kernel"] == (3, 3, 1, 32)
    assert params["stage1/block1/project_conv/kernel"] == (1, 1, 32, 16)
    assert params["stage2/block1/expand_conv/kernel"] == (1, 1, 16, 96)
    assert params["stage6/block3/project_bn/scale"] == (160,)
    assert params["top/conv/kernel"] == (1, 1, 320, 1280) and params["head/kernel"] == (1280, 1000)
    assert not any(p.endswith("conv/bias") for p in params)


def test_full_size_aux_shapes():
    resnet, _ = _abstract("resnet50")
    assert {k: v.shape[1:] for k, v in resnet.items()} == {
        "stem": (56, 56, 64),
        "stage1": (56, 56, 256),
        "stage2": (28, 28, 512),
        "stage3": (14, 14, 1024),
        "stage4": (7, 7, 2048),
        "pre_logits": (2048,),
    }
    vgg, _ = _abstract("vgg16")
    sides = [vgg[f"stage{s}"].shape[1] for s in range(1, 6)]
    assert sides == [112, 56, 28, 14, 7] and vgg["stage5"].shape == (1, 7, 7, 512)
    assert vgg["pre_logits"].shape == (1, 4096)
    mobilenet, _ = _abstract("mobilenet_v2")
    assert mobilenet["stem"].shape == (1, 112, 112, 32)
    assert [mobilenet[f"stage{s}"].shape[1:] for s in (1, 5, 7)] == [
        (112, 112, 16),
        (14, 14, 96),
        (7, 7, 320),
    ]
    assert mobilenet["pre_logits"].shape == (1, 1280)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("vgg_tiny", {"stage1": (16, 16, 4), "stage2": (8, 8, 8), "pre_logits": (8,)}),
        (
            "resnet_tiny",
            {"stem": (8, 8, 4), "stage1": (8, 8, 4), "stage2": (4, 4, 8), "pre_logits": (8,)},
        ),
        (
            "mobilenet_v2_tiny",
            {
                "stem": (16, 16, 8),
                "stage1": (16, 16, 8),
                "stage2": (8, 8, 8),
                "stage3": (4, 4, 8),
                "pre_logits": (32,),
            },
        ),
    ],
)
def test_tiny_aux_and_logits(tiny, name, expected):
    logits, aux, _ = tiny(name)(_images(), train=False)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert {k: v.shape[1:] for k, v in aux.items()} == expected


def _torch_adaptive_avg_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Brute-force AdaptiveAvgPool2d on NHWC, bin by bin as torch documents it."""
    n, h, w, c = x.shape
    out = np.zeros((n, size, size, c), np.float64)
    for i in range(size):
        for j in range(size):
            h0, h1 = (i * h) // size, -(-(i + 1) * h // size)
            w0, w1 = (j * w) // size, -(-(j + 1) * w // size)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("height,width,size", [(5, 5, 3), (1, 1, 7), (6, 9, 4), (14, 14, 7)])
def test_adaptive_avg_pool_matches_torch_bins(height, width, size):
    x = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
    np.testing.assert_allclose(
        adaptive_avg_pool(jnp.asarray(x), size), _torch_adaptive_avg_pool(x, size), atol=1e-6
    )


def test_adaptive_avg_pool_hand_examples():
    # 5 -> 3 bins are rows [0, 2), [1, 4), [3, 5): overlapping, as in torch.
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    expected = np.array([[3.0, 4.5, 6.0], [10.5, 12.0, 13.5], [18.0, 19.5, 21.0]])
    np.testing.assert_allclose(adaptive_avg_pool(x, 3)[0, :, :, 0], expected)
    # 1x1 -> 7x7 copies; 7x7 is passed through untouched.
    np.testing.assert_array_equal(adaptive_avg_pool(jnp.full((1, 1, 1, 2), 3.5), 7), 3.5)
    seven = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 7, 2))
    assert adaptive_avg_pool(seven, 7) is seven


@pytest.mark.parametrize("name", TINY)
def test_bfloat16_compute_float32_params_and_logits(tiny, name):
    x = _images()
    f32 = tiny(name)
    _, bf16_variables = _abstract(name, size=32, num_classes=10, dtype="bfloat16")
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(bf16_variables))
    logits, aux, _ = tiny(name, dtype="bfloat16")(x, train=False, variables=f32.variables)
    assert aux["stage1"].dtype == jnp.bfloat16 and aux["pre_logits"].dtype == jnp.bfloat16
    assert logits.dtype == jnp.float32
    reference, _, _ = f32(x, train=False)
    scale = float(jnp.max(jnp.abs(reference)))
    np.testing.assert_allclose(logits, reference, atol=0.05 * scale)


@pytest.mark.parametrize("name", TINY)
def test_batch_stats_update_only_in_training(tiny, name):
    model = tiny(name)
    before = flax.traverse_util.flatten_dict(model.variables["batch_stats"], sep="/")
    trained = flax.traverse_util.flatten_dict(model(_images(), train=True)[2], sep="/")
    evaluated = flax.traverse_util.flatten_dict(model(_images(), train=False)[2], sep="/")
    assert set(before) == set(trained) == set(evaluated) and len(before) >= 4
    # Means may legitimately stay at 0 (the input of a BN that follows a BN and a linear conv).
    assert all(not np.allclose(before[k], trained[k]) for k in before if k.endswith("/var"))
    assert all(np.array_equal(before[k], evaluated[k]) for k in before)


@pytest.mark.parametrize(
    "name,overrides,has_dropout",
    [
        ("vgg_tiny", {"classifier": "fc", "fc_features": 16, "adaptive_pool": 2}, True),
        ("vgg_tiny", {}, False),
        ("mobilenet_v2_tiny", {"dropout_rate": 0.5}, True),
        ("mobilenet_v2_tiny", {}, False),
        ("resnet_tiny", {}, False),
    ],
)
def test_dropout_only_in_training(tiny, name, overrides, has_dropout):
    model, x = tiny(name, **overrides), _images()
    # Dropout adds no parameters: only a different classifier needs its own variables.
    variables = (model if "classifier" in overrides else tiny(name)).variables

    def logits(train: bool, seed: int) -> np.ndarray:
        return np.asarray(model(x, train=train, seed=seed, variables=variables)[0])

    assert np.array_equal(logits(False, 1), logits(False, 2))
    assert np.array_equal(logits(True, 1), logits(True, 1))
    assert np.array_equal(logits(True, 1), logits(True, 2)) != has_dropout


def test_stride_in_1x1_moves_the_stride():
    def stage2_block1(stride_in_1x1: bool):
        model = get_model(
            {"name": "resnet_tiny", "block": "bottleneck", "stride_in_1x1": stride_in_1x1},
            num_classes=10,
        )
        (_, aux), variables = jax.eval_shape(
            lambda x: model.init_with_output(
                jax.random.PRNGKey(0), x, train=False, capture_intermediates=True
            ),
            _images(),
        )
        block = variables["intermediates"]["stage2"]["block1"]
        shapes = {k: block[k]["__call__"][0].shape[1:] for k in ("conv1", "conv2", "conv3")}
        return _shapes(variables["params"]), shapes, aux["stage2"].shape

    v15_params, v15, v15_out = stage2_block1(False)
    v1_params, v1, v1_out = stage2_block1(True)
    assert v15_params == v1_params and v15_out == v1_out == (2, 4, 4, 32)
    # The stem leaves 8x8; v1.5 strides the 3x3 conv2, v1 the first 1x1 conv1.
    assert v15 == {"conv1": (8, 8, 8), "conv2": (4, 4, 8), "conv3": (4, 4, 32)}
    assert v1 == {"conv1": (4, 4, 8), "conv2": (4, 4, 8), "conv3": (4, 4, 32)}


def test_conv_bias_adds_one_bias_per_conv():
    plain = _shapes(_abstract("resnet_tiny", size=32, num_classes=10)[1]["params"])
    biased = _shapes(_abstract("resnet_tiny", size=32, num_classes=10, conv_bias=True)[1]["params"])
    kernels = {p[: -len("/kernel")]: s for p, s in plain.items() if "conv" in p}
    assert len(kernels) == 6  # stem, 2 + 2 block convs, stage2's projection
    assert set(biased) - set(plain) == {f"{conv}/bias" for conv in kernels}
    assert all(biased[f"{conv}/bias"] == (shape[-1],) for conv, shape in kernels.items())


def test_batch_norm_axis_name_gives_full_batch_statistics(tiny):
    # Two groups of one image with BatchNorm synced over the group axis == one batch of two.
    x, model = _images(), tiny("resnet_tiny")
    synced = get_model({"name": "resnet_tiny"}, num_classes=10, bn_axis_name="batch")
    assert synced.bn_axis_name == "batch"

    def synced_logits(images):
        return synced.apply(model.variables, images, train=True, mutable=["batch_stats"])[0][0]

    split = jax.jit(jax.vmap(synced_logits, axis_name="batch"))(x[:, None])
    np.testing.assert_allclose(split[:, 0], model(x, train=True)[0], atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_trains(tiny, name):
    x = _images(8)
    labels = jnp.arange(8) % 10
    model, variables = tiny(name).model, tiny(name).variables
    tx = optax.adam(1e-2)

    def loss_fn(params, batch_stats):
        (logits, _), state = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            rngs={"dropout": _key(0)},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, state["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    losses = []
    for _ in range(8):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.85 * losses[0], losses


def test_registry_names_and_presets():
    backbones = {n for n in MODELS if n.startswith(("vgg", "resnet", "mobilenet"))}
    vggs = {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    resnets = {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    assert backbones == vggs | resnets | {"vgg_tiny", "resnet_tiny"} | {
        "mobilenet_v2",
        "mobilenet_v2_tiny",
    }
    assert MODELS["vgg19_bn"][1] == {"stage_blocks": (2, 2, 4, 4, 4), "batch_norm": True}
    assert MODELS["resnet101"][1] == {"block": "bottleneck", "stage_blocks": (3, 4, 23, 3)}


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"name": "resnet18", "block": "wide"}, "model.block"),
        ({"name": "resnet18", "widths": (64, 128)}, "model.widths"),
        ({"name": "vgg11", "classifier": "mlp"}, "model.classifier"),
        ({"name": "vgg11", "stage_features": (64,)}, "model.stage_features"),
        ({"name": "mobilenet_v2", "settings": ((1, 16, 1),)}, "model.settings"),
        ({"name": "mobilenet_v2", "alpha": 0.0}, "model.alpha"),
    ],
)
def test_bad_options_raise_config_error(overrides, key):
    with pytest.raises(ConfigError, match=key):
        get_model(overrides, num_classes=10)


def test_vgg_rejects_inputs_it_would_pool_to_nothing():
    with pytest.raises(ConfigError, match="stage5"):
        _abstract("vgg16", size=16)
