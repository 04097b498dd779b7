"""Autoencoders and VAEs: the numeric pieces against closed forms, Monte Carlo and jax.grad; the
models' shapes and names; the reconstruction task's losses and eval statistics; the train/eval
steps' rng streams; tiny end-to-end runs whose reconstruction error falls."""

import functools
import json
import math
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_loop import _in_process

from research.config import base_config
from research.errors import ConfigError
from research.models import MODELS, get_model
from research.models.autoencoder import Autoencoder, ConvAutoencoder
from research.models.vae import VAE, ConvVAE
from research.optim import build_optimizer
from research.tasks import ClassificationTask, ReconstructionTask, get_task
from research.tasks import autoencoding as ae
from research.tasks.reconstruction import task_config
from research.train.state import make_init_fn
from research.train.step import make_eval_step, make_train_step

ROOT = Path(__file__).parents[1]
GENERATIVE = sorted(
    n for n, (cls, _) in MODELS.items() if cls in (Autoencoder, ConvAutoencoder, VAE, ConvVAE)
)
SHAPE = (8, 8, 1)


def _key(i: int) -> jax.Array:
    return jax.random.PRNGKey(i)


# --- Gaussian KL, ELBO and IWAE -----------------------------------------------------------------


def test_gaussian_kl_matches_closed_form_and_monte_carlo():
    mean = jnp.array([0.0, 1.5, -0.7, 0.3])
    logvar = jnp.array([0.0, -1.0, 0.8, -3.0])
    kl = np.asarray(ae.gaussian_kl(mean, logvar))
    # KL(N(m, s^2) || N(0, 1)) = -log s + (s^2 + m^2) / 2 - 1/2, written independently.
    s = np.exp(0.5 * np.asarray(logvar, np.float64))
    closed = -np.log(s) + (s**2 + np.asarray(mean, np.float64) ** 2) / 2 - 0.5
    np.testing.assert_allclose(kl, closed, rtol=1e-6, atol=1e-7)
    assert kl[0] == 0.0  # q equal to the prior
    # Monte Carlo: E_q[log q(z) - log p(z)] with 400k samples per dimension.
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(_key(0), (400_000, 4))
    log_ratio = ae.gaussian_log_density(z, mean, logvar) - ae.standard_normal_log_density(z)
    estimate, stderr = np.mean(log_ratio, 0), np.std(log_ratio, 0) / math.sqrt(400_000)
    assert np.all(np.abs(estimate - closed) < 4 * stderr + 1e-4)


def test_gaussian_log_density_and_bernoulli_likelihood_against_scipy_formulas():
    x, mean, logvar = 0.3, 0.1, math.log(0.04)
    expected = -0.5 * math.log(2 * math.pi * 0.04) - (0.2**2) / (2 * 0.04)
    assert float(ae.gaussian_log_density(x, mean, logvar)) == pytest.approx(expected, rel=1e-6)
    logits, targets = jnp.array([-2.0, 0.0, 3.0]), jnp.array([0.0, 0.25, 1.0])
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    t = np.asarray(targets, np.float64)
    np.testing.assert_allclose(
        ae.bernoulli_log_likelihood(logits, targets),
        t * np.log(p) + (1 - t) * np.log(1 - p),
        rtol=1e-6,
    )


def test_iwae_with_one_sample_is_the_elbo_and_never_below_it():
    log_w = jax.random.normal(_key(1), (1, 7)) * 3.0
    np.testing.assert_array_equal(ae.iwae_bound(log_w), ae.elbo_bound(log_w))
    many = jax.random.normal(_key(2), (10, 7)) * 3.0
    assert np.all(ae.iwae_bound(many) >= ae.elbo_bound(many))
    # log-mean-exp stays finite where exp overflows float32.
    big = jnp.array([[1000.0], [1000.0 + math.log(3.0)]])
    assert float(ae.log_mean_exp(big)[0]) == pytest.approx(1000.0 + math.log(2.0), rel=1e-6)


