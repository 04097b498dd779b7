"""Sequence runs: forecast windows scored in original units beside their baselines, the tasks'
metrics against hand computations, truncated BPTT (state carried, gradients cut), and tiny
end-to-end runs of every study config (text ones on TFDS mock data)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from test_loop import _in_process

from mock_tfds import fake_prepared
from research import config as cfg
from research.analysis import stationarity
from research.data import sequences
from research.data.builders.series import sunspots_series
from research.data.text import OOV, PAD, Vocabulary
from research.models import get_model
from research.optim import build_optimizer
from research.tasks import LanguageModelTask, RegressionTask, get_task
from research.train import loop
from research.train.state import make_init_fn
from research.train.step import make_train_step
from research.train.step_parts import TruncatedBPTT, default_parts

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs" / "sequence"
FAST = {"parallel.num_devices": 1, "tracking.progress": False, "tracking.plots": False}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def _config(name: str, data_dir: str, **overrides):
    name, _, arg = name.partition(":")
    config = cfg.load_config_file(str(CONFIGS / name), arg or None)
    cfg.apply_overrides(config, {"data.data_dir": data_dir, **FAST, **overrides})
    return config


def _prepared(config):
    from research import data
    from research.train.setup import split_names

    info = data.dataset_info(config.data.name, config.data.data_dir)
    names = split_names(config.data, info.splits)
    return sequences.prepare(config.data, info, names, config.batch_size)


# --- forecast windows --------------------------------------------------------------------------


def test_sunspots_windows_scale_on_the_training_period_and_baselines_match_numpy(data_dir):
    config = _config("sunspots.py", data_dir, **{"data.series.difference": False})
    prepared = _prepared(config)
    _, values = sunspots_series()
    y = np.asarray(values, np.float64)
    a, b = prepared.periods["train"][1], prepared.periods["test"][0]
    assert (a, b) == (round(309 * 0.7), round(309 * 0.85))
    test = prepared.sources["test"].arrays
    # Test windows: every origin whose next value lies in the test period.
    np.testing.assert_array_equal(test["origin"], np.arange(b - 1, 308))
    np.testing.assert_allclose(test["truth"][:, 0, 0], y[b:], rtol=1e-6)
    np.testing.assert_allclose(test["naive"][:, 0, 0], y[b - 1 : 308], rtol=1e-6)
    np.testing.assert_allclose(test["seasonal_naive"][:, 0, 0], y[b - 11 : 309 - 11], rtol=1e-6)
    # The scaler is the training period's mean and std; inputs are scaled with it.
    np.testing.assert_allclose(test["scale"][0, 0], y[:a].std(), rtol=1e-5)
    np.testing.assert_allclose(test["offset"][0, 0], y[:a].mean(), rtol=1e-5)
    first = test["origin"][0]
    expected = (y[first - 23 : first + 1] - y[:a].mean()) / y[:a].std()
    np.testing.assert_allclose(test["inputs"][0, :, 0], expected, rtol=1e-5, atol=1e-6)
    # Training targets never reach into the eval period.
    assert prepared.sources["train"].arrays["origin"].max() == a - 2


def _eval_with_outputs(task, source, outputs):
    batch = {k: jnp.asarray(v) for k, v in source.arrays.items()}
    batch["mask"] = jnp.ones(len(source), jnp.float32)
    sums = task.eval_sums(jnp.asarray(outputs), {}, batch)
    return task.finalize(jax.tree.map(np.asarray, sums)), task.summary(sums)


def test_a_differenced_forecast_of_no_change_scores_exactly_as_the_naive_baseline(data_dir):
    config = _config("sunspots.py", data_dir, **{"data.series.difference": True})
    prepared = _prepared(config)
    task = get_task(
        config.task,
        num_classes=None,
        output_shape=prepared.output_shape,
        log_levels=prepared.log_levels,
    )
    test = prepared.sources["test"]
    metrics, summary = _eval_with_outputs(task, test, np.zeros((len(test), 1)))
    assert metrics["rmse"] == pytest.approx(metrics["naive_rmse"], rel=1e-6)
    truth, naive = test.arrays["truth"], test.arrays["naive"]
    assert metrics["naive_rmse"] == pytest.approx(np.sqrt(np.mean((truth - naive) ** 2)), rel=1e-5)
    assert summary["beats"]["naive"] is False  # equal is not better


def test_regression_metrics_in_original_units_against_hand_values():
    task = RegressionTask(output_shape=(2, 1))
    batch = {
        "targets": jnp.zeros((2, 2, 1)),
        "truth": jnp.array([[[10.0], [20.0]], [[30.0], [40.0]]]),
        "scale": jnp.array([[2.0], [2.0]]),
        "offset": jnp.array([[10.0], [10.0]]),
        "naive": jnp.array([[[10.0], [10.0]], [[30.0], [30.0]]]),
        "mask": jnp.array([1.0, 0.0]),  # the second window is padding
    }
    outputs = jnp.array([[1.0, 3.0], [9.0, 9.0]])  # -> 12, 16 in original units
    sums = task.eval_sums(outputs, {}, batch)
    metrics = task.finalize(jax.tree.map(np.asarray, sums))
    assert metrics["mse"] == pytest.approx((2.0**2 + 4.0**2) / 2)
    assert metrics["mae"] == pytest.approx(3.0)
    assert metrics["mape"] == pytest.approx(100 * (2 / 10 + 4 / 20) / 2)
    assert metrics["naive_rmse"] == pytest.approx(np.sqrt(100 / 2))
    summary = task.summary(sums)
    assert summary["rmse_by_horizon"] == pytest.approx([2.0, 4.0])
    assert summary["beat_baselines"] is True


# --- language model ---------------------------------------------------------------------------


def test_language_model_uniform_logits_give_perplexity_equal_to_the_vocabulary():
    task = LanguageModelTask(vocab_size=7)
    batch = {
        "targets": jnp.array([[1, 2, 3], [4, 5, 6]]),
        "length": jnp.array([3, 2]),
        "mask": jnp.array([1.0, 1.0]),
    }
    metrics = task.finalize(task.eval_sums(jnp.zeros((2, 3, 7)), {}, batch))
    assert metrics["perplexity"] == pytest.approx(7.0, rel=1e-5)
    assert metrics["bits_per_token"] == pytest.approx(np.log2(7), rel=1e-5)
    logits = jax.nn.one_hot(batch["targets"], 7) * 50.0  # certain and right
    logits = logits.at[1, 2].set(0.0)  # a padded step: wrong, but must not count
    metrics = task.finalize(task.eval_sums(logits, {}, batch))
    assert metrics["accuracy"] == 1.0 and metrics["perplexity"] == pytest.approx(1.0, abs=1e-6)


# --- truncated BPTT ---------------------------------------------------------------------------


def _tbptt_setup():
    model = get_model(
        {"name": "lstm", "hidden_sizes": (5, 4), "pooling": "none", "vocab_size": 6},
        num_classes=6,
    )
    task = LanguageModelTask(vocab_size=6)
    ids = np.random.default_rng(0).integers(0, 6, size=(2, 13))
    windows = [{"inputs": ids[:, s : s + 6], "targets": ids[:, s + 1 : s + 7]} for s in (0, 6)]
    return model, task, [jax.tree.map(jnp.asarray, w) for w in windows]


def test_truncated_bptt_carries_the_state_but_not_the_gradient_across_windows():
    model, task, (first, second) = _tbptt_setup()
    config = cfg.base_config()  # plain SGD at learning rate 0: the parameters stay put
    config.optimizer.name, config.optimizer.schedule = "sgd", "constant"
    config.optimizer.learning_rate, config.total_steps = 0.0, 2
    params = model.init(jax.random.PRNGKey(0), first["inputs"], train=False)["params"]
    optimizer = build_optimizer(config, params)
    parts = (*default_parts(task, optimizer), TruncatedBPTT(model.zero_carry(2)))
    init = make_init_fn(model, optimizer.tx, first["inputs"], parts)
    state = init(jax.random.PRNGKey(0))
    params = state.params
    step = jax.jit(make_train_step(model, task, optimizer, parts))
    state, _ = step(state, first)
    state, metrics = step(state, second)
    # The carry after two windows is the state after reading both in one go.
    both = jnp.concatenate([first["inputs"], second["inputs"]], axis=1)
    _, aux = model.apply({"params": params}, both, train=False)
    carried, whole = jax.tree.leaves(state.extras["carry"]), jax.tree.leaves(aux["carry"])
    for a, b in zip(carried, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    def loss(p, start):
        out, _ = model.apply({"params": p}, second["inputs"], train=False, initial_carry=start)
        return task.loss(out, {}, second)[0]

    def first_carry(p):
        return model.apply({"params": p}, first["inputs"], train=False)[1]["carry"]

    # The second step's gradient treats the carried state as a constant...
    truncated = jax.jit(jax.grad(loss))(params, first_carry(params))
    grad_norm = float(metrics["train/grad_norm"])
    assert grad_norm == pytest.approx(float(optax.tree.norm(truncated)), rel=1e-5)
    # ... which differs from back-propagating into the first window.
    full = jax.jit(jax.grad(lambda p: loss(p, first_carry(p))))(params)
    assert abs(float(optax.tree.norm(full)) - grad_norm) > 1e-4
    # A reset row starts over from zero; the other stream carries on.
    state, _ = step(state, {**first, "reset": jnp.array([0.0, 1.0])})
    three = jnp.concatenate([both, first["inputs"]], axis=1)
    carried_on = model.apply({"params": params}, three, train=False)[1]["carry"]
    fresh = model.apply({"params": params}, first["inputs"], train=False)[1]["carry"]
    leaves = [jax.tree.leaves(c) for c in (state.extras["carry"], carried_on, fresh)]
    for got, row0, row1 in zip(*leaves, strict=True):
        np.testing.assert_allclose(got[0], row0[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], row1[1], rtol=1e-5, atol=1e-6)


def test_streams_put_consecutive_windows_of_each_stream_in_successive_batches():
    from research.data import ArraySource

    source = ArraySource({"inputs": np.arange(11)[:, None]})  # window i holds the value i
    ordered = sequences.streams(source, batch_size=3)  # 3 streams of 3 windows, 2 dropped
    batches = ordered.arrays["inputs"][:, 0].reshape(3, 3)  # rows: steps, columns: streams
    np.testing.assert_array_equal(batches, [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    np.testing.assert_array_equal(ordered.arrays["reset"].reshape(3, 3)[:, 0], [1, 0, 0])


# --- end-to-end runs of the study configs -------------------------------------------------------


def _train(config, workdir):
    result = loop.train_and_evaluate(config, workdir)
    assert result.status == "completed"
    return json.loads((Path(workdir) / "summary.json").read_text())


def test_forecasting_run_reports_the_model_and_every_baseline(tmp_path, data_dir):
    tiny = {
        "model.hidden_sizes": (8, 8),
        "model.cell": ("lstm", "gru"),
        "data.series.horizon": 4,
        "total_epochs": 3.0,
        "tracking.plots": True,
    }
    summary = _train(_config("sunspots.py", data_dir, **tiny), tmp_path / "sunspots")
    for prefix in ("", "naive_", "seasonal_naive_", "ar_"):
        assert np.isfinite(summary[f"test/{prefix}rmse"])
    assert len(summary["test/rmse_by_horizon"]) == 4
    assert set(summary["test/beats"]) == {"naive", "seasonal_naive", "ar"}
    train = np.asarray(sunspots_series()[1], np.float64)[: round(309 * 0.7)]
    assert summary["train/adf_pvalue"] == stationarity.adf_test(train).pvalue  # the levels
    assert summary["train/stationary_model"] is True  # the differences the model reads
    plots = tmp_path / "sunspots" / "plots"
    for name in ("forecast_test.png", "hidden_gradients.png"):
        assert (plots / name).stat().st_size > 10_000
    curves = json.loads((plots / "hidden_gradients.json").read_text())
    assert len(curves["trained"]) == 24  # one norm per input step
    assert summary["gradients/ratio_trained"] == pytest.approx(
        curves["trained"][0] / curves["trained"][-1]
    )


def test_expanding_window_folds_train_on_the_past_of_their_eval_block(data_dir):
    horizon = {"data.series.horizon": 3}
    folds = [
        _prepared(_config("sunspots.py:cv", data_dir, **{"data.fold": k, **horizon}))
        for k in range(5)
    ]
    edges = [fold.periods for fold in folds]
    assert all(e["train"][0] == 0 for e in edges)  # expanding: always from the start
    assert [e["train"][1] for e in edges] == [e["eval"][0] for e in edges]
    ends = [e["eval"][1] for e in edges]
    assert ends == sorted(ends) and ends[-1] == edges[0]["test"][0]  # up to the test period
    for fold in folds:
        train, evaluation = (fold.sources[k].arrays["origin"] for k in ("train", "eval"))
        # The last training target (origin + horizon) precedes the first eval target.
        assert train.max() + 3 < evaluation.min() + 1
        assert train.max() + 3 == fold.periods["train"][1] - 1  # and ends its period


def test_images_read_as_pixel_or_row_sequences():
    from research.tasks import SequenceClassificationTask

    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    record = {"image": image, "label": 3}
    pixels = SequenceClassificationTask(num_classes=4).transform()(record)
    np.testing.assert_allclose(pixels["inputs"][:, 0], np.arange(12) / 255, rtol=1e-6)
    rows = SequenceClassificationTask(num_classes=4, image_order="rows").transform()(record)
    assert rows["inputs"].shape == (3, 4) and rows["label"] == 3


def test_digits_read_row_by_row_are_learned(tmp_path, data_dir):
    overrides = {
        "task.image_order": "rows",  # 8 steps: learns in a few epochs (pixels: 64 steps)
        "model.hidden_sizes": (32,),
        "optimizer.learning_rate": 1e-2,
        "total_epochs": 15.0,
        "eval_every_epochs": None,
        "checkpoint.every_epochs": None,
    }
    summary = _train(_config("digits_sequential.py", data_dir, **overrides), tmp_path / "digits")
    assert summary["test/accuracy"] > 0.6  # chance: 0.1


def test_copy_memory_runs_as_a_per_step_token_task(tmp_path, data_dir):
    config = _config(
        "shakespeare_char.py",
        data_dir,
        **{
            "data.name": "copy_memory/t50",
            "data.text.level": None,
            "data.text.lm_length": 0,
            "data.tbptt": False,
            "model.hidden_sizes": (8,),
            "data.train_split": "train[:256]",
            "total_steps": 4,
            "eval_every_steps": None,
            "checkpoint.every_steps": None,
            "data.eval_split": "validation[:64]",
            "data.test_split": "test[:64]",
        },
    )
    summary = _train(config, tmp_path / "copy")
    assert 0.0 < summary["test/perplexity"] < 10.0  # 10 symbols: at most ~uniform after 4 steps


def _mock_text_run(name, config_file, splits, tmp_path, overrides):
    data_dir = str(tmp_path / "tfds")
    fake_prepared(name, data_dir, splits)
    config = _config(config_file, data_dir, **overrides)
    with tfds.testing.mock_data(
        num_examples=max(splits.values()),
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=data_dir,
    ):
        return _train(config, tmp_path / "run")


@pytest.mark.slow
def test_imdb_config_runs_on_mock_reviews(tmp_path):
    overrides = {
        "model.hidden_sizes": (8,),
        "model.embed_dim": 8,
        "data.text.max_length": 16,
        "batch_size": 8,
        "total_epochs": None,
        "total_steps": 3,
        "eval_every_epochs": None,
        "checkpoint.every_epochs": None,
        "data.eval_split": "test[:8]",
        "tracking.plots": True,
    }
    splits = {"train": 32, "test": 32, "unsupervised": 32}
    summary = _mock_text_run("imdb_reviews", "imdb_lstm.py", splits, tmp_path, overrides)
    assert 0.0 <= summary["test/accuracy"] <= 1.0 and np.isfinite(summary["test/loss"])
    assert (tmp_path / "run" / "plots" / "attention.png").stat().st_size > 5_000


@pytest.mark.slow
def test_shakespeare_config_runs_with_truncated_bptt_on_mock_text(tmp_path):
    overrides = {
        "model.hidden_sizes": (8,),
        "model.embed_dim": 8,
        "data.text.lm_length": 5,
        "batch_size": 2,
        "total_steps": 3,
        "eval_every_steps": None,
        "checkpoint.every_steps": None,
    }
    splits = {"train": 1, "validation": 1, "test": 1}
    summary = _mock_text_run("tiny_shakespeare", "shakespeare_char.py", splits, tmp_path, overrides)
    assert summary["test/perplexity"] > 1.0
    vocab = Vocabulary.from_json((tmp_path / "run" / "vocab.json").read_text())
    assert vocab.tokens[:2] == (PAD, OOV) and len(vocab) > 2  # the mock text's characters


def test_gap_filling_never_reads_across_a_period_edge():
    raw = np.array([1.0, 2.0, np.nan, np.nan, 5.0, np.nan, 7.0, 8.0])[:, None]
    periods = {"train": (0, 4), "eval": (4, 6), "test": (6, 8)}
    filled = sequences._fill_by_period(raw, periods)
    # Train ends in a gap: it is held at the last training value, not interpolated towards 5.
    np.testing.assert_array_equal(filled[:, 0], [1, 2, 2, 2, 5, 5, 7, 8])
    future = raw.copy()
    future[4:] += 100.0
    np.testing.assert_array_equal(sequences._fill_by_period(future, periods)[:4], filled[:4])


@pytest.mark.slow
def test_truncated_bptt_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """The carried states are checkpointed with the stream position: a run preempted between
    windows continues every stream where it was."""
    data_dir = str(tmp_path / "tfds")
    fake_prepared("tiny_shakespeare", data_dir, {"train": 1, "validation": 1, "test": 1})
    overrides = {
        "data.data_dir": data_dir,
        **FAST,
        "model.hidden_sizes": (8,),
        "model.embed_dim": 8,
        "model.dropout_rate": 0.0,
        "data.text.lm_length": 1,
        "batch_size": 4,  # 4 streams of 3 one-character windows: the run crosses an epoch
        "total_steps": 8,
        "log_every_steps": 1,
        "eval_every_steps": None,
        "checkpoint.every_steps": 4,
        "checkpoint.best_metric": "",
    }
    mock = tfds.testing.mock_data(
        num_examples=1, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir
    )
    with mock:
        whole = _in_process(
            tmp_path / "whole", data_dir, overrides, monkeypatch, config_path=_SHAKESPEARE
        )
        first = _in_process(
            tmp_path / "split", data_dir, overrides, monkeypatch, 5, config_path=_SHAKESPEARE
        )
        assert first.status == "preempted"
        second = _in_process(
            tmp_path / "split", data_dir, overrides, monkeypatch, config_path=_SHAKESPEARE
        )
    losses = [_train_losses(tmp_path / name) for name in ("whole", "split")]
    assert losses[0] == losses[1] and len(losses[0]) == 8
    assert second.summary["test/loss"] == whole.summary["test/loss"]


_SHAKESPEARE = CONFIGS / "shakespeare_char.py"


def _train_losses(workdir: Path) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]
