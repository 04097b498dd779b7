"""Knowledge distillation loss (Hinton et al., 2015): match a teacher's softened predictions.

    loss = weight * T² * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - weight) * CE(student, targets)

averaged over the (optionally masked) batch. The T² factor keeps the gradient of the soft term,
T * (softmax(s / T) - softmax(t / T)) per example, on the same scale as the hard term's as T
changes, so `weight` means the same at every temperature. The teacher is a constant: its logits
pass through `stop_gradient`, so no gradient reaches a teacher that shares the parameter tree.
"""

import jax
import jax.numpy as jnp
import optax


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    targets: jax.Array,
    *,
    temperature: float,
    weight: float,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(loss, {"distill_kl", "ce"})` for `(B, K)` logits; see the module docstring.

    `targets` are one-hot or soft `(B, K)` targets (smoothed or mixed) or integer labels `(B,)`.
    `mask` (`(B,)`, 0/1) drops padded examples from the means. `distill_kl` is the T²-scaled
    KL term and `ce` the hard term, so `loss = weight * distill_kl + (1 - weight) * ce`.
    """
    _check_args(temperature, weight)
    # Softmax statistics in float32: bf16 logits lose the small differences KL is made of.
    student = student_logits.astype(jnp.float32)
    teacher = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    kl = optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(student / temperature), jax.nn.log_softmax(teacher / temperature)
    )
    distill_kl = temperature**2 * _masked_mean(kl, mask)
    ce = _masked_mean(_cross_entropy(student, targets), mask)
    loss = weight * distill_kl + (1 - weight) * ce
    return loss, {"distill_kl": distill_kl, "ce": ce}


def _check_args(temperature: float, weight: float) -> None:
    """Reject a non-positive temperature or a weight outside [0, 1] (static config values)."""
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    if not 0 <= weight <= 1:
        raise ValueError(f"distillation weight must be in [0, 1], got {weight}")


def _cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy against integer labels or (soft) target distributions."""
    if jnp.issubdtype(targets.dtype, jnp.integer):
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return optax.softmax_cross_entropy(logits, targets)


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean over examples, counting only mask == 1 (0 when the mask is all zero)."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1)