def _fixed_vae():
    """vae_tiny with a posterior far from the prior and images from the digits' value range."""
    model = get_model({"name": "vae_tiny"}, num_classes=10, input_shape=SHAPE)
    images = jax.random.uniform(_key(3), (512, *SHAPE))
    params = model.init(_key(4), images[:1], train=False)["params"]
    # A narrow posterior (logvar bias -3) makes log p(x) - ELBO large enough to see IWAE close it.
    params = jax.tree.map(lambda v: v, params)
    params["encoder"]["logvar"]["bias"] = jnp.full((4,), -3.0)
    params["encoder"]["mean"]["kernel"] = params["encoder"]["mean"]["kernel"] * 4
    return model, {"params": params}, images


def _eval_metrics(model, variables, images, k: int, seed: int) -> dict:
    task = ReconstructionTask(input_size=64, vae=True, iwae_samples=k)
    batch = {"image": images, "mask": jnp.ones(images.shape[0])}

    @jax.jit
    def sums(variables, batch, key):
        apply = functools.partial(model.apply, variables)
        return task.eval_sums(*task.eval_outputs(apply, batch, key), batch)

    return task.finalize(jax.device_get(sums(variables, batch, _key(seed))))


def test_iwae_estimate_grows_with_k_towards_log_likelihood():
    model, variables, images = _fixed_vae()
    runs = {k: _eval_metrics(model, variables, images, k, seed=k) for k in (1, 8, 64)}
    iwae = [runs[k]["iwae"] for k in (1, 8, 64)]
    assert iwae[0] < iwae[1] < iwae[2], iwae
    # With one sample the IWAE is the Monte Carlo ELBO; averaged over 512 examples it agrees with
    # the analytic-KL ELBO (the same bound) to within its sampling error.
    assert iwae[0] == pytest.approx(runs[1]["elbo"], abs=0.05 * abs(runs[1]["elbo"]))
    assert iwae[2] - runs[64]["elbo"] > 1.0  # a real gap is closed, not rounding
    # The ELBO's expectation does not depend on k: its estimates agree across k.
    assert runs[8]["elbo"] == pytest.approx(runs[64]["elbo"], rel=0.02)
    assert runs[64]["loss"] == -runs[64]["elbo"]
    assert runs[64]["elbo"] == pytest.approx(-(runs[64]["reconstruction"] + runs[64]["kl"]))


