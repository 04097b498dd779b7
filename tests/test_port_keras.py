"""Keras porting: keras.applications models with seeded random weights, saved in every Keras
format, ported, and compared with Keras itself (logits and every stage) on the same images."""

import io
import logging
import zipfile

import h5py
import jax
import numpy as np
import pytest

from research.errors import ConfigError, WeightsError
from research.port import keras as port

keras = pytest.importorskip("keras")
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

SIZE = 32  # the smallest input keras.applications accepts; keeps VGG's fc1 at 512 rows
RESNET_BLOCKS = (3, 4, 6, 3)
MOBILENET_STAGE_OUTPUTS = (
    "expanded_conv_project_BN",
    "block_2_add",
    "block_5_add",
    "block_9_add",
    "block_12_add",
    "block_15_add",
    "block_16_project_BN",
)


def _randomize(model: "keras.Model", seed: int) -> None:
    """Seeded weights everywhere: He-scaled kernels, and BatchNorm statistics far from 0/1."""
    rng = np.random.default_rng(seed)
    values = []
    for v in model.weights:
        shape = tuple(v.shape)
        if v.name in ("kernel", "depthwise_kernel"):
            fan_in = np.prod(shape[:2]) if v.name == "depthwise_kernel" else np.prod(shape[:-1])
            values.append(rng.standard_normal(shape) * np.sqrt(2.0 / fan_in))
        elif v.name in ("gamma", "moving_variance"):
            values.append(rng.uniform(0.5, 1.5, shape))
        else:  # bias, beta, moving_mean
            values.append(rng.normal(0.0, 0.2, shape))
    model.set_weights([value.astype(np.float32) for value in values])


def _save(model: "keras.Model", path: str, fmt: str) -> str:
    """Write `model` in one of the Keras formats the porter reads."""
    if fmt == "legacy":  # the layout of the keras.applications download files
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    elif fmt == "legacy_model":  # full model .h5: weights under model_weights/
        model.save(path)
    elif fmt == "weights":
        model.save_weights(path)
    else:
        model.save(path)
    return path


def _reference_layers(arch: str, model: "keras.Model", top: bool) -> dict[str, str]:
    """Our aux/logits name -> the Keras layer whose output it equals."""
    if arch.startswith("vgg"):
        names = {f"stage{s}": f"block{s}_pool" for s in range(1, 6)}
        names["pre_logits"] = "fc2" if top else None
    elif arch == "resnet50":
        names = {"stem": "pool1_pool", "pre_logits": "avg_pool"}
        names.update(
            {f"stage{s}": f"conv{s + 1}_block{n}_out" for s, n in enumerate(RESNET_BLOCKS, 1)}
        )
    else:
        names = {"stem": "Conv1_relu", "pre_logits": model.layers[-2].name if top else None}
        names.update({f"stage{s}": n for s, n in enumerate(MOBILENET_STAGE_OUTPUTS, 1)})
    if top:
        names["logits"] = "predictions"
    return names


