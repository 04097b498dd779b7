"""The project's networks and Adam step in Keras 3 on the JAX backend, for the benchmark.

`build(spec, batch)` rebuilds the model family `spec.kind` with the functional API, layer by
layer as research/models defines it (channels-last images, same widths, paddings, strides,
dropout and BatchNorm settings, the project's initialisers where Keras names them), compiles it
with Adam and the spec's loss (`jit_compile=True`) and returns `train_on_batch` on the fixed
batch as the step.

Keras is imported inside `build`, after choosing the JAX backend, so importing this module never
picks a backend. Which project options the builders implement is research/bench/options.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from research.bench.options import check_spec, model_options
from research.bench.spec import Batch, Spec, Step

if TYPE_CHECKING:
    import keras

ADAM_EPSILON = 1e-8  # optax's and torch's default (the project's optimizer.eps); Keras' is 1e-7


def import_keras() -> Any:
    """Keras on the JAX backend; a RuntimeError if Keras was already imported on another."""
    # Keras reads the backend once, at its first import: this only helps before that.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"Keras runs on the '{keras.backend.backend()}' backend in this process; the "
            "benchmark needs 'jax': set KERAS_BACKEND=jax before anything imports keras"
        )
    return keras


# --- layers -------------------------------------------------------------------------------------


def _kernel_init(keras: Any, name: str, scale: float) -> Any:
    """The project's kernel initialiser `name` (layers.KERNEL_INITS) as a Keras initializer;
    Keras' lecun_normal and he_normal are flax's truncated ones."""
    inits = {
        "normal": lambda: keras.initializers.RandomNormal(stddev=scale),
        "glorot": keras.initializers.GlorotUniform,
        "he": keras.initializers.HeNormal,
        "orthogonal": keras.initializers.Orthogonal,
        "lecun": keras.initializers.LecunNormal,
    }
    if name not in inits:
        raise ValueError(f"unknown kernel_init '{name}'; known: {', '.join(inits)}")
    return inits[name]()


def _activation(keras: Any, name: str) -> Callable[[Any], Any]:
    """The project's activation `name`; flax's gelu is the tanh approximation."""
    acts = {
        "relu": keras.activations.relu,
        "tanh": keras.activations.tanh,
        "sigmoid": keras.activations.sigmoid,
        "gelu": lambda x: keras.activations.gelu(x, approximate=True),
    }
    if name not in acts:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(acts)}")
    return acts[name]


def _dense(keras: Any, units: int, o: Mapping[str, Any], **kwargs: Any) -> Any:
    """Dense with the options' kernel initialiser and a zero bias."""
    init = _kernel_init(keras, o["kernel_init"], o["init_scale"])
    return keras.layers.Dense(units, kernel_initializer=init, **kwargs)


def _head(keras: Any, units: int, o: Mapping[str, Any]) -> Any:
    """The output layer, computed and returned in float32 under any precision policy."""
    return _dense(keras, units, o, dtype="float32")


def _batch_norm(keras: Any, epsilon: float, name: str | None = None) -> Any:
    """BatchNorm with the project's momentum 0.9 (Keras and flax weigh the old statistics)."""
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=epsilon, name=name)


# --- MLP, CNN, LSTM -----------------------------------------------------------------------------


def make_mlp(keras: Any, o: Mapping[str, Any], shape: Sequence[int], outputs: int) -> Any:
    """Flatten, hidden Dense + activation + dropout layers, linear head (models/mlp.py)."""
    inputs = keras.Input(shape)
    x = keras.layers.Flatten()(inputs)
    for hidden in o["hidden_sizes"]:
        x = _dense(keras, hidden, o, activation=_activation(keras, o["activation"]))(x)
        x = keras.layers.Dropout(o["dropout_rate"])(x)
    return keras.Model(inputs, _head(keras, outputs, o)(x), name="mlp")