def test_free_bits_and_kl_annealing():
    kl_dims = jnp.array([[0.1, 2.0, 0.4], [0.3, 1.0, 0.8]])  # batch means 0.2, 1.5, 0.6
    assert float(ae.free_bits_kl(kl_dims, 0.5)) == pytest.approx(0.5 + 1.5 + 0.6)
    assert float(ae.free_bits_kl(kl_dims, 0.0)) == pytest.approx(0.2 + 1.5 + 0.6)
    grad = jax.grad(lambda k: ae.free_bits_kl(k, 0.5))(kl_dims)
    np.testing.assert_allclose(grad, [[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])  # below floor: none
    weights = [float(ae.kl_weight(jnp.int32(s), 2.0, 100)) for s in (0, 25, 100, 500)]
    assert weights == [0.0, 0.5, 2.0, 2.0]
    assert float(ae.kl_weight(jnp.int32(0), 2.0, 0)) == 2.0


# --- corruption and sparsity --------------------------------------------------------------------


def test_corruption_statistics():
    n = 200_000
    ones, halves = jnp.ones((n, 1)), jnp.full((n, 1), 0.5)
    masked = np.asarray(ae.corrupt(ones, _key(5), "masking", 0.3))
    assert np.mean(masked == 0) == pytest.approx(0.3, abs=0.005)
    assert set(np.unique(masked)) == {0.0, 1.0}
    noisy = np.asarray(ae.corrupt(halves, _key(6), "gaussian", 0.2)) - 0.5
    assert np.std(noisy) == pytest.approx(0.2, rel=0.01) and abs(np.mean(noisy)) < 0.002
    sp = np.asarray(ae.corrupt(halves, _key(7), "salt_pepper", 0.2))
    assert np.mean(sp == 0) == pytest.approx(0.1, abs=0.003)
    assert np.mean(sp == 1) == pytest.approx(0.1, abs=0.003)
    assert np.mean(sp == 0.5) == pytest.approx(0.8, abs=0.004)
    assert ae.corrupt(halves, _key(8), "none", 0.5) is halves
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        ae.corrupt(halves, _key(8), "blur", 0.5)


def test_denoising_prepare_keeps_the_clean_target():
    task = ReconstructionTask(input_size=64, corruption="masking", mask_fraction=0.5)
    images = jnp.ones((4, *SHAPE))
    batch = task.prepare({"image": images, "label": jnp.zeros(4, jnp.int32)}, 3, _key(9))
    np.testing.assert_array_equal(batch["image"], images)  # the target
    assert task.inputs(batch) is batch["noisy"] and 0.3 < float(jnp.mean(batch["noisy"])) < 0.7
    again = task.prepare({"image": images}, 3, _key(9))["noisy"]
    np.testing.assert_array_equal(again, batch["noisy"])  # a function of the key only
    plain = ReconstructionTask(input_size=64).prepare({"image": images}, 3, None)
    assert task.inputs(plain) is images and "kl_weight" not in plain


def _finite_difference(f, x, eps=1e-3):
    flat = np.asarray(x, np.float32).ravel()
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (f(up.reshape(x.shape)) - f(down.reshape(x.shape))) / (2 * eps)
    return grad.reshape(x.shape)


def test_sparsity_penalty_gradients():
    h = jax.random.uniform(_key(10), (5, 3), minval=0.05, maxval=0.95)
    weight, rho = 0.7, 0.1
    # L1: d/dh of weight * mean|h| is weight * sign(h) / h.size.
    l1 = jax.grad(lambda v: ae.sparsity_penalty(v, "l1", weight, rho))(h - 0.5)
    np.testing.assert_allclose(l1, weight * np.sign(h - 0.5) / h.size, rtol=1e-6)
    # KL: with rho_j = mean_b h_bj, d/dh_bj = weight / B * ((1 - rho) / (1 - rho_j) - rho / rho_j).
    kl_fn = lambda v: ae.sparsity_penalty(v, "kl", weight, rho)  # noqa: E731
    rho_j = np.mean(np.asarray(h, np.float64), axis=0)
    hand = weight / h.shape[0] * ((1 - rho) / (1 - rho_j) - rho / rho_j)
    grad = np.asarray(jax.grad(kl_fn)(h))
    np.testing.assert_allclose(grad, np.broadcast_to(hand, h.shape), rtol=1e-4)
    numeric = _finite_difference(lambda v: float(kl_fn(jnp.asarray(v))), h)
    np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=1e-3)
    # The penalty itself against the formula; zero when every unit is at the target.
    value = weight * np.sum(rho * np.log(rho / rho_j) + (1 - rho) * np.log((1 - rho) / (1 - rho_j)))
    assert float(kl_fn(h)) == pytest.approx(value, rel=1e-5)
    assert float(kl_fn(jnp.full((4, 3), rho))) == pytest.approx(0.0, abs=1e-6)


# --- active units -------------------------------------------------------------------------------


