"""Mixup / CutMix against their formulas, and the multi-device semantics of `num_shards`.

Results are checked through what `info` returns (partners, λ, CutMix masks): mixed images and
targets must follow the formulas for exactly those draws, CutMix targets must weigh the pixels
that really changed, and with `num_shards` partners must stay in their shard, so that a jit over
a batch sharded on 8 devices equals per-shard calls and `jax.pmap`.

Compiling the Beta sampler dominates the run time, so the fixtures compile each group of
variants (method x per-example) as one program, once per module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.optim.mixup import mix_batch, shard_rng

BATCH, SIZE, CLASSES, DEVICES, SMOOTHING, ALPHA = 256, 8, 5, 8, 0.1, 0.4
SHARD = BATCH // DEVICES
KEY = jax.random.key(42)
VARIANTS = tuple((method, per_example) for method in ("mixup", "cutmix") for per_example in (0, 1))
# The multi-device paths share all the per-shard code, so one variant covers them: the one that
# draws the most (a permutation, a λ and a box per example).
SHARDED = (("cutmix", 1),)


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """Continuous random images (no two pixels equal) and one-hot labels."""
    rng = np.random.default_rng(0)
    images = rng.random((BATCH, SIZE, SIZE, 3), dtype=np.float32)
    labels = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, BATCH)]
    return images, labels


def _variants(rng, images, labels, variants=VARIANTS, num_shards: int = 1) -> dict:
    """`mix_batch` for each (method, per_example), smoothed targets: one program to compile."""
    return {
        (m, p): mix_batch(
            rng,
            images,
            labels,
            method=m,
            alpha=ALPHA,
            per_example=bool(p),
            num_shards=num_shards,
            label_smoothing=SMOOTHING,
        )
        for m, p in variants
    }


def _np(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope="module")
def unsharded() -> dict:
    """Every variant on the whole batch, plus 4-shard and alpha=0 runs, from one compile."""

    def run(rng, images, labels):
        out = {"global": _variants(rng, images, labels)}
        out["4 shards"] = _variants(rng, images, labels, (("mixup", 0),), num_shards=4)
        out["alpha 0"] = {
            m: mix_batch(rng, images, labels, method=m, alpha=0.0, per_example=True)
            for m in ("mixup", "cutmix")
        }
        return out

    return _np(jax.jit(run)(KEY, *_batch()))


def _smoothed(labels: np.ndarray) -> np.ndarray:
    return labels * (1 - SMOOTHING) + SMOOTHING / CLASSES


@pytest.mark.parametrize("variant", VARIANTS)
def test_targets_sum_to_one_and_follow_the_formula(unsharded, variant):
    _, labels = _batch()
    for result in (unsharded["global"][variant], unsharded["4 shards"].get(variant)):
        if result is None:
            continue
        _, targets, info = result
        np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
        lam, partner = info["lam"][:, None], info["partner"]
        expected = lam * _smoothed(labels) + (1 - lam) * _smoothed(labels)[partner]
        np.testing.assert_allclose(targets, expected, rtol=1e-6, atol=1e-7)


def test_lambda_follows_beta_distribution(unsharded):
    lam = unsharded["global"]["mixup", 1][2]["lam"].astype(np.float64)
    assert scipy.stats.kstest(lam, scipy.stats.beta(ALPHA, ALPHA).cdf).pvalue > 0.01
    # The test has the power to see a wrong alpha: the draws are far from uniform (alpha = 1).
    assert scipy.stats.kstest(lam, scipy.stats.uniform.cdf).pvalue < 1e-4


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_alpha_zero_leaves_batch_unchanged(unsharded, method):
    images, labels = _batch()
    mixed, targets, info = unsharded["alpha 0"][method]
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_array_equal(targets, labels)
    np.testing.assert_array_equal(info["lam"], 1.0)


@pytest.mark.parametrize("per_example", [0, 1])
def test_mixup_matches_formula(unsharded, per_example):
    images, _ = _batch()
    mixed, _, info = unsharded["global"]["mixup", per_example]
    partner, lam = info["partner"], info["lam"]
    assert sorted(partner) == list(range(BATCH))
    assert np.all((lam >= 0) & (lam <= 1))
    # Once per batch: one λ; once per example: many different ones.
    assert len(np.unique(lam)) > BATCH // 2 if per_example else len(np.unique(lam)) == 1
    w = lam[:, None, None, None]
    np.testing.assert_allclose(mixed, w * images + (1 - w) * images[partner], rtol=1e-6)


@pytest.mark.parametrize("per_example", [0, 1])
def test_cutmix_target_weight_is_pasted_pixel_fraction(unsharded, per_example):
    images, _ = _batch()
    mixed, _, info = unsharded["global"]["cutmix", per_example]
    partner, lam, mask = info["partner"], info["lam"], info["mask"]
    np.testing.assert_array_equal(mixed, np.where(mask[..., None], images[partner], images))
    # Pixels are all distinct, so the pixels that changed are exactly the pasted box
    # (except where an example drew itself as partner: then nothing changes).
    changed = np.any(mixed != images, axis=-1)
    moved = partner != np.arange(BATCH)
    np.testing.assert_array_equal(changed[moved], mask[moved])
    np.testing.assert_array_equal(changed[~moved], False)
    np.testing.assert_array_equal(lam, 1 - mask.sum((1, 2)) / SIZE**2)
    # Each mask is one axis-aligned rectangle; some are clipped at the image border.
    rows, cols = mask.any(2), mask.any(1)
    np.testing.assert_array_equal(mask, rows[:, :, None] & cols[:, None, :])
    if per_example:
        assert np.any(mask[:, 0, :] | mask[:, -1, :] | mask[:, :, 0] | mask[:, :, -1])
    distinct = len({m.tobytes() for m in mask})
    assert distinct > 1 if per_example else distinct == 1


def test_partners_and_lambda_stay_in_their_shard(unsharded):
    _, _, info = unsharded["4 shards"]["mixup", 0]
    size = BATCH // 4
    own = np.arange(BATCH) // size
    np.testing.assert_array_equal(info["partner"] // size, own)
    for s in range(4):  # within a shard, still a permutation
        assert sorted(info["partner"][own == s]) == list(range(s * size, (s + 1) * size))
    # "Once per batch" means once per shard: one λ per shard, different between shards.
    lam = info["lam"].reshape(4, size)
    assert np.all(lam == lam[:, :1])
    assert len(np.unique(lam[:, 0])) == 4


def test_one_shard_mixes_across_the_whole_batch(unsharded):
    partner = unsharded["global"]["mixup", 1][2]["partner"]
    assert np.any(partner // SHARD != np.arange(BATCH) // SHARD)


def _sharded(x: np.ndarray) -> jax.Array:
    """`x` split over the 8 fake devices along the example axis (what the jit driver feeds)."""
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))


def _collectives(compiled: jax.stages.Compiled) -> list[str]:
    """The lines of a compiled program that are cross-device collectives."""
    ops = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter", "all-reduce")
    return [line for line in compiled.as_text().splitlines() if any(f" {o}(" in line for o in ops)]


@pytest.fixture(scope="module")
def sharded() -> tuple[dict, list[str]]:
    """CutMix under jit on the batch sharded 8 ways (num_shards=8), and its collectives."""
    images, labels = (_sharded(x) for x in _batch())
    run = jax.jit(_variants, static_argnums=(3, 4))
    compiled = run.lower(KEY, images, labels, SHARDED, DEVICES).compile()
    out = compiled(KEY, images, labels)
    for mixed, _, _ in out.values():  # the result stays sharded: nothing was gathered
        assert mixed.sharding.spec == PartitionSpec("data")
    return _np(out), _collectives(compiled)


def _per_shard_layout(result: tuple) -> tuple:
    """Global outputs -> `(shard, example, ...)` with shard-local partner indices."""
    mixed, targets, info = jax.tree.map(lambda x: x.reshape(DEVICES, -1, *x.shape[1:]), result)
    info["partner"] = info["partner"] - SHARD * np.arange(DEVICES)[:, None]
    return mixed, targets, info


def _assert_same(actual: dict, expected: dict) -> None:
    for variant in SHARDED:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
            _per_shard_layout(actual[variant]),
            expected[variant],
        )


def test_sharded_jit_equals_per_shard_calls(sharded):
    images, labels = _batch()
    one_shard = jax.jit(_variants, static_argnums=3)
    calls = [
        one_shard(
            shard_rng(KEY, s),
            images[s * SHARD : (s + 1) * SHARD],
            labels[s * SHARD : (s + 1) * SHARD],
            SHARDED,
        )
        for s in range(DEVICES)
    ]
    _assert_same(sharded[0], jax.tree.map(lambda *xs: np.stack(xs), *_np(calls)))


def test_pmap_equals_sharded_jit(sharded):
    def per_device(rng, images, labels):
        rng = shard_rng(rng, jax.lax.axis_index("data"))
        return _variants(rng, images, labels, SHARDED)

    images, labels = (x.reshape(DEVICES, SHARD, *x.shape[1:]) for x in _batch())
    pmapped = jax.pmap(per_device, axis_name="data", in_axes=(None, 0, 0))
    _assert_same(sharded[0], _np(pmapped(KEY, images, labels)))


def test_sharded_mixing_moves_no_examples_between_devices(sharded):
    # The only collective allowed is the Beta sampler's scalar "all lanes done" loop flag.
    assert all("= pred[] all-reduce(" in line for line in sharded[1])
    # The check can fail: mixing over the whole sharded batch gathers examples across devices.
    images, labels = (_sharded(x) for x in _batch())
    whole = jax.jit(mix_batch, static_argnames=("alpha", "per_example"))
    compiled = whole.lower(KEY, images, labels, alpha=0.0, per_example=False).compile()
    assert any("all-gather(" in line for line in _collectives(compiled))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "cutout"}, "not one of"),
        ({"alpha": -1.0}, "alpha"),
        ({"num_shards": 5}, "shards"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    images, labels = _batch()
    args = {"method": "mixup", "alpha": 1.0, "per_example": True, **kwargs}
    with pytest.raises(ValueError, match=message):
        mix_batch(KEY, jnp.asarray(images), jnp.asarray(labels), **args)
