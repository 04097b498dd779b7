"""The benchmark's hand-written PyTorch and Keras steps (research/bench/{torch,keras}_steps.py).

Each family has the project's trainable parameter count exactly and trains on a fixed batch;
the ResNets and the LSTM also compute the project's function once given its weights (ResNet
through the torchvision porter, the LSTM by hand), which pins paddings, strides, pooling and
gate order beyond what a parameter count can.
"""

import functools
import importlib
import math
from types import ModuleType

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.bench import keras_steps
from research.bench.options import check_spec, model_options
from research.bench.spec import Batch, Spec
from research.models import get_model

FRAMEWORKS = ("torch", "keras")
BATCH = 16
TOLERANCE = 1e-4  # of the largest reference output

QUICKSTART_CNN = {
    "stage_features": (32, 64),
    "blocks_per_stage": 2,
    "dense_features": 256,
    "dropout_rate": 0.25,
    "head_dropout_rate": 0.5,
    "batch_norm": True,
}
VAE_DIGITS = {
    "hidden_sizes": (128, 64),
    "latent_size": 8,
    "activation": "relu",
    "likelihood": "bernoulli",
    "decoder_scale": 0.1,
    "learn_scale": False,
}
CASES = {
    "mlp": Spec(
        "mlp", {"hidden_sizes": (256, 128), "dropout_rate": 0.2}, (8, 8, 1), 10, "cross_entropy"
    ),
    "cnn": Spec("cnn", QUICKSTART_CNN, (8, 8, 1), 10, "cross_entropy"),
    "lstm": Spec("lstm", {"hidden_sizes": (32,), "pooling": "last"}, (12, 2), 1, "mse"),
    # Two layers and dropout: one mask per sequence after each layer, the last included.
    "lstm2": Spec("lstm", {"hidden_sizes": (16, 8), "dropout_rate": 0.2}, (12, 2), 1, "mse"),
    "resnet18": Spec("resnet", {"name": "resnet18"}, (32, 32, 3), 10, "cross_entropy"),
    "vae": Spec("vae", VAE_DIGITS, (8, 8, 1), 0, "vae_bce"),
}
# Keras compiles ResNet-18's step for several seconds on a CPU.
SLOW = {("resnet18", "keras")}


def _steps(framework: str) -> ModuleType:
    """torch_steps or keras_steps; skips when the framework is not installed (torch on 3.12)."""
    pytest.importorskip(framework)
    return importlib.import_module(f"research.bench.{framework}_steps")


def _batch(spec: Spec, seed: int = 0) -> Batch:
    """A fixed random batch: pixels in [0, 1], labels, or standard normal targets."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(BATCH, *spec.input_shape)).astype(np.float32)
    if spec.loss == "cross_entropy":
        return Batch(x, rng.integers(0, spec.num_outputs, BATCH).astype(np.int32))
    if spec.loss == "mse":
        return Batch(x, rng.normal(size=(BATCH, spec.num_outputs)).astype(np.float32))
    return Batch(x, None)


def _project_model(spec: Spec):
    options = dict(spec.options)
    config = ml_collections.ConfigDict({"name": options.pop("name", spec.kind), **options})
    return get_model(config, num_classes=spec.num_outputs, input_shape=spec.input_shape)


@functools.cache
def _project_params(case: str) -> int:
    """Trainable parameters of the project's model for CASES[case]."""
    spec = CASES[case]
    x = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
    init = functools.partial(_project_model(spec).init, train=False)
    variables = jax.eval_shape(init, jax.random.key(0), x)  # shapes only: nothing is computed
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(variables["params"]))


def _cases() -> list:
    return [
        pytest.param(case, fw, marks=[pytest.mark.slow] if (case, fw) in SLOW else [])
        for case in CASES
        for fw in FRAMEWORKS
    ]