def test_active_units_from_constructed_posterior_means():
    rng = np.random.default_rng(0)
    stds = np.array([1.0, 0.5, 0.2, 0.05, 0.0])  # variances 1, .25, .04, .0025, 0 -> 3 active
    means = rng.standard_normal((4000, 5)) * stds + np.array([3.0, -1.0, 0.0, 2.0, 5.0])
    batches = np.split(means, 8)  # summed batch by batch, as the eval loop does
    s1 = sum(b.sum(0) for b in batches)
    s2 = sum(np.square(b).sum(0) for b in batches)
    assert ae.active_units(s1, s2, 4000) == 3
    np.testing.assert_allclose(ae.latent_activity(s1, s2, 4000), np.var(means, 0), rtol=1e-9)
    # Through the task: padded rows (mask 0) with wild means must not count.
    task = ReconstructionTask(input_size=1, vae=True, iwae_samples=1)
    x = jnp.full((6, 1), 0.5)
    mean = jnp.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.05], [-1.0, -0.05], [50.0, 50.0], [0, 9]])
    aux = {
        "mean": mean,
        "logvar": jnp.zeros((6, 2)),
        "samples": mean[None],
        "sample_outputs": jnp.zeros((1, 6, 1)),
    }
    mask = jnp.array([1.0, 1, 1, 1, 0, 0])
    sums = task.eval_sums(jnp.zeros((6, 1)), aux, {"image": x, "mask": mask})
    metrics = task.finalize(jax.device_get(sums))
    assert metrics["active_units"] == 1.0  # unit 0 varies by 1, unit 1 by 0.00125
    assert task.summary(jax.device_get(sums))["latent_activity"] == pytest.approx([1.0, 0.00125])


# --- the task's losses --------------------------------------------------------------------------


def test_vae_loss_terms_against_hand_computation():
    x = jnp.array([[0.0, 1.0, 0.5], [0.2, 0.9, 0.4]])
    mean, logvar = jnp.array([[0.5, -1.0], [0.0, 0.3]]), jnp.array([[0.1, -0.4], [0.0, 0.2]])
    outputs = jnp.array([[0.1, 0.8, 0.5], [0.3, 0.7, 0.2]])
    x64, o64 = np.asarray(x, np.float64), np.asarray(outputs, np.float64)
    m64, lv64 = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    kl = np.sum(0.5 * (np.square(m64) + np.exp(lv64) - 1 - lv64), -1)
    aux = {"mean": mean, "logvar": logvar, "hidden": jnp.zeros((2, 4))}
    # Gaussian decoder (outputs are means), sigma = 0.2.
    task = ReconstructionTask(input_size=3, vae=True, reconstruction_loss="mse", beta=2.0)
    gauss_aux = {**aux, "logscale": jnp.float32(math.log(0.2))}
    loss, m = task.loss(outputs, gauss_aux, {"image": x})
    rec = np.sum(
        0.5 * np.square((x64 - o64) / 0.2) + math.log(0.2) + 0.5 * math.log(2 * math.pi), -1
    )
    assert float(m["reconstruction"]) == pytest.approx(rec.mean(), rel=1e-5)
    assert float(m["kl"]) == pytest.approx(kl.mean(), rel=1e-5)
    assert float(loss) == pytest.approx(rec.mean() + 2.0 * kl.mean(), rel=1e-5)
    assert float(m["mse"]) == pytest.approx(np.mean(np.square(x64 - o64)), rel=1e-5)
    # Bernoulli decoder (outputs are logits); the annealed weight in the batch replaces beta.
    task = ReconstructionTask(input_size=3, vae=True, beta=2.0)
    loss, m = task.loss(outputs, aux, {"image": x, "kl_weight": jnp.float32(0.25)})
    p = 1 / (1 + np.exp(-o64))
    bce = -np.sum(x64 * np.log(p) + (1 - x64) * np.log(1 - p), -1)
    assert float(loss) == pytest.approx(bce.mean() + 0.25 * kl.mean(), rel=1e-5)
    assert float(m["elbo"]) == pytest.approx(-(bce + kl).mean(), rel=1e-5)


def test_autoencoder_loss_is_per_pixel_plus_sparsity():
    x = jnp.array([[0.0, 1.0], [0.5, 0.25]])
    logits = jnp.array([[-1.0, 2.0], [0.0, 0.5]])
    hidden = jnp.array([[0.5, -1.0], [2.0, 0.0]])
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    mse = np.mean(np.square(p - np.asarray(x)))
    task = ReconstructionTask(input_size=2, reconstruction_loss="mse", sparsity="l1")
    loss, m = task.loss(logits, {"hidden": hidden}, {"image": x})
    assert float(m["reconstruction"]) == pytest.approx(mse, rel=1e-5)
    assert float(loss) == pytest.approx(mse + 1e-3 * 0.875, rel=1e-5)
    # A flat model output (an MLP with input_size outputs) is scored in the image's shape.
    images = jnp.zeros((2, 1, 2, 1))
    flat, _ = ReconstructionTask(input_size=2).loss(jnp.zeros((2, 2)), {}, {"image": images})
    assert float(flat) == pytest.approx(math.log(2.0), rel=1e-6)


