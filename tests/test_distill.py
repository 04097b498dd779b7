"""Distillation loss against a NumPy reference and the closed-form gradient of its KL term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.optim.distill import distillation_loss

BATCH, CLASSES = 6, 5


def _logits(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 2.0, (BATCH, CLASSES)).astype(np.float32)


STUDENT, TEACHER = _logits(0), _logits(1)
LABELS = np.random.default_rng(2).integers(0, CLASSES, BATCH)
ONEHOT = np.eye(CLASSES, dtype=np.float32)[LABELS]


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl_reference(student: np.ndarray, teacher: np.ndarray, temperature: float) -> np.ndarray:
    """Per-example KL(softmax(t/T) || softmax(s/T)), written out in float64."""
    p, q = _softmax(teacher / temperature), _softmax(student / temperature)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def _ce_reference(student: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return -np.sum(targets * np.log(_softmax(student)), axis=-1)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_loss_matches_numpy_reference(temperature, weight):
    loss, metrics = distillation_loss(
        STUDENT, TEACHER, ONEHOT, temperature=temperature, weight=weight
    )
    kl = temperature**2 * _kl_reference(STUDENT, TEACHER, temperature).mean()
    ce = _ce_reference(STUDENT, ONEHOT).mean()
    np.testing.assert_allclose(metrics["distill_kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(loss, weight * kl + (1 - weight) * ce, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_is_zero_when_student_equals_teacher(temperature):
    _, metrics = distillation_loss(TEACHER, TEACHER, ONEHOT, temperature=temperature, weight=1.0)
    np.testing.assert_allclose(metrics["distill_kl"], 0.0, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kl_gradient_has_closed_form(temperature):
    # d/ds [T^2 KL(p_t || softmax(s/T))] = T (softmax(s/T) - p_t): the T^2 factor cancels the
    # 1/T^2 that softening puts on the gradient, so weights mean the same at every T.
    def kl_term(student):
        return distillation_loss(student, TEACHER, ONEHOT, temperature=temperature, weight=1.0)[0]

    grad = jax.grad(kl_term)(jnp.asarray(STUDENT))
    expected = (
        temperature * (_softmax(STUDENT / temperature) - _softmax(TEACHER / temperature)) / BATCH
    )
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_weight_zero_is_cross_entropy_with_labels_or_soft_targets():
    soft = 0.7 * ONEHOT + 0.3 * ONEHOT[::-1]  # e.g. mixed targets
    for targets in (ONEHOT, LABELS, soft):
        loss, _ = distillation_loss(STUDENT, TEACHER, targets, temperature=2.0, weight=0.0)
        np.testing.assert_allclose(loss, _ce_reference(STUDENT, _as_dist(targets)).mean(), 1e-5)


def _as_dist(targets: np.ndarray) -> np.ndarray:
    return np.eye(CLASSES)[targets] if targets.ndim == 1 else targets


def test_no_gradient_reaches_the_teacher():
    def loss(teacher):
        return distillation_loss(STUDENT, teacher, ONEHOT, temperature=2.0, weight=0.5)[0]

    np.testing.assert_array_equal(jax.grad(loss)(jnp.asarray(TEACHER)), 0.0)


def test_mask_drops_padded_examples():
    mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
    keep = mask.astype(bool)
    masked = distillation_loss(STUDENT, TEACHER, ONEHOT, temperature=2.0, weight=0.5, mask=mask)
    subset = distillation_loss(
        STUDENT[keep], TEACHER[keep], ONEHOT[keep], temperature=2.0, weight=0.5
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), masked, subset)


@pytest.mark.parametrize(("temperature", "weight"), [(0.0, 0.5), (-1.0, 0.5), (2.0, 1.5)])
def test_bad_arguments_are_rejected(temperature, weight):
    with pytest.raises(ValueError, match="distillation"):
        distillation_loss(STUDENT, TEACHER, ONEHOT, temperature=temperature, weight=weight)