def _keras_outputs(model: "keras.Model", names: dict[str, str], x: np.ndarray) -> dict:
    """The named layers' outputs of the Keras model on `x` (inference mode)."""
    wanted = {key: name for key, name in names.items() if name is not None}
    layers = [model.get_layer(n).output for n in wanted.values()]
    # predict() compiles the model once; eager calls compile op by op (several times slower).
    *outputs, last = keras.Model(model.input, [*layers, model.output]).predict(x, verbose=0)
    out = dict(zip(wanted, outputs, strict=True))
    if "pre_logits" not in out:  # no top: the pooled features of the last feature map
        out["pre_logits"] = last.mean(axis=(1, 2))
    return out


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|."""
    assert ours.shape == ref.shape
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


CASES = {
    # name: (arch, keras constructor, extra constructor kwargs, include_top, format, file name)
    "vgg16_legacy": ("vgg16", "VGG16", {}, True, "legacy", "vgg16_weights.h5"),
    "vgg19_weights_h5": ("vgg19", "VGG19", {}, True, "weights", "vgg19.weights.h5"),
    "resnet50_model_h5": ("resnet50", "ResNet50", {}, True, "legacy_model", "resnet50.h5"),
    "mobilenet_v2_keras": ("mobilenet_v2", "MobileNetV2", {}, True, "keras", "mnv2.keras"),
    "mobilenet_v2_050_notop": (
        "mobilenet_v2",
        "MobileNetV2",
        {"alpha": 0.5},
        False,
        "legacy",
        "mobilenet_v2_weights_0.5_no_top.h5",
    ),
    "vgg16_notop_keras": ("vgg16", "VGG16", {}, False, "keras", "vgg16_notop.keras"),
}
# The options each port must pick: read off the file (VGG's flatten, MobileNetV2's alpha: 0.35
# and 0.5 share a 16-filter stem, the project convs tell them apart) or fixed for Keras (ResNet50).
OPTIONS = {
    "vgg16_legacy": {"adaptive_pool": None, "classifier": "fc", "stage_blocks": (2, 2, 3, 3, 3)},
    "vgg19_weights_h5": {"adaptive_pool": None, "stage_blocks": (2, 2, 4, 4, 4)},
    "resnet50_model_h5": {"conv_bias": True, "stride_in_1x1": True, "bn_epsilon": 1.001e-5},
    "mobilenet_v2_keras": {"alpha": 1.0, "bn_epsilon": 1e-3},
    "mobilenet_v2_050_notop": {"alpha": 0.5, "bn_epsilon": 1e-3},
    "vgg16_notop_keras": {"classifier": "gap", "stage_blocks": (2, 2, 3, 3, 3)},
}


def _skip_random_init(self, shape, dtype=None, **kwargs) -> np.ndarray:
    """Stands in for Keras' random kernel initializers, which compile one XLA program per shape
    (tens of seconds for a MobileNetV2); every weight is overwritten by `_randomize` anyway."""
    return np.zeros(shape, dtype or "float32")


def _keras_model(ctor: str, **kwargs) -> "keras.Model":
    """keras.applications.<ctor>(weights=None) for SIZE x SIZE inputs, built quickly."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.initializers.VarianceScaling, "__call__", _skip_random_init)
        return getattr(keras.applications, ctor)(
            weights=None, input_shape=(SIZE, SIZE, 3), **kwargs
        )


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Two random images, the same for Keras and our models."""
    return np.random.default_rng(0).normal(0.0, 1.0, (2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, images) -> dict:
    """Each case's file and Keras reference outputs; Keras models are dropped once measured."""
    root = tmp_path_factory.mktemp("keras")
    out = {}
    for seed, (case, (arch, ctor, kwargs, top, fmt, filename)) in enumerate(CASES.items()):
        if top:
            kwargs = {**kwargs, "classes": 10, "classifier_activation": None}
        model = _keras_model(ctor, include_top=top, **kwargs)
        _randomize(model, seed)
        path = _save(model, str(root / filename), fmt)
        with jax.default_matmul_precision("highest"):
            reference = _keras_outputs(model, _reference_layers(arch, model, top), images)
        out[case] = (arch, path, reference)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_ported_model_matches_keras(case, saved, images, caplog):
    """Logits and every stage's activations agree with Keras to 1e-4 relative error."""
    arch, path, reference = saved[case]
    with caplog.at_level(logging.WARNING, logger=port.__name__):
        model, variables = port.load(arch, path)
    assert {key: getattr(model, key) for key in OPTIONS[case]} == OPTIONS[case]
    with jax.default_matmul_precision("highest"):
        logits, aux = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    ours = {**aux, "logits": logits}
    errors = {key: _rel_err(ours[key], ref) for key, ref in reference.items()}
    assert max(errors.values()) <= 1e-4, errors
    assert set(reference) >= {"pre_logits"} and len(reference) >= 6
    if "logits" not in reference:  # _notop: the head alone is fresh (seed 0), and we say so
        # Under jit only the head's share of the init is compiled (all of it takes ~20 s).
        init = jax.jit(
            lambda x: model.init(jax.random.PRNGKey(0), x, train=False)["params"]["head"]
        )
        fresh = init(images)
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(variables["params"]["head"][leaf], fresh[leaf])
        assert logits.shape == (2, port.NOTOP_CLASSES)
        assert "fresh initialisation" in caplog.text
    else:
        assert logits.shape == (2, 10) and "fresh" not in caplog.text


@pytest.mark.parametrize("alpha", [0.35, 0.75, 1.3, 1.4])
def test_mobilenet_v2_width_multipliers(alpha, tmp_path):
    """Every keras.applications alpha is recognised and fits our model's shapes exactly."""
    reference = _keras_model("MobileNetV2", alpha=alpha, classes=2)
    model, variables = port.load("mobilenet_v2", _save(reference, str(tmp_path / "m.h5"), "legacy"))
    assert model.alpha == alpha
    assert (
        variables["params"]["top"]["conv"]["kernel"].shape[-1]
        == (reference.get_layer("Conv_1").output.shape[-1])
    )