def test_reconstruction_config_errors():
    with pytest.raises(ConfigError, match="task.loss 'l2'"):
        get_task(task_config(loss="l2"), num_classes=10, input_size=64)
    with pytest.raises(ConfigError, match="no option task.betta"):
        get_task({**task_config(), "betta": 1.0}, num_classes=10, input_size=64)
    with pytest.raises(ConfigError, match="task.mask_fraction must be in"):
        get_task(task_config(mask_fraction=1.5), num_classes=None, input_size=64)
    task = get_task(task_config(loss="mse", vae=True), num_classes=None, input_size=64)
    assert isinstance(task, ReconstructionTask) and task.reconstruction_loss == "mse"
    ae_model = get_model({"name": "ae_tiny"}, num_classes=0, input_shape=SHAPE)
    vae_model = get_model({"name": "vae_tiny"}, num_classes=0, input_shape=SHAPE)
    with pytest.raises(ConfigError, match="model.likelihood='gaussian'"):
        task.check_model(vae_model)
    with pytest.raises(ConfigError, match="Gaussian encoder"):
        task.check_model(ae_model)
    with pytest.raises(ConfigError, match="set task.vae=True"):
        ReconstructionTask(input_size=64).check_model(vae_model)
    with pytest.raises(ConfigError, match="model.activation='sigmoid'"):
        ReconstructionTask(input_size=64, sparsity="kl").check_model(ae_model)


# --- models -------------------------------------------------------------------------------------


def _every_method(model, x):
    """Init, __call__, encode, decode of the code and (VAEs) generate, in one compiled call."""
    variables = model.init(_key(12), x, train=False)
    outputs, aux = model.apply(variables, x, train=False)
    code = model.apply(variables, x, method="encode")
    decoded = model.apply(variables, aux["latent"], method="decode")
    images = None
    if isinstance(model, (VAE, ConvVAE)):
        images = model.apply(variables, 5, method="generate", rngs={"sample": _key(13)})
    return outputs, aux, code, decoded, images


@pytest.mark.parametrize("name", GENERATIVE)
def test_every_generative_model_encodes_decodes_and_generates(name):
    # Odd sizes (transposed convs are cropped back to the input's size) for the tiny
    # autoencoders; the VAEs share their decoders.
    odd = (7, 5, 2) if name.startswith("conv") else (3, 5)
    for shape in [SHAPE, odd] if name in ("ae_tiny", "conv_ae_tiny") else [SHAPE]:
        model = get_model({"name": name}, num_classes=10, input_shape=shape)
        x = jax.random.uniform(_key(11), (3, *shape))
        outputs, aux, code, decoded, images = jax.jit(functools.partial(_every_method, model))(x)
        latent = model.latent_size
        assert outputs.shape == x.shape and outputs.dtype == jnp.float32
        assert aux["latent"].shape == (3, latent) and aux["hidden"].shape[0] == 3
        np.testing.assert_allclose(decoded, outputs, rtol=1e-6, atol=1e-6)
        if images is None:
            np.testing.assert_array_equal(code, aux["latent"])
            continue
        np.testing.assert_array_equal(code[0], aux["mean"])
        assert code[1].shape == (3, latent) and set(aux) == {"mean", "logvar", "latent", "hidden"}
        assert images.shape == (5, *shape) and 0 <= float(images.min()) <= float(images.max()) <= 1