def make_cnn(keras: Any, o: Mapping[str, Any], shape: Sequence[int], outputs: int) -> Any:
    """Conv stages, 2x2 max pooling and dropout, dense, head dropout, head (models/cnn.py)."""
    layers = keras.layers
    inputs = keras.Input(shape)
    x = inputs
    init = _kernel_init(keras, o["kernel_init"], o["init_scale"])
    for features in o["stage_features"]:
        for _ in range(o["blocks_per_stage"]):
            # No conv bias before BatchNorm, as the project's ConvBlock: it would cancel out.
            bn = o["batch_norm"]
            x = layers.Conv2D(
                features, 3, padding="same", use_bias=not bn, kernel_initializer=init
            )(x)
            x = _batch_norm(keras, 1e-5)(x) if bn else x
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
        x = layers.Dropout(o["dropout_rate"])(x)
    x = layers.Flatten()(x)
    x = _dense(keras, o["dense_features"], o, activation="relu")(x)
    x = layers.Dropout(o["head_dropout_rate"])(x)
    return keras.Model(inputs, _head(keras, outputs, o)(x), name="cnn")


def make_lstm(keras: Any, o: Mapping[str, Any], shape: Sequence[int], outputs: int) -> Any:
    """Stacked LSTMs, each followed by dropout with one mask per sequence, and a linear head on
    the last step's state (models/recurrent.py, cell "lstm", pooling "last").

    Keras' LSTM keeps one bias, as the project's; its kernels are initialised over all four
    gates at once where the project initialises each gate's block on its own.
    """
    inputs = keras.Input(shape)
    x = inputs
    sizes = tuple(o["hidden_sizes"])
    for i, hidden in enumerate(sizes):
        last = i == len(sizes) - 1
        x = keras.layers.LSTM(
            hidden,
            return_sequences=not last,
            kernel_initializer=_kernel_init(keras, o["kernel_init"], o["init_scale"]),
            bias_initializer=_forget_bias(keras, hidden, o["forget_bias"]),
            unit_forget_bias=False,  # the bias initializer sets the forget gate's
        )(x)
        # On the last step's state alone, a per-sequence mask is an ordinary dropout mask.
        noise = None if last else (None, 1, hidden)
        x = keras.layers.Dropout(o["dropout_rate"], noise_shape=noise)(x)
    return keras.Model(inputs, _head(keras, outputs, o)(x), name="lstm")


def _forget_bias(keras: Any, hidden: int, value: float) -> Callable[..., Any]:
    """A bias initializer: zeros, but `value` on the forget gate (gates i, f, c, o)."""

    def init(shape: Sequence[int], dtype: Any = None) -> Any:
        bias = np.zeros(shape, np.float32)
        bias[hidden : 2 * hidden] = value
        return keras.ops.convert_to_tensor(bias, dtype=dtype)

    return init


# --- ResNet -------------------------------------------------------------------------------------


def _conv_bn(
    keras: Any, x: Any, spec: tuple[int, int, int], o: Mapping[str, Any], names: tuple[str, str]
) -> Any:
    """Conv (features, kernel, stride) padded kernel // 2 on each side, as the project's, then
    BatchNorm; `names` are the two layers' (torchvision's module names).

    Keras' "same" pads a strided conv asymmetrically (none before, all after), so strided
    convs get an explicit symmetric ZeroPadding2D; at stride 1 "same" is that padding.
    """
    features, kernel, stride = spec
    pad = kernel // 2
    if pad and stride > 1:
        x = keras.layers.ZeroPadding2D(pad)(x)
    x = keras.layers.Conv2D(
        features,
        kernel,
        strides=stride,
        padding="same" if pad and stride == 1 else "valid",
        use_bias=o["conv_bias"],
        # torchvision's (and the project's) He normal over fan_out, not truncated.
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        name=names[0],
    )(x)
    return _batch_norm(keras, o["bn_epsilon"], name=names[1])(x)


