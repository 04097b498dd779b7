"""End-of-run evaluations of autoencoders and VAEs: anomaly metrics against scikit-learn and hand
examples, the PCA baseline against a NumPy SVD, the latent probe, the per-example anomaly score
against the task's eval metrics, the train-only class exclusion, and tiny runs that write the
figures and summary entries."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.metrics import precision_recall_curve, precision_recall_fscore_support
from test_loop import _in_process

from mock_tfds import fake_prepared
from research import config as cfg
from research.analysis import anomaly
from research.data.subsets import labels_of
from research.errors import ConfigError
from research.models import get_model
from research.reporting import generative as ga
from research.reporting import generative_figures as gf
from research.tasks import ReconstructionTask
from research.train import loop
from research.train.setup import build_run

ROOT = Path(__file__).parents[1]
SHAPE = (8, 8, 1)


def _fixed_scores(seed: int = 0, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping normal / anomalous scores, rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)
    return scores, labels


# --- anomaly metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [-0.5, 0.3, 1.0, 2.2, 9.0])
def test_precision_recall_f1_match_sklearn(threshold):
    scores, labels = _fixed_scores()
    ours = anomaly.precision_recall_f1(scores, labels, threshold)
    ref = precision_recall_fscore_support(
        labels, scores >= threshold, average="binary", zero_division=0
    )
    np.testing.assert_allclose([ours["precision"], ours["recall"], ours["f1"]], ref[:3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_f1_threshold_is_the_best_point_of_sklearns_pr_curve(seed):
    scores, labels = _fixed_scores(seed)
    threshold, f1 = anomaly.best_f1_threshold(scores, labels)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve_f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    assert f1 == pytest.approx(curve_f1.max(), rel=1e-12)
    best = thresholds[np.isclose(curve_f1, curve_f1.max(), rtol=1e-12)]
    assert threshold == best.max()  # among ties, the highest threshold
    assert anomaly.precision_recall_f1(scores, labels, threshold)["f1"] == pytest.approx(f1)


def test_auroc_matches_a_pairwise_count():
    scores, labels = _fixed_scores()
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    assert anomaly.auroc(scores, labels) == pytest.approx(wins / (pos.size * neg.size))


def test_validation_threshold_applied_to_test_on_a_hand_example():
    # F1 on validation at each distinct score (flag score >= t), 3 anomalies:
    # t=.6: 2*1/(1+3)=.5; .5: 4/5=.8; .4: 4/6; .3: 6/7 (best); .2: 6/8; .1: 6/9.
    val = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    val_labels = np.array([0, 0, 1, 0, 1, 1], bool)
    test = np.array([0.25, 0.35, 0.31, 0.2, 0.9])
    test_labels = np.array([0, 1, 0, 1, 1], bool)
    out = anomaly.report(val, val_labels, test, test_labels, prefix="a/")
    assert out["a/threshold"] == 0.3 and out["a/val_f1"] == pytest.approx(6 / 7)
    # Test flags 0.35, 0.31, 0.9: tp 2, fp 1, fn 1.
    assert out["a/test_precision"] == pytest.approx(2 / 3)
    assert out["a/test_recall"] == pytest.approx(2 / 3)
    assert out["a/test_f1"] == pytest.approx(2 / 3)
    # Pairs (anomaly, normal) ordered correctly: .35>.25,.35>.31, .2<both, .9>both -> 4/6.
    assert out["a/test_auroc"] == pytest.approx(4 / 6)
    # Ties: the highest of the equally good thresholds.
    assert anomaly.best_f1_threshold(np.array([1.0, 2.0, 2.0, 3.0]), np.array([0, 1, 1, 1]))[
        0
    ] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="anomalous"):
        anomaly.best_f1_threshold(val, np.zeros(6, bool))


# --- PCA baseline and probe --------------------------------------------------------------------


def test_pca_errors_match_a_numpy_svd_reconstruction():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(5, 12))
    train = rng.normal(size=(60, 5)) @ mixing + 0.1 * rng.normal(size=(60, 12)) + 3.0
    test = rng.normal(size=(20, 5)) @ mixing + 0.1 * rng.normal(size=(20, 12)) + 3.0
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    for k in (1, 3, 5):
        basis = vt[:k].T
        recon = mean + (test - mean) @ basis @ basis.T
        expected = np.mean(np.square(recon - test), axis=1)
        got = ga.pca_errors(train.reshape(60, 3, 4), test.reshape(20, 3, 4), k)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    full = ga.pca_errors(train, test, 12)
    np.testing.assert_allclose(full, 0.0, atol=1e-20)  # every component: exact


def _blobs(n: int, scale: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    latents = scale * (centres[labels] + rng.normal(size=(n, 3)))
    return {"latent": latents.astype(np.float32), "label": labels}


def test_probe_separates_separable_latents_and_skips_unseen_classes():
    train, test = _blobs(150, 1.0, 0), _blobs(60, 1.0, 1)
    out = ga.linear_probe(train, test, seed=0)
    assert out["probe/train_accuracy"] == 1.0 and out["probe/test_accuracy"] == 1.0
    # A test class the train split lacks (an anomaly run's held-out class) is left out.
    outsider = {"latent": np.full((10, 3), 50.0, np.float32), "label": np.full(10, 7)}
    both = {k: np.concatenate([test[k], outsider[k]]) for k in test}
    assert ga.linear_probe(train, both, seed=0)["probe/test_accuracy"] == 1.0


def test_probe_does_not_standardise_a_collapsed_posterior():
    """Latents shrunk towards 0 (a collapsed posterior keeps only a trace of the input) are not
    rescaled, so the probe scores near chance where standardised features would score 100%."""
    train, test = _blobs(150, 1e-6, 0), _blobs(60, 1e-6, 1)
    assert ga.linear_probe(train, test, seed=0)["probe/test_accuracy"] < 0.5


def test_latent_arithmetic_moves_an_example_by_the_class_mean_difference():
    latents = np.array([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [12.0, 14.0], [0.0, 5.0]])
    labels = np.array([0, 0, 1, 1, 2])
    # z(x0) - mean(class 0) + mean(class 1) = (1, 0) - (2, 1) + (11, 12)
    np.testing.assert_allclose(gf.latent_arithmetic(latents, labels, 0, 1), [10.0, 11.0])
    np.testing.assert_allclose(gf.latent_arithmetic(latents, labels, 4, 2), latents[4])


# --- the per-example score against the task's eval metrics -------------------------------------


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_per_example_scores_average_to_the_task_eval_metrics(likelihood):
    """The VAE's anomaly score is the negative ELBO per example: with the eval step's samples
    its mean is -eval/elbo; the mse column averages to eval/mse (the autoencoder's score)."""
    options = {"name": "vae_tiny", "likelihood": likelihood}
    model = get_model(options, num_classes=10, input_shape=SHAPE)
    images = jax.random.uniform(jax.random.PRNGKey(0), (32, *SHAPE))
    variables = model.init(jax.random.PRNGKey(1), images[:1], train=False)
    loss = "bce" if likelihood == "bernoulli" else "mse"
    task = ReconstructionTask(input_size=64, vae=True, iwae_samples=5, reconstruction_loss=loss)
    batch = {"image": images, "mask": jnp.ones(32)}
    rng = jax.random.PRNGKey(2)
    apply = functools.partial(model.apply, variables)
    metrics = task.finalize(
        jax.device_get(task.eval_sums(*task.eval_outputs(apply, batch, rng), batch))
    )
    sample_rng = jax.random.split(rng)[1]  # the key the task's eval draws its samples with
    out = ga.pass_fn(model, task)(variables, images, sample_rng)
    assert float(np.mean(out["score"])) == pytest.approx(-metrics["elbo"], rel=1e-5)
    assert float(np.mean(out["mse"])) == pytest.approx(metrics["mse"], rel=1e-5)
    np.testing.assert_array_equal(out["latent"], model.apply(variables, images, method="encode")[0])


# --- class exclusion and config checks ---------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir: str, kind: str = "ae", **overrides):
    config = cfg.load_config_file(ROOT / "configs" / "generative" / f"{kind}_digits.py")
    cfg.apply_overrides(config, {"data.data_dir": data_dir, **overrides})
    return config


def test_train_exclude_classes_drops_them_from_train_only(data_dir):
    full = build_run(_config(data_dir))
    run = build_run(_config(data_dir, **{"data.train_exclude_classes": (8, 3)}))
    before, after = labels_of(full.sources["train"]), labels_of(run.sources["train"])
    assert set(after.tolist()) == set(range(10)) - {3, 8}  # labels unchanged (9 stays 9)
    assert after.size == before.size - np.isin(before, (3, 8)).sum()
    np.testing.assert_array_equal(after, before[~np.isin(before, (3, 8))])
    for prefix in ("eval", "test"):  # the held-out classes stay where they are scored
        np.testing.assert_array_equal(
            labels_of(run.sources[prefix]), labels_of(full.sources[prefix])
        )
    # Epoch durations count the remaining train examples.
    assert run.total_steps == int(np.ceil(100 * after.size / 64))


def test_exclusion_and_anomaly_config_errors(data_dir):
    with pytest.raises(ConfigError, match="train_exclude_classes: class 12"):
        build_run(_config(data_dir, **{"data.train_exclude_classes": (12,)}))
    with pytest.raises(ConfigError, match="cannot be combined"):
        build_run(_config(data_dir, **{"data.train_exclude_classes": (1,), "data.classes": (0, 1)}))
    run = build_run(_config(data_dir, **{"evaluation.anomaly_classes": (11,)}))
    with pytest.raises(ConfigError, match="anomaly_classes: class 11"):
        ga.check_config(run)
    smoke = cfg.load_config_file(ROOT / "configs" / "smoke.py")
    cfg.apply_overrides(smoke, {"data.data_dir": data_dir, "evaluation.anomaly_classes": (1,)})
    with pytest.raises(ConfigError, match="task.name='reconstruction'"):
        ga.check_config(build_run(smoke))


# --- tiny end-to-end runs ----------------------------------------------------------------------


def _tiny_run(tmp_path, data_dir, monkeypatch, kind, **extra):
    overrides = {
        "total_epochs": None,
        "total_steps": 60,
        "eval_every_steps": 30,
        "checkpoint.every_steps": 60,
        "optimizer.warmup_steps": 5,
        "optimizer.learning_rate": 1e-2,
        "model.name": f"{kind}_tiny",
        "model.hidden_sizes": (32,),
        "model.latent_size": 4,
        "tracking.progress": False,
        "evaluation.embedding_examples": 100,
        "data.train_exclude_classes": (8,),
        "evaluation.anomaly_classes": (8,),
        **extra,
    }
    if kind == "vae":
        overrides |= {"task.kl_warmup_steps": 20, "task.iwae_samples": 4}
    config_path = ROOT / "configs" / "generative" / f"{kind}_digits.py"
    result = _in_process(tmp_path, data_dir, overrides, monkeypatch, config_path=config_path)
    return result.summary, json.loads((tmp_path / "config.json").read_text())


def _split(run, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    source = run.sources[prefix]
    records = [run.transform(source[i]) for i in range(len(source))]
    images = np.stack([r["image"] for r in records]).reshape(len(records), -1)
    return images.astype(np.float64), np.asarray([r["label"] for r in records])


def _svd_errors(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    mean = train.mean(axis=0)
    basis = np.linalg.svd(train - mean, full_matrices=False)[2][:k].T
    return np.mean(np.square(mean + (test - mean) @ basis @ basis.T - test), axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_tiny_run_writes_figures_and_summary_entries(tmp_path, data_dir, monkeypatch, kind):
    extra = {"task.corruption": "masking"} if kind == "ae" else {}
    summary, config_json = _tiny_run(tmp_path, data_dir, monkeypatch, kind, **extra)
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    expected = {
        "test_reconstructions.png",
        "test_interpolation.png",
        "test_latent_arithmetic.png",
        "test_latent_map.png",
        "anomaly_scores.png",
    }
    assert expected <= plots and (kind == "vae") == ("prior_samples.png" in plots)
    # The PCA baseline and its anomaly AUROC against an independent SVD on the same data.
    run = build_run(cfg.from_json(json.dumps(config_json)))
    (train, _), (test, test_labels) = _split(run, "train"), _split(run, "test")
    errors = _svd_errors(train, test, 4)
    assert summary["test/pca_mse"] == pytest.approx(errors.mean(), rel=1e-6)
    is_eight = test_labels == 8
    assert summary["anomaly/pca_test_auroc"] == pytest.approx(anomaly.auroc(errors, is_eight))
    for prefix in ("anomaly/", "anomaly/pca_"):
        for name in ("test_auroc", "test_precision", "test_recall", "test_f1", "val_f1"):
            assert 0.0 <= summary[f"{prefix}{name}"] <= 1.0
    assert all(type(v) is float for k, v in summary.items() if k.startswith("anomaly/"))
    # 60 steps leave the model near the mean image (its AUROC is then meaningless), but its
    # latents already carry the class: the probe beats chance (0.1) by far (measured 0.58-0.73).
    assert summary["probe/test_accuracy"] > 0.3


@pytest.mark.slow
def test_conv_vae_mnist_config_runs_on_mock_data(tmp_path):
    data_dir = str(tmp_path / "tfds")
    fake_prepared("mnist", data_dir, {"train": 80, "test": 80})  # mock_data serves 80 per split
    config = cfg.load_config_file(ROOT / "configs" / "generative" / "conv_vae_mnist.py")
    overrides = {
        "data.data_dir": data_dir,
        "batch_size": 16,
        "total_epochs": None,
        "total_steps": 3,
        "eval_every_epochs": None,
        "optimizer.warmup_epochs": None,
        "checkpoint.every_epochs": None,
        "model.stage_features": (4, 8),
        "model.latent_size": 2,
        "task.kl_warmup_steps": 2,
        "task.iwae_samples": 2,
        "tracking.progress": False,
        "tracking.plots": False,  # the figures are tested on digits; the entries need no plots
    }
    cfg.apply_overrides(config, overrides)
    with tfds.testing.mock_data(
        num_examples=80, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir
    ):
        result = loop.train_and_evaluate(config, tmp_path / "run")
        run = build_run(config)
        (train, _), (test, _) = _split(run, "train"), _split(run, "test")
    summary = result.summary
    assert summary["test/pca_mse"] == pytest.approx(_svd_errors(train, test, 2).mean(), rel=1e-6)
    assert 0.0 <= summary["probe/test_accuracy"] <= 1.0 and summary["test/active_units"] <= 2
    assert not (tmp_path / "run" / "plots").exists()


SWEPT = ("anomaly_digits", "vae_digits")


@pytest.mark.parametrize(
    "name, args, bad",
    [
        ("dae_digits", ("masking", "gaussian"), "salt"),
        ("sparse_ae_digits", ("l1", "kl"), "l2"),
        ("anomaly_digits", ("8", "3"), "10"),
        ("vae_digits", (None, "conv"), None),
        ("conv_vae_mnist", ("mnist", "fashion_mnist"), "cifar10"),
    ],
)
def test_generative_configs_load_and_their_sweeps_apply(name, args, bad):
    path = ROOT / "configs" / "generative" / f"{name}.py"
    for arg in args:
        config = cfg.load_config_file(path, arg)
        assert config.task.name == "reconstruction"
        if name == "anomaly_digits":
            assert config.data.train_exclude_classes == config.evaluation.anomaly_classes
            assert config.evaluation.anomaly_classes == (int(arg),)
        if name in SWEPT:
            for overrides in cfg.config_function(path, "get_sweep")(arg):
                cfg.apply_overrides(config, overrides)
    if bad is not None:
        with pytest.raises(ConfigError, match="choose one of"):
            cfg.load_config_file(path, bad)