def test_parameter_names_carry_encoder_decoder_and_depth():
    def paths(name, **overrides):
        model = get_model({"name": name, **overrides}, num_classes=10, input_shape=SHAPE)
        init = functools.partial(model.init, train=False)
        params = jax.eval_shape(init, _key(0), jnp.zeros((1, *SHAPE)))["params"]
        return sorted("/".join(k) for k in flax.traverse_util.flatten_dict(params))

    layers = ["layer1/bias", "layer1/kernel"]
    assert paths("ae_tiny") == [
        *(f"decoder/{p}" for p in layers),
        "decoder/output/bias",
        "decoder/output/kernel",
        "encoder/latent/bias",
        "encoder/latent/kernel",
        *(f"encoder/{p}" for p in layers),
    ]
    conv = paths("conv_vae_tiny", likelihood="gaussian", learn_scale=True)
    for p in ("encoder/stage2/conv/kernel", "encoder/mean/kernel", "encoder/logvar/bias"):
        assert p in conv
    for p in ("decoder/project/kernel", "decoder/stage2/conv/kernel", "decoder/logscale"):
        assert p in conv
    assert "decoder/logscale" not in paths("vae_tiny", likelihood="gaussian")  # fixed scale


def test_vae_samples_only_when_training_or_asked():
    model = get_model({"name": "vae_tiny"}, num_classes=10, input_shape=SHAPE)
    x = jax.random.uniform(_key(14), (4, *SHAPE))
    variables = model.init(_key(15), x, train=False)
    _, eval_aux = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_aux["latent"], eval_aux["mean"])
    _, a = model.apply(variables, x, train=True, rngs={"sample": _key(16)})
    _, b = model.apply(variables, x, train=False, sample=True, rngs={"sample": _key(16)})
    np.testing.assert_array_equal(a["latent"], b["latent"])  # same key, same eps
    eps = (a["latent"] - a["mean"]) / jnp.exp(0.5 * a["logvar"])
    assert abs(float(jnp.std(eps)) - 1) < 0.5 and not np.allclose(eps, 0)
    _, c = model.apply(variables, x, train=True, rngs={"sample": _key(17)})
    assert not np.allclose(a["latent"], c["latent"])


def test_get_model_needs_the_input_shape_and_image_inputs_for_convolutions():
    with pytest.raises(ConfigError, match="model.input_shape"):
        get_model({"name": "ae_tiny"}, num_classes=10)
    with pytest.raises(ConfigError, match="needs images"):
        get_model({"name": "conv_ae_tiny"}, num_classes=10, input_shape=(64,))
    with pytest.raises(ConfigError, match="unknown model.likelihood 'poisson'"):
        get_model({"name": "vae_tiny", "likelihood": "poisson"}, num_classes=10, input_shape=SHAPE)
    model = get_model(
        {"name": "ae_tiny", "input_shape": (4, 4, 1)}, num_classes=3, input_shape=SHAPE
    )
    assert model.input_shape == (4, 4, 1)  # the config's own shape wins


# --- rng streams of the steps -------------------------------------------------------------------


def _step_parts(model_config, task, sample):
    model = get_model(model_config, num_classes=10, input_shape=SHAPE)
    config = base_config()
    config.total_steps, config.optimizer.warmup_steps = 10, 1
    abstract = jax.eval_shape(lambda: model.init(_key(0), sample, train=False))["params"]
    optimizer = build_optimizer(config, abstract)
    state = make_init_fn(model, optimizer.tx, sample)(_key(0))
    return model, optimizer, state


def test_dropout_key_is_unchanged_by_the_sample_stream():
    """The train step's dropout key stays fold_in(state.rng, step): classification runs are
    bit-identical to the steps before the sample stream existed."""
    task = ClassificationTask(num_classes=10)
    images = jax.random.uniform(_key(18), (16, *SHAPE))
    batch = {"image": images, "label": jnp.arange(16, dtype=jnp.int32) % 10}
    model, optimizer, state = _step_parts(
        {"name": "mlp_tiny", "dropout_rate": 0.5}, task, images[:1]
    )
    state = state.replace(step=jnp.int32(3))
    _, metrics = jax.jit(make_train_step(model, task, optimizer))(state, batch)
    logits, _ = model.apply(
        {"params": state.params},
        images,
        train=True,
        rngs={"dropout": jax.random.fold_in(state.rng, 3)},
    )
    assert float(metrics["train/loss"]) == float(task.loss(logits, {}, batch)[0])