@pytest.mark.parametrize(("case", "framework"), _cases())
def test_step_has_the_project_parameters_and_trains(case: str, framework: str) -> None:
    spec, steps = CASES[case], _steps(framework)
    step = steps.build(spec, _batch(spec), seed=0)
    assert step.num_params == _project_params(case)
    assert step.first_step_s > 0 and step.flops is None
    first = step.run.last_loss  # build ran the first step
    for _ in range(15):
        step.run()
    assert np.isfinite(step.run.last_loss)
    assert step.run.last_loss < first


def test_torch_lstm_keeps_its_second_bias_zero_and_frozen() -> None:
    """torch.nn.LSTM has b_ih and b_hh where the project (and Keras) have one bias: b_hh stays
    zero and out of training, exactly 4 * hidden values per layer, so the trainable count and
    the function are the project's."""
    torch_steps = _steps("torch")
    spec = CASES["lstm"]
    step = torch_steps.build(spec, _batch(spec))
    model = step.run.model
    every = sum(p.numel() for p in model.parameters())
    assert every - step.num_params == 4 * sum(spec.options["hidden_sizes"])
    for _ in range(3):
        step.run()
    for lstm in model.layers:
        assert not lstm.bias_hh_l0.requires_grad and not lstm.bias_hh_l0.any()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_unknown_precision_is_rejected(framework: str) -> None:
    spec = CASES["mlp"]
    with pytest.raises(ValueError, match="precision"):
        _steps(framework).build(spec, _batch(spec), precision="float16")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bfloat16_step_runs(framework: str) -> None:
    spec = CASES["mlp"]
    step = _steps(framework).build(spec, _batch(spec), precision="bfloat16")
    step.run()
    assert np.isfinite(step.run.last_loss)
    assert step.num_params == _project_params("mlp")


def test_keras_precision_policy_does_not_leak() -> None:
    keras = pytest.importorskip("keras")
    before = keras.mixed_precision.dtype_policy().name
    spec = CASES["mlp"]
    model = keras_steps.make_model(spec, "bfloat16")
    assert model.layers[2].dtype_policy.name == "mixed_bfloat16"  # the first hidden Dense
    assert model.output.dtype == "float32"
    assert keras.mixed_precision.dtype_policy().name == before


def test_keras_on_another_backend_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    keras = pytest.importorskip("keras")
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax"):
        keras_steps.build(CASES["mlp"], _batch(CASES["mlp"]))


@pytest.mark.parametrize(
    ("kind", "options", "loss"),
    [
        ("lstm", {"pooling": "attention"}, "mse"),
        ("lstm", {"name": "gru"}, "mse"),
        ("vae", {"likelihood": "gaussian"}, "vae_bce"),
        ("resnet", {"name": "resnet18", "dtype": "float32", "bn_momentum": 0.5}, "cross_entropy"),
        ("cnn", {"name": "mlp"}, "cross_entropy"),
        ("mlp", {}, "vae_bce"),
    ],
)
def test_options_the_builders_lack_are_rejected(kind: str, options: dict, loss: str) -> None:
    spec = Spec(kind, options, (8, 8, 1), 1, loss)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_spec(spec, "float32")
        model_options(spec)


# --- the same function as the project's network -------------------------------------------------


def _close(actual: np.ndarray, reference: np.ndarray) -> None:
    scale = float(np.max(np.abs(reference)))
    np.testing.assert_allclose(actual, reference, atol=TOLERANCE * scale, rtol=0)


