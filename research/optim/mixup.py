"""Mixup and CutMix as pure, jit-able batch transforms applied inside the train step.

`mix_batch` mixes each example with a partner drawn by a random permutation and returns the mixed
inputs, the mixed (soft) targets and `info` (partner indices, the weight each example keeps of its
own target, and for CutMix the pasted-pixel mask) so tests and metrics can see what was done.

Multi-device semantics (`num_shards`). The global batch is viewed as `num_shards` contiguous,
equal shards: under `jax.jit` with the batch sharded over the mesh axis `data`, pass the size of
that axis, so shard `s` is exactly device `s`'s part of the batch. Partners, λ and CutMix boxes are
drawn per shard, with the shard's own key `shard_rng(rng, s)`, so mixing never crosses a device
shard: no example moves between devices (the only collective XLA emits is the scalar "all lanes
done" flag of the Beta sampler's rejection loop), and for `num_shards = N > 1`

    mix_batch(rng, x, y, num_shards=N)  ==  concatenation over s of
    mix_batch(shard_rng(rng, s), x[s], y[s], num_shards=1)

with global partner indices = local ones + s * shard size. That is what `jax.pmap` computes when
each device calls
`mix_batch(shard_rng(rng, jax.lax.axis_index("data")), x, y, num_shards=1)` on its own shard.
"Once per batch" (`per_example=False`) therefore means once per shard. With `num_shards=1` the
key is used as given and partners come from the whole batch: under jit this is deliberate,
configured cross-shard mixing (XLA then moves partner examples between devices).

For jit and pmap to agree, derive the mixing key the same way in both before any per-device
fold: e.g. `key = fold_in(step_rng, MIXUP_STREAM)`, then jit passes `key` with `num_shards=N`
and pmap passes `shard_rng(key, axis_index)`.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

METHODS = ("mixup", "cutmix")

MixResult = tuple[jax.Array, jax.Array, dict[str, jax.Array]]


def shard_rng(rng: jax.Array, shard_index: int | jax.Array) -> jax.Array:
    """The key shard `shard_index` mixes with; pmap callers pass `jax.lax.axis_index(axis)`."""
    return jax.random.fold_in(rng, shard_index)


def mix_batch(
    rng: jax.Array,
    images: jax.Array,
    labels_onehot: jax.Array,
    *,
    method: str = "mixup",
    alpha: float,
    per_example: bool,
    num_shards: int = 1,
    label_smoothing: float = 0.0,
) -> MixResult:
    """Mix a batch by Mixup or CutMix with λ ~ Beta(alpha, alpha); see the module docstring.

    `images` is `(B, ...)` (CutMix: `(B, H, W, ...)`), `labels_onehot` is `(B, K)`; label
    smoothing is applied to the targets before mixing so mixed targets still sum to 1.
    `per_example` draws λ (and the CutMix box) per example instead of once per shard;
    `alpha=0` turns mixing off (λ = 1: the batch comes back unchanged). Returns
    `(mixed_images, mixed_targets, info)` with `info["partner"]` (global partner index),
    `info["lam"]` (weight of the example's own target) and, for CutMix, `info["mask"]`
    (`(B, H, W)`, True where the pixel came from the partner).
    """
    _check_args(images, labels_onehot, method, alpha, num_shards)
    targets = labels_onehot
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    mix_one = functools.partial(_mix_shard, method=method, alpha=alpha, per_example=per_example)
    if num_shards == 1:
        return mix_one(rng, images, targets)
    return _mix_per_shard(mix_one, rng, images, targets, num_shards)


def _check_args(
    images: jax.Array, labels: jax.Array, method: str, alpha: float, num_shards: int
) -> None:
    """Reject settings that would silently mix wrongly (these are static, Python-level values)."""
    if method not in METHODS:
        raise ValueError(f"mix method {method!r} is not one of {METHODS}")
    if alpha < 0:
        raise ValueError(f"mix alpha must be >= 0 (0 = no mixing), got {alpha}")
    if num_shards < 1 or images.shape[0] % num_shards:
        raise ValueError(f"batch of {images.shape[0]} does not split into {num_shards} shards")
    if labels.shape[0] != images.shape[0] or labels.ndim != 2:
        raise ValueError(f"labels must be (batch, classes), got {labels.shape} for {images.shape}")
    if method == "cutmix" and images.ndim < 3:
        raise ValueError(f"cutmix needs (batch, height, width, ...) images, got {images.shape}")


def _mix_per_shard(
    mix_one: Callable[..., MixResult],
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    num_shards: int,
) -> MixResult:
    """Run `mix_one` on each contiguous shard with its own key; reassemble the global batch.

    A vmap over a leading shard axis keeps every gather inside its shard, so when that axis is
    the device axis XLA needs no communication.
    """
    batch = images.shape[0]
    size = batch // num_shards

    def split(x: jax.Array) -> jax.Array:
        return x.reshape(num_shards, size, *x.shape[1:])

    def merge(x: jax.Array) -> jax.Array:
        return x.reshape(batch, *x.shape[2:])

    keys = jax.vmap(shard_rng, in_axes=(None, 0))(rng, jnp.arange(num_shards))
    mixed, mixed_targets, info = jax.vmap(mix_one)(keys, split(images), split(targets))
    info["partner"] = info["partner"] + size * jnp.arange(num_shards)[:, None]
    return jax.tree.map(merge, (mixed, mixed_targets, info))


def _mix_shard(
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    method: str,
    alpha: float,
    per_example: bool,
) -> MixResult:
    """Mix one shard (partners only within it); the per-shard body of `mix_batch`."""
    n = images.shape[0]
    perm_rng, lam_rng, box_rng = jax.random.split(rng, 3)
    partner = jax.random.permutation(perm_rng, n)
    lam = jnp.broadcast_to(_draw_lambda(lam_rng, alpha, (n,) if per_example else ()), (n,))
    info: dict[str, jax.Array] = {"partner": partner}
    if method == "mixup":
        mixed, keep = _mixup(images, partner, lam), lam
    else:
        mask = _cutmix_masks(box_rng, lam, images.shape[1], images.shape[2], per_example)
        mixed = jnp.where(_expand(mask, images.ndim), images[partner], images)
        # The box is clipped at the border, so the target follows the pixels actually pasted.
        keep = 1.0 - jnp.mean(mask, axis=(1, 2), dtype=jnp.float32)
        info["mask"] = mask
    keep = keep.astype(targets.dtype)
    info["lam"] = keep
    mixed_targets = keep[:, None] * targets + (1 - keep)[:, None] * targets[partner]
    return mixed, mixed_targets, info


def _draw_lambda(rng: jax.Array, alpha: float, shape: tuple[int, ...]) -> jax.Array:
    """λ ~ Beta(alpha, alpha); exactly 1 when alpha == 0 so mixing can be switched off.

    Drawn as G1 / (G1 + G2), G ~ Gamma(alpha), from a single log-gamma call: `jax.random.beta`
    makes two, and each compiles its own rejection loop, which dominates the step's compile time.
    """
    if alpha == 0:
        return jnp.ones(shape, jnp.float32)
    log_gammas = jax.random.loggamma(rng, alpha, (2, *shape), jnp.float32)
    return jax.nn.sigmoid(log_gammas[0] - log_gammas[1])


def _mixup(images: jax.Array, partner: jax.Array, lam: jax.Array) -> jax.Array:
    """λ x_i + (1 - λ) x_partner(i), in floating point even for integer images."""
    if not jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.float32)
    weight = _expand(lam.astype(images.dtype), images.ndim)
    return weight * images + (1 - weight) * images[partner]


def _cutmix_masks(
    rng: jax.Array, lam: jax.Array, height: int, width: int, per_example: bool
) -> jax.Array:
    """`(n, H, W)` boxes of nominal area (1 - λ): one per example, or one shared by the shard."""
    n = lam.shape[0]
    if per_example:
        keys = jax.random.split(rng, n)
        return jax.vmap(_box_mask, in_axes=(0, 0, None, None))(keys, lam, height, width)
    return jnp.broadcast_to(_box_mask(rng, lam[0], height, width), (n, height, width))


def _box_mask(rng: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """A `(H, W)` rectangle of sides sqrt(1 - λ) * (H, W), centre uniform, clipped at the edges."""
    size = jnp.array([height, width], jnp.float32)
    centre = jax.random.uniform(rng, (2,)) * size
    half = jnp.sqrt(1.0 - lam) * size / 2
    low = jnp.clip(jnp.round(centre - half), 0, size)
    high = jnp.clip(jnp.round(centre + half), 0, size)
    rows = (jnp.arange(height) >= low[0]) & (jnp.arange(height) < high[0])
    cols = (jnp.arange(width) >= low[1]) & (jnp.arange(width) < high[1])
    return rows[:, None] & cols[None, :]


def _expand(x: jax.Array, ndim: int) -> jax.Array:
    """Append singleton axes so a per-example (or per-pixel) value broadcasts over `ndim` dims."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


MIXUP_STREAM = 0x6D6978  # folded into the step key, so mixing draws differ from dropout's


def make_batch_mixer(
    method: str,
    *,
    alpha: float,
    per_example: bool,
    num_classes: int,
    label_smoothing: float,
    num_shards: int,
    axis_name: str | None,
) -> Callable[[jax.Array, dict], dict]:
    """`(step_key, batch) -> batch` with mixed `image` and soft `targets` (labels kept).

    Under jit pass `num_shards` = devices on the data axis (or 1 to mix across shards); under
    pmap (`axis_name` set) each device mixes its own shard with `shard_rng(key, axis_index)`,
    which gives the same result as jit with `num_shards` = devices.
    """

    def mix(step_key: jax.Array, batch: dict) -> dict:
        key = jax.random.fold_in(step_key, MIXUP_STREAM)
        shards = num_shards
        if axis_name is not None:
            key, shards = shard_rng(key, jax.lax.axis_index(axis_name)), 1
        onehot = jax.nn.one_hot(batch["label"], num_classes)
        images, targets, _ = mix_batch(
            key,
            batch["image"],
            onehot,
            method=method,
            alpha=alpha,
            per_example=per_example,
            num_shards=shards,
            label_smoothing=label_smoothing,
        )
        return {**batch, "image": images, "targets": targets}

    return mix