def test_vae_eval_is_deterministic_and_training_samples():
    task = ReconstructionTask(input_size=64, vae=True, corruption="gaussian", iwae_samples=4)
    images = jax.random.uniform(_key(19), (8, *SHAPE))
    model, optimizer, state = _step_parts({"name": "vae_tiny"}, task, images[:1])
    batch = {"image": images, "label": jnp.zeros(8, jnp.int32), "mask": jnp.ones(8)}
    eval_step = jax.jit(make_eval_step(model, task))
    first, second = eval_step(state, batch), eval_step(state, batch)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    train_step = jax.jit(make_train_step(model, task, optimizer))
    _, a = train_step(state, batch)
    _, b = train_step(state.replace(step=jnp.int32(1)), batch)
    assert float(a["train/kl_weight"]) == 1.0
    assert float(a["train/reconstruction"]) != float(b["train/reconstruction"])  # new noise


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _tiny_run(tmp_path, data_dir, monkeypatch, kind, sigterm_at=None, **extra):
    overrides = {
        "total_epochs": None,
        "total_steps": 50,
        "log_every_steps": 1,
        "eval_every_steps": 10,
        "checkpoint.every_steps": 50,
        "optimizer.warmup_steps": 5,
        "optimizer.learning_rate": 1e-2,
        "model.name": f"{kind}_tiny",
        "model.hidden_sizes": (16,),
        "model.latent_size": 4,
        "tracking.progress": False,
        "tracking.plots": False,
    }
    if kind == "vae":
        overrides |= {"task.kl_warmup_steps": 20, "task.iwae_samples": 8}
    path = ROOT / "configs" / "generative" / f"{kind}_digits.py"
    overrides |= extra
    result = _in_process(tmp_path, data_dir, overrides, monkeypatch, sigterm_at, config_path=path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    return result, rows


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_tiny_run_reconstruction_error_falls(tmp_path, data_dir, monkeypatch, kind):
    result, rows = _tiny_run(tmp_path, data_dir, monkeypatch, kind)
    summary = result.summary
    eval_mse = {r["step"]: r["eval/mse"] for r in rows if "eval/mse" in r}
    assert eval_mse[50] < 0.8 * eval_mse[10], eval_mse
    train = [r["train/reconstruction"] for r in rows if "train/reconstruction" in r]
    assert len(train) == 50 and np.mean(train[-5:]) < 0.8 * np.mean(train[:5])
    assert summary["test/mse"] < 0.1 and summary["test/loss"] > 0
    if kind == "vae":
        weights = [r["train/kl_weight"] for r in rows if "train/kl_weight" in r]
        assert weights[0] == 0.0 and weights[10] == 0.5 and weights[-1] == 1.0
        assert summary["test/loss"] == -summary["test/elbo"]
        assert summary["test/iwae"] > summary["test/elbo"]
        assert 0 <= summary["test/active_units"] <= 4


def _losses(rows: list[dict]) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_denoising_vae_resumes_exactly(tmp_path, data_dir, monkeypatch):
    """Corruption and reparameterisation noise are functions of (seed, step): a run stopped by
    SIGTERM and resumed logs the same losses and final metrics as an uninterrupted one."""
    noisy = {"task.corruption": "salt_pepper", "checkpoint.every_steps": 10}
    whole, rows = _tiny_run(tmp_path / "whole", data_dir, monkeypatch, "vae", **noisy)
    first, _ = _tiny_run(tmp_path / "split", data_dir, monkeypatch, "vae", sigterm_at=23, **noisy)
    assert first.status == "preempted"
    second, resumed = _tiny_run(tmp_path / "split", data_dir, monkeypatch, "vae", **noisy)
    assert _losses(resumed) == _losses(rows) and len(_losses(rows)) == 50
    for key in ("test/elbo", "test/iwae", "test/mse", "test/input_mse"):
        assert second.summary[key] == whole.summary[key], key
