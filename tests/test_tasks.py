"""ClassificationTask and BinaryClassificationTask against NumPy and sklearn; `get_task` errors.

Eval statistics are masked sums accumulated over batches; `finalize` must then agree with sklearn
computed on the real (mask == 1) examples only, including its macro average over just the classes
that occur in the labels or the predictions.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn import metrics

from research.config import base_config
from research.errors import ConfigError
from research.tasks import BinaryClassificationTask, ClassificationTask, get_task

C = 5


def _log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _ce(logits, labels):
    """Per-example cross-entropy in float64."""
    logp = _log_softmax(logits.astype(np.float64))
    return -logp[np.arange(len(labels)), labels]


def _batch(rng, n, num_classes=C):
    logits = rng.normal(scale=2.0, size=(n, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=n)
    return logits, labels


def test_loss_is_mean_cross_entropy_and_accuracy():
    logits, labels = _batch(np.random.default_rng(0), 32)
    task = ClassificationTask(num_classes=C)
    loss, m = task.loss(jnp.asarray(logits), {}, {"label": jnp.asarray(labels)})
    want = _ce(logits, labels).mean()
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(m["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(m["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-7)


def test_label_smoothing_matches_smoothed_targets():
    logits, labels = _batch(np.random.default_rng(1), 32)
    alpha = 0.1
    task = ClassificationTask(num_classes=C, label_smoothing=alpha)
    loss, _ = task.loss(jnp.asarray(logits), {}, {"label": jnp.asarray(labels)})
    targets = np.full((len(labels), C), alpha / C)
    targets[np.arange(len(labels)), labels] += 1 - alpha
    want = -(targets * _log_softmax(logits.astype(np.float64))).sum(-1).mean()
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(loss) != pytest.approx(_ce(logits, labels).mean(), rel=1e-3)


def _accumulate(task, batches):
    """Sum jitted `eval_sums` over batches of (logits, labels, mask), as the eval loop does."""
    eval_sums = jax.jit(task.eval_sums)
    totals = None
    for logits, labels, mask in batches:
        batch = {"label": jnp.asarray(labels), "mask": jnp.asarray(mask, jnp.float32)}
        sums = eval_sums(jnp.asarray(logits), {}, batch)
        sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
    return totals


def _masked_batches(seed, sizes, num_classes=C, drop_class=None):
    """Random batches whose mask drops some examples; `drop_class` never appears anywhere."""
    rng = np.random.default_rng(seed)
    batches = []
    for n in sizes:
        logits, labels = _batch(rng, n, num_classes)
        if drop_class is not None:
            logits[:, drop_class] = -1e3  # never predicted
            labels = np.where(labels == drop_class, (drop_class + 1) % num_classes, labels)
        mask = (rng.random(n) > 0.3).astype(np.float32)
        # Padded rows may hold anything: give them a label that would change the totals.
        labels = np.where(mask > 0, labels, 0)
        batches.append((logits, labels, mask))
    return batches


def _real(batches):
    logits = np.concatenate([b[0][b[2] > 0] for b in batches])
    labels = np.concatenate([b[1][b[2] > 0] for b in batches])
    return logits, labels


def _check_against_sklearn(batches, num_classes=C):
    task = ClassificationTask(num_classes=num_classes)
    totals = _accumulate(task, batches)
    result = task.finalize(totals)
    logits, y_true = _real(batches)
    y_pred = logits.argmax(-1)
    assert totals["count"] == len(y_true)
    np.testing.assert_array_equal(
        totals["confusion"], metrics.confusion_matrix(y_true, y_pred, labels=range(num_classes))
    )
    p, r, f, _ = metrics.precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    assert result["precision"] == pytest.approx(p, abs=1e-9)
    assert result["recall"] == pytest.approx(r, abs=1e-9)
    assert result["f1"] == pytest.approx(f, abs=1e-9)
    assert result["loss"] == pytest.approx(_ce(logits, y_true).mean(), rel=1e-5)
    return y_true, y_pred


def test_eval_metrics_match_sklearn_on_unmasked_examples():
    _check_against_sklearn(_masked_batches(2, [16, 16, 16, 9]))


def test_macro_average_skips_a_class_absent_from_labels_and_predictions():
    y_true, y_pred = _check_against_sklearn(_masked_batches(3, [20, 20, 7], drop_class=2))
    assert 2 not in y_true and 2 not in y_pred
    assert len(set(y_true) | set(y_pred)) == C - 1  # the case this test is about


def test_class_only_predicted_counts_with_zero_precision():
    # Class 3 is predicted once but never true; class 4 occurs nowhere.
    labels = np.array([0, 1, 2, 0, 1])
    logits = np.full((5, C), -5.0, np.float32)
    logits[np.arange(5), [0, 1, 2, 3, 0]] = 5.0
    batches = [(logits, labels, np.ones(5, np.float32))]
    _check_against_sklearn(batches)


def test_get_task_unknown_name_is_config_error():
    with pytest.raises(ConfigError, match="'segmentation'"):
        get_task({"name": "segmentation"}, num_classes=C)


def test_get_task_classification_needs_classes():
    task_config = base_config().task
    task_config.label_smoothing = 0.1
    task = get_task(ml_collections.FrozenConfigDict(task_config), num_classes=C)
    assert task == ClassificationTask(num_classes=C, label_smoothing=0.1)
    with pytest.raises(ConfigError):
        get_task({"name": "classification"}, num_classes=None)


# --- binary classification: one sigmoid output ------------------------------------------------


def _bce(z, y):
    """Per-example binary cross-entropy of sigmoid(z) against targets y, in float64."""
    z = z.astype(np.float64)
    return np.logaddexp(0.0, z) - y * z  # -y log s(z) - (1 - y) log(1 - s(z))


def _binary_batch(rng, n):
    logits = rng.normal(scale=3.0, size=(n, 1)).astype(np.float32)
    return logits, rng.integers(0, 2, size=n)


def test_binary_loss_is_mean_sigmoid_cross_entropy_and_accuracy():
    logits, labels = _binary_batch(np.random.default_rng(4), 32)
    task = BinaryClassificationTask()
    loss, m = task.loss(jnp.asarray(logits), {}, {"label": jnp.asarray(labels)})
    assert float(loss) == pytest.approx(_bce(logits[:, 0], labels).mean(), rel=1e-5)
    probabilities = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    assert float(m["accuracy"]) == pytest.approx(np.mean((probabilities > 0.5) == labels))


def test_binary_label_smoothing_moves_targets_towards_one_half():
    logits, labels = _binary_batch(np.random.default_rng(5), 32)
    task = BinaryClassificationTask(label_smoothing=0.2)
    loss, _ = task.loss(jnp.asarray(logits), {}, {"label": jnp.asarray(labels)})
    targets = labels * 0.8 + 0.1
    assert float(loss) == pytest.approx(_bce(logits[:, 0], targets).mean(), rel=1e-5)


def test_binary_equals_two_class_softmax_on_logits_zero_and_z():
    # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]: the same model, written with two logits.
    rng = np.random.default_rng(6)
    logits, labels = _binary_batch(rng, 40)
    logits[:3] = 0.0  # ties: both heads predict class 0
    mask = (rng.random(40) > 0.25).astype(np.float32)
    batch = {"label": jnp.asarray(labels), "mask": jnp.asarray(mask)}
    two = np.concatenate([np.zeros_like(logits), logits], axis=1)
    binary, softmax = BinaryClassificationTask(), ClassificationTask(num_classes=2)
    a, b = binary.eval_sums(jnp.asarray(logits), {}, batch), softmax.eval_sums(two, {}, batch)
    np.testing.assert_array_equal(a["confusion"], b["confusion"])
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    assert float(a["count"]) == float(b["count"]) == mask.sum()


def test_binary_eval_metrics_match_sklearn_with_threshold_one_half():
    rng = np.random.default_rng(7)
    batches = []
    for n in (8, 8, 5):
        logits, labels = _binary_batch(rng, n)
        mask = (rng.random(n) > 0.3).astype(np.float32)
        batches.append((logits, np.where(mask > 0, labels, 1), mask))
    task = BinaryClassificationTask()
    totals = _accumulate(task, batches)
    result = task.finalize(totals)
    logits, y_true = _real(batches)
    y_pred = (1 / (1 + np.exp(-logits[:, 0].astype(np.float64))) > 0.5).astype(int)
    np.testing.assert_array_equal(
        totals["confusion"], metrics.confusion_matrix(y_true, y_pred, labels=[0, 1])
    )
    p, r, f, _ = metrics.precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((p, r, f))
    assert result["loss"] == pytest.approx(_bce(logits[:, 0], y_true).mean(), rel=1e-5)
    assert task.summary(totals)["confusion_matrix"] == totals["confusion"].astype(int).tolist()


def test_model_outputs_and_wrong_head_width():
    assert ClassificationTask(num_classes=C).model_outputs == C
    assert BinaryClassificationTask().model_outputs == 1
    with pytest.raises(ValueError, match="1 output"):
        BinaryClassificationTask().loss(jnp.zeros((4, 2)), {}, {"label": jnp.zeros(4, int)})
    with pytest.raises(ValueError, match="2 classes"):
        BinaryClassificationTask(num_classes=3)


def test_get_task_binary_classification_needs_two_classes():
    task_config = base_config().task
    task_config.name = "binary_classification"
    task = get_task(ml_collections.FrozenConfigDict(task_config), num_classes=2)
    assert task == BinaryClassificationTask(num_classes=2, label_smoothing=0.0)
    for classes in (None, 10):
        with pytest.raises(ConfigError, match="binary_classification.*2 classes"):
            get_task(task_config, num_classes=classes)
    with pytest.raises(ConfigError, match="known: classification, binary_classification"):
        get_task({"name": "binary"}, num_classes=2)


@pytest.mark.parametrize(
    "name,option", [("classification", "label_smoothng"), ("forecasting", "huber")]
)
def test_an_unknown_task_option_is_a_config_error_naming_it(name, option):
    with pytest.raises(ConfigError, match=f"task '{name}' has no option task.{option}"):
        get_task({"name": name, option: 0.1}, num_classes=10)
    if name == "classification":
        with pytest.raises(ConfigError, match="did you mean task.label_smoothing"):
            get_task({"name": name, option: 0.1}, num_classes=10)