def _keras_from_torch(keras_model, torch_model) -> None:
    """Copy a torch_steps ResNet's weights into a keras_steps one, layer names being the same."""
    keras = pytest.importorskip("keras")
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.set_weights([state[f"{layer.name}.weight"].transpose(2, 3, 1, 0)])
        elif isinstance(layer, keras.layers.BatchNormalization):
            leaves = ("weight", "bias", "running_mean", "running_var")
            layer.set_weights([state[f"{layer.name}.{leaf}"] for leaf in leaves])
        elif isinstance(layer, keras.layers.Dense):
            layer.set_weights([state["fc.weight"].T, state["fc.bias"]])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnets_compute_the_project_network(name: str, tmp_path) -> None:
    """Trained a few steps (non-trivial BatchNorm statistics), the torch ResNet's weights loaded
    into the project's model (torchvision porter) and the Keras model give the same logits."""
    torch = pytest.importorskip("torch")
    torch_steps = _steps("torch")
    from research.port import torchvision as tv

    spec = Spec("resnet", {"name": name}, (32, 32, 3), 10, "cross_entropy")
    batch = _batch(spec)
    step = torch_steps.build(spec, batch)
    step.run()
    model = step.run.model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(batch.x.transpose(0, 3, 1, 2))).numpy()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    project, variables = tv.load(name, tmp_path / "weights.pth")
    assert sum(np.size(v) for v in jax.tree.leaves(variables["params"])) == step.num_params
    logits, _ = jax.jit(lambda v, x: project.apply(v, x, train=False))(variables, batch.x)
    _close(np.asarray(logits), expected)

    keras_model = keras_steps.make_model(spec)
    assert keras_steps.count_params(keras_model) == step.num_params
    _keras_from_torch(keras_model, model)
    _close(np.asarray(keras_model(batch.x, training=False)), expected)


def test_lstms_compute_the_project_network() -> None:
    """The project's LSTM weights (fused kernels (in, 4h), one bias, gates i, f, g, o) copied into
    both frameworks' networks give the project's outputs."""
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    spec, batch = CASES["lstm"], _batch(CASES["lstm"])
    variables = _project_model(spec).init(jax.random.key(3), batch.x, train=False)
    params = jax.tree.map(np.array, variables["params"])  # writable copies, for torch
    cell, head = params["layer1"]["forward"]["cell"], params["head"]
    expected, _ = _project_model(spec).apply(variables, batch.x, train=False)

    torch_model = _steps("torch").make_model(spec).eval()
    lstm = torch_model.layers[0]
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(cell["input_kernel"].T))
        lstm.weight_hh_l0.copy_(torch.from_numpy(cell["recurrent_kernel"].T))
        lstm.bias_ih_l0.copy_(torch.from_numpy(cell["bias"]))
        torch_model.head.weight.copy_(torch.from_numpy(head["kernel"].T))
        torch_model.head.bias.copy_(torch.from_numpy(head["bias"]))
        _close(torch_model(torch.from_numpy(batch.x)).numpy(), np.asarray(expected))

    keras_model = keras_steps.make_model(spec)
    layer = next(x for x in keras_model.layers if isinstance(x, keras.layers.LSTM))
    layer.set_weights([cell["input_kernel"], cell["recurrent_kernel"], cell["bias"]])
    keras_model.layers[-1].set_weights([head["kernel"], head["bias"]])
    _close(np.asarray(keras_model(batch.x, training=False)), np.asarray(expected))


def test_vae_loss_is_the_project_objective() -> None:
    """Bernoulli NLL summed over pixels plus the KL summed over latents, averaged over the batch,
    for both frameworks' loss functions on the same logits, means and log variances."""
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    from research.tasks import autoencoding

    rng = np.random.default_rng(1)
    x = rng.uniform(size=(4, 64)).astype(np.float32)
    logits, mean, logvar = (
        rng.normal(size=s).astype(np.float32) for s in ((4, 64), (4, 8), (4, 8))
    )
    nll = -autoencoding.bernoulli_log_likelihood(logits, x).sum(-1)
    kl = autoencoding.gaussian_kl(mean, logvar).sum(-1)
    expected = float(jnp.mean(nll + kl))

    outputs = tuple(torch.from_numpy(a) for a in (logits, mean, logvar))
    spec = CASES["vae"]
    assert math.isclose(
        float(_steps("torch").compute_loss(spec, outputs, torch.from_numpy(x))),
        expected,
        rel_tol=1e-5,
    )
    per_example = keras_steps.vae_loss(keras, 64, 8)(x, np.concatenate([logits, mean, logvar], -1))
    assert math.isclose(float(np.mean(per_example)), expected, rel_tol=1e-5)