def test_keras_archive_without_layer_names(saved, tmp_path):
    """Files from Keras versions that did not name layer groups: config.json names them."""
    _, path, _ = saved["mobilenet_v2_keras"]
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json")
        buffer = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(buffer, "r+") as f:
        for group in f["layers"].values():
            del group["vars"].attrs["name"]
    unnamed = tmp_path / "unnamed.keras"
    with zipfile.ZipFile(unnamed, "w") as archive:
        archive.writestr("config.json", config)
        archive.writestr("model.weights.h5", buffer.getvalue())
    _, expected = port.load("mobilenet_v2", path)
    _, variables = port.load("mobilenet_v2", str(unnamed))
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
    # Without config.json (a bare .weights.h5) nothing says which group is which layer.
    bare = tmp_path / "unnamed.weights.h5"
    bare.write_bytes(buffer.getvalue())
    with pytest.raises(WeightsError, match="layers/batch_normalization.* does not say"):
        port.load("mobilenet_v2", str(bare))


def test_weight_names_of_older_keras_files(tmp_path):
    """Keras 1/2 download files name weights `block1_conv1_W_1:0` or `Conv1/kernel:0`, and Keras
    splits attributes over 64 KB into `layer_names0`, `layer_names1`, ...; weights keep order."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names0"] = np.array([b"input_1", b"block1_conv1"])
        f.attrs["layer_names1"] = np.array([b"Conv1"])
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        group = f.create_group("block1_conv1")
        group.attrs["weight_names"] = np.array([b"block1_conv1_W_1:0", b"block1_conv1_b_1:0"])
        group["block1_conv1_W_1:0"] = np.ones((3, 3, 3, 4))
        group["block1_conv1_b_1:0"] = np.arange(4.0)
        group = f.create_group("Conv1")
        group.attrs["weight_names"] = np.array([b"Conv1/kernel:0"])
        group["Conv1/kernel:0"] = np.full((3, 3, 3, 2), 2.0)
    layers = port.read_layers(str(path))
    assert {name: [(w, a.shape) for w, a in weights] for name, weights in layers.items()} == {
        "block1_conv1": [("block1_conv1_W_1:0", (3, 3, 3, 4)), ("block1_conv1_b_1:0", (4,))],
        "Conv1": [("Conv1/kernel:0", (3, 3, 3, 2))],
    }
    np.testing.assert_array_equal(layers["block1_conv1"][1][1], np.arange(4.0))


@pytest.mark.parametrize(
    ("arch", "case", "message"),
    [
        ("vgg16", "resnet50_model_h5", r"no tensor for parameter params/.*conv1_conv"),
        ("vgg19", "vgg16_legacy", r"no tensor for parameter params/stage3/block4/conv/"),
        ("resnet50", "mobilenet_v2_keras", r"no tensor for parameter (params|batch_stats)/"),
        ("mobilenet_v2", "vgg19_weights_h5", r"params/stem/conv/kernel"),
    ],
)
def test_file_of_another_arch_names_a_parameter(arch, case, message, saved):
    """A file of another architecture fails with the parameter it cannot fill."""
    with pytest.raises(WeightsError, match=message):
        port.load(arch, saved[case][1])


def test_unreadable_files(tmp_path):
    """Garbage, a zip that is no .keras archive, HDF5 without Keras weights, a missing file."""
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"these are not weights" * 10)
    archive = tmp_path / "other.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    for path, message in [
        (garbage, "neither an HDF5"),
        (archive, "without model.weights.h5"),
        (plain, "without Keras weights"),
        (tmp_path / "missing.h5", "does not exist"),
    ]:
        with pytest.raises(WeightsError, match=message):
            port.load("resnet50", str(path))
    with pytest.raises(ConfigError, match="resnet18"):
        port.load("resnet18", str(plain))


@pytest.mark.parametrize("arch", port.ARCHS)
def test_preprocess_matches_keras(arch):
    """Our preprocessing equals keras.applications.<arch>.preprocess_input on raw pixels."""
    family = getattr(keras.applications, arch)
    raw = np.random.default_rng(1).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    # Keras' caffe mode subtracts in place: give it its own copy.
    expected = family.preprocess_input(raw.copy())
    ours = port.preprocess(arch)(raw)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(port.preprocess(arch)(jax.numpy.asarray(raw))), expected, atol=1e-4
    )
    pixels = raw.astype(np.uint8)  # integer images are cast to float first, as Keras does
    expected = family.preprocess_input(pixels.copy())
    np.testing.assert_allclose(port.preprocess(arch)(pixels), expected, atol=1e-4)