def _resnet_block(keras: Any, x: Any, width: int, stride: int, o: Mapping, name: str) -> Any:
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 to 4 * width) block; the stride sits on
    the 3x3 conv (v1.5) unless `stride_in_1x1`; a projection where the shape changes."""
    if o["block"] == "bottleneck":
        first, middle = (stride, 1) if o["stride_in_1x1"] else (1, stride)
        layers = [(width, 1, first), (width, 3, middle), (4 * width, 1, 1)]
    else:
        layers = [(width, 3, stride), (width, 3, 1)]
    y = x
    for k, layer in enumerate(layers, start=1):
        y = keras.layers.ReLU()(y) if k > 1 else y
        y = _conv_bn(keras, y, layer, o, (f"{name}.conv{k}", f"{name}.bn{k}"))
    shortcut = x
    if stride != 1 or x.shape[-1] != y.shape[-1]:
        names = (f"{name}.downsample.0", f"{name}.downsample.1")
        shortcut = _conv_bn(keras, x, (y.shape[-1], 1, stride), o, names)
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def make_resnet(keras: Any, o: Mapping[str, Any], shape: Sequence[int], outputs: int) -> Any:
    """7x7/2 stem conv, BN, ReLU, 3x3/2 max pool, residual stages (the first block of every
    stage after the first strides by 2), global average pool, head (models/resnet.py).

    Layers with weights carry torchvision's module names (conv1, layer1.0.bn2, fc, ...), as
    torch_steps' ResNet does, so the two can exchange weights by name.
    """
    inputs = keras.Input(shape)
    x = _conv_bn(keras, inputs, (o["stem_features"], 7, 2), o, ("conv1", "bn1"))
    # Zero padding after a ReLU never wins a max over a window holding real values, so this is
    # the project's -inf padded pool.
    x = keras.layers.MaxPooling2D(3, 2)(keras.layers.ZeroPadding2D(1)(keras.layers.ReLU()(x)))
    for s, (blocks, width) in enumerate(zip(o["stage_blocks"], o["widths"], strict=True), 1):
        for b in range(blocks):
            stride = 2 if s > 1 and b == 0 else 1
            x = _resnet_block(keras, x, width, stride, o, f"layer{s}.{b}")
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(
        outputs, kernel_initializer="lecun_normal", dtype="float32", name="fc"
    )
    return keras.Model(inputs, head(x), name="resnet")


# --- VAE ----------------------------------------------------------------------------------------


def _reparameterize(keras: Any) -> Any:
    """A layer drawing z = mean + exp(logvar / 2) * eps in float32, eps ~ N(0, I) per call."""

    class Reparameterize(keras.layers.Layer):
        def __init__(self) -> None:
            super().__init__(dtype="float32", name="z")
            self.seed = keras.random.SeedGenerator()  # from the global seed

        def call(self, inputs: Sequence[Any]) -> Any:
            mean, logvar = inputs
            eps = keras.random.normal(keras.ops.shape(mean), seed=self.seed)
            return mean + keras.ops.exp(0.5 * logvar) * eps

    return Reparameterize()


def make_vae(keras: Any, o: Mapping[str, Any], shape: Sequence[int], outputs: int) -> Any:
    """MLP VAE: hidden layers, mean and logvar heads, reparameterised z, the hidden sizes
    reversed, pixel logits (models/vae.py, bernoulli decoder). The model outputs
    concat([logits (B, pixels), mean, logvar]) for `vae_loss`; `outputs` is unused."""
    del outputs
    act = _activation(keras, o["activation"])
    inputs = keras.Input(shape)
    h = keras.layers.Flatten()(inputs)
    for hidden in o["hidden_sizes"]:
        h = _dense(keras, hidden, o, activation=act)(h)
    mean = _head(keras, o["latent_size"], o)(h)
    logvar = _head(keras, o["latent_size"], o)(h)
    x = _reparameterize(keras)([mean, logvar])
    for hidden in reversed(o["hidden_sizes"]):
        x = _dense(keras, hidden, o, activation=act)(x)
    logits = _head(keras, math.prod(shape), o)(x)
    out = keras.layers.Concatenate(dtype="float32")([logits, mean, logvar])
    return keras.Model(inputs, out, name="vae")


def vae_loss(keras: Any, pixels: int, latent: int) -> Callable[[Any, Any], Any]:
    """Per example: Bernoulli NLL of x (`y_true`, flattened) from the logits, summed over
    pixels, plus KL(N(mean, exp(logvar)) || N(0, I)) summed over latents; Keras averages it."""
    ops = keras.ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        logits = y_pred[:, :pixels]
        mean, logvar = y_pred[:, pixels : pixels + latent], y_pred[:, pixels + latent :]
        # log(1 + exp(l)) - l x, written so that exp never overflows.
        nll = ops.relu(logits) - logits * y_true + ops.log1p(ops.exp(-ops.abs(logits)))
        kl = 0.5 * (ops.square(mean) + ops.exp(logvar) - 1.0 - logvar)
        return ops.sum(nll, axis=-1) + ops.sum(kl, axis=-1)

    return loss


# --- model, loss and step -----------------------------------------------------------------------

_MAKERS: Mapping[str, Callable[..., Any]] = {
    "mlp": make_mlp,
    "cnn": make_cnn,
    "lstm": make_lstm,
    "resnet": make_resnet,
    "vae": make_vae,
}


def make_model(spec: Spec, precision: str = "float32") -> keras.Model:
    """The Keras network of `spec` (not compiled); bfloat16 is Keras' mixed_bfloat16 policy,
    set for the build only (it is global) and restored afterwards."""
    check_spec(spec, precision)
    keras = import_keras()
    o = model_options(spec)
    shape = _input_shape(spec)
    previous = keras.mixed_precision.dtype_policy()
    try:
        if precision == "bfloat16":
            keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        return _MAKERS[spec.kind](keras, o, shape, spec.num_outputs)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _input_shape(spec: Spec) -> tuple[int, ...]:
    """One example's shape as the model takes it: sequences as (T, features)."""
    shape = tuple(spec.input_shape)
    if spec.kind == "lstm":
        return (shape[0], math.prod(shape[1:]))
    return shape


def make_loss(keras: Any, spec: Spec) -> Any:
    """The compile loss of `spec.loss`, averaged over the batch."""
    if spec.loss == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if spec.loss == "mse":
        return "mse"
    latent = int(model_options(spec)["latent_size"])
    return vae_loss(keras, math.prod(spec.input_shape), latent)


def count_params(model: keras.Model) -> int:
    """Trainable parameters of `model`."""
    return sum(math.prod(v.shape) for v in model.trainable_variables)


@dataclasses.dataclass
class KerasRun:
    """One `train_on_batch` per call on the fixed batch; `last_loss` is its returned loss."""

    model: keras.Model
    x: Any
    y: Any
    _loss: float | None = dataclasses.field(default=None, init=False, repr=False)

    def __call__(self) -> None:
        # train_on_batch copies its results to the host, so it returns after the step is done.
        self._loss = float(self.model.train_on_batch(self.x, self.y))

    @property
    def last_loss(self) -> float:
        """The loss of the latest step (before its update)."""
        if self._loss is None:
            raise RuntimeError("no step has run yet")
        return self._loss


def _arrays(keras: Any, spec: Spec, batch: Batch) -> tuple[Any, Any]:
    """(x, y) as device arrays, put there once rather than at every step."""
    x = np.asarray(batch.x, np.float32).reshape((-1, *_input_shape(spec)))
    if spec.loss == "vae_bce":
        y = x.reshape(x.shape[0], -1)
    else:
        y = np.asarray(batch.y, np.int32 if spec.loss == "cross_entropy" else np.float32)
    return keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)


def build(spec: Spec, batch: Batch, *, precision: str = "float32", seed: int = 0) -> Step:
    """The Keras (JAX backend) train step of `spec` on `batch`, run once (timed as
    `first_step_s`: tracing and XLA compilation)."""
    check_spec(spec, precision)
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    model = make_model(spec, precision)
    model.compile(
        optimizer=keras.optimizers.Adam(spec.learning_rate, epsilon=ADAM_EPSILON),
        loss=make_loss(keras, spec),
        jit_compile=True,
    )
    run = KerasRun(model, *_arrays(keras, spec, batch))
    start = time.perf_counter()
    run()
    first_step_s = time.perf_counter() - start
    return Step(run=run, num_params=count_params(model), first_step_s=first_step_s)
