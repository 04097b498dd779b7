"""EWC: penalty gradients against `jax.grad`, Fisher against brute-force loops and closed forms.

References: the regularizer's added gradient is compared with `jax.grad` of the written-out
penalty; `fisher_diagonal` with a Python loop taking one example's gradient at a time; the sampled
Fisher's average with the softmax-regression closed form `p_k (1 - p_k) x_j^2`; and a tiny
two-task run shows the penalty keeping task A's loss down while task B is learned.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.optim import ewc

NUM_CLASSES = 3


class _MLP(nn.Module):
    """Dense -> ReLU -> Dense with the project's `(x, *, train) -> (logits, aux)` interface.

    Defined here, not taken from research.models, so the thresholds below never move with it.
    """

    hidden: int
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.hidden)(x))), {}


def _random_tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "dense": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
        "head": {"bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
    }


def _ewc_state(seed: int = 0) -> ewc.EWCState:
    fisher = jax.tree.map(jnp.abs, _random_tree(seed + 1))
    return ewc.EWCState(_random_tree(seed + 2), fisher, jnp.ones((), jnp.int32))


def _close(a, b, **tol) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


# --------------------------------------------------------------------------- regularizer


def test_regularizer_adds_penalty_gradient():
    params, grads, state = _random_tree(10), _random_tree(11), _ewc_state()
    tx = ewc.ewc_regularizer(0.7)
    opt_state = ewc.with_ewc(tx.init(params), state)
    updates, _ = tx.update(grads, opt_state, params)
    penalty_grad = jax.grad(lambda p: ewc.penalty(p, state, 0.7))(params)
    _close(updates, jax.tree.map(jnp.add, grads, penalty_grad), rtol=1e-6)


def test_regularizer_is_inert_until_consolidated_and_keeps_its_structure():
    params, grads = _random_tree(10), _random_tree(11)
    tx = optax.chain(ewc.ewc_regularizer(5.0), optax.sgd(1.0))
    opt_state = tx.init(params)
    updates, _ = tx.update(grads, opt_state, params)
    _close(updates, jax.tree.map(jnp.negative, grads))
    # Same tree layout after installing a state: checkpoints restore against `tx.init` shapes.
    installed = ewc.with_ewc(opt_state, _ewc_state())
    assert jax.tree.structure(installed) == jax.tree.structure(opt_state)


def test_regularizer_under_multi_transform_with_frozen_group():
    params, grads, state = _random_tree(10), _random_tree(11), _ewc_state()
    labels = {"dense": {"kernel": "train"}, "head": {"bias": "frozen"}}
    tx = optax.multi_transform(
        {
            "train": optax.chain(ewc.ewc_regularizer(0.7), optax.sgd(1.0)),
            "frozen": optax.set_to_zero(),
        },
        labels,
    )
    opt_state = ewc.with_ewc(tx.init(params), state)
    found = ewc.ewc_state_of(opt_state)
    assert isinstance(found.fisher["head"]["bias"], optax.MaskedNode)  # frozen: no EWC state
    _close(found.fisher["dense"], state.fisher["dense"])
    updates, _ = tx.update(grads, opt_state, params)
    penalty_grad = jax.grad(lambda p: ewc.penalty(p, state, 0.7))(params)
    expected = -(grads["dense"]["kernel"] + penalty_grad["dense"]["kernel"])
    np.testing.assert_allclose(updates["dense"]["kernel"], expected, rtol=1e-6)
    np.testing.assert_array_equal(updates["head"]["bias"], 0.0)
    # A penalty read back from the masked state counts only the trainable group, and
    # consolidating onto it treats the frozen entries' old Fisher as zero.
    kernel = [t["dense"]["kernel"] for t in (params, state.anchors, state.fisher)]
    dense_only = 0.5 * 0.7 * np.sum(kernel[2] * (kernel[0] - kernel[1]) ** 2)
    np.testing.assert_allclose(ewc.penalty(params, found, 0.7), dense_only, rtol=1e-6)
    fisher = jax.tree.map(jnp.ones_like, params)
    merged = ewc.consolidate(found, params, fisher, gamma=0.5)
    _close(merged.fisher["dense"]["kernel"], 0.5 * kernel[2] + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(merged.fisher["head"]["bias"], 1.0)


def test_state_merges_across_groups_that_each_hold_a_regularizer():
    params, state = _random_tree(10), _ewc_state()
    labels = {"dense": {"kernel": "a"}, "head": {"bias": "b"}}
    group = optax.chain(ewc.ewc_regularizer(1.0), optax.sgd(0.1))
    tx = optax.multi_transform({"a": group, "b": group}, labels)
    found = ewc.ewc_state_of(ewc.with_ewc(tx.init(params), state))
    _close(found.anchors, state.anchors)
    _close(found.fisher, state.fisher)
    assert int(found.num_tasks) == 1


def test_missing_regularizer_is_an_error():
    opt_state = optax.sgd(0.1).init(_random_tree(0))
    with pytest.raises(ValueError, match="ewc_regularizer"):
        ewc.ewc_state_of(opt_state)
    with pytest.raises(ValueError, match="ewc_regularizer"):
        ewc.with_ewc(opt_state, _ewc_state())


# --------------------------------------------------------------------------- consolidation


def test_online_consolidation_decays_old_fisher_and_reanchors():
    p1, p2, f1, f2 = (_random_tree(s) for s in range(4))
    first = ewc.consolidate(None, p1, f1)
    second = ewc.consolidate(first, p2, f2, gamma=0.25)
    _close(second.fisher, jax.tree.map(lambda a, b: 0.25 * a + b, f1, f2), rtol=1e-6)
    _close(second.anchors, p2)
    assert int(first.num_tasks) == 1 and int(second.num_tasks) == 2
    # Anchors are fresh buffers: donating params must not take the anchors with them.
    pointers = (
        x.unsafe_buffer_pointer() for x in (second.anchors["head"]["bias"], p2["head"]["bias"])
    )
    assert len(set(pointers)) == 2
    # Consolidating the zero-Fisher state that `tx.init` makes equals starting from None.
    initial = ewc.ewc_regularizer(1.0).init(p1)
    _close(ewc.consolidate(initial, p1, f1).fisher, first.fisher)


def test_l2sp_is_identity_fisher_and_penalty_vanishes_only_at_anchor():
    anchor, params = _random_tree(0), _random_tree(1)
    state = ewc.l2sp_state(anchor)
    _close(state.fisher, jax.tree.map(jnp.ones_like, anchor))
    sq_dist = optax.tree_utils.tree_l2_norm(optax.tree_utils.tree_sub(params, anchor), squared=True)
    np.testing.assert_allclose(ewc.penalty(params, state, 3.0), 0.5 * 3.0 * sq_dist, rtol=1e-6)
    assert float(ewc.penalty(anchor, state, 3.0)) == 0.0
    assert float(ewc.penalty(anchor, _ewc_state(), 3.0)) > 0.0
    assert float(ewc.penalty(_ewc_state().anchors, _ewc_state(), 3.0)) == 0.0


# --------------------------------------------------------------------------- Fisher


def _mlp_problem(n: int = 10):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, NUM_CLASSES, size=n), jnp.int32)
    model = _MLP(hidden=6, num_classes=NUM_CLASSES)
    params = model.init(jax.random.key(1), x[:1], train=False)["params"]
    return model, params, x, y


def _brute_force_fisher(logits_fn, params, x, y) -> dict:
    """One example at a time: the mean over examples of the squared log-likelihood gradient."""
    # Compiled once and called per example: still one gradient at a time, just not op by op.
    grad_fn = jax.jit(jax.grad(lambda p, xi, yi: jax.nn.log_softmax(logits_fn(p, xi))[yi]))
    total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
    for i in range(len(y)):
        grad = grad_fn(params, x[i], y[i])
        total = jax.tree.map(lambda t, g: t + np.asarray(g, np.float64) ** 2, total, grad)
    return jax.tree.map(lambda t: t / len(y), total)


def test_empirical_fisher_matches_brute_force_with_chunks_and_padding():
    model, params, x, y = _mlp_problem()
    logits_fn = ewc.classifier_logits_fn(model)
    # Chunks of 4 over batches of 6 exercise the padding; the second batch's last two rows are
    # masked-out garbage (eval padding) and must add nothing. One shape: one compilation.
    garbage = jnp.full((2, 5), jnp.nan)
    padded = (jnp.concatenate([x[6:], garbage]), jnp.concatenate([y[6:], y[:2]]))
    batches = [(x[:6], y[:6]), (*padded, jnp.asarray([1.0, 1, 1, 1, 0, 0]))]
    fisher = ewc.fisher_diagonal(logits_fn, params, batches, chunk_size=4)
    _close(fisher, _brute_force_fisher(logits_fn, params, x, y), rtol=1e-5, atol=1e-8)


def test_sampled_fisher_matches_brute_force_at_the_sampled_labels():
    model, params, x, y = _mlp_problem()
    logits_fn = ewc.classifier_logits_fn(model)
    rng = jax.random.key(7)
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    fisher = ewc.fisher_diagonal(logits_fn, params, batches, rng=rng, mode="sampled", chunk_size=4)
    sampled = jnp.concatenate(
        [
            ewc.sample_labels(logits_fn, params, b[0], jax.random.fold_in(rng, i))
            for i, b in enumerate(batches)
        ]
    )
    assert sampled.shape == y.shape and not np.array_equal(sampled, y)  # not the true labels
    _close(fisher, _brute_force_fisher(logits_fn, params, x, sampled), rtol=1e-5, atol=1e-8)
    again = ewc.fisher_diagonal(logits_fn, params, batches, rng=rng, mode="sampled")
    _close(again, fisher, rtol=1e-6)  # deterministic per rng, whatever the chunking


class _BatchNormNet(nn.Module):
    """Dense -> BatchNorm -> Dense, returning (logits, aux) like the project's models."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.0)(nn.Dense(4)(x))
        return nn.Dense(NUM_CLASSES)(nn.relu(x)), {}


def test_fisher_with_batchnorm_uses_running_statistics_and_skips_them():
    _, _, x, y = _mlp_problem()
    model = _BatchNormNet()
    variables = model.init(jax.random.key(2), x, train=False)
    # One training pass with momentum 0 makes the running statistics those of `x`, not (0, 1).
    _, mutated = model.apply(variables, x * 3.0 + 1.0, train=True, mutable=["batch_stats"])
    logits_fn = ewc.classifier_logits_fn(model, mutated["batch_stats"])
    fisher = ewc.fisher_diagonal(logits_fn, variables["params"], [(x, y)])
    assert jax.tree.structure(fisher) == jax.tree.structure(variables["params"])
    _close(fisher, _brute_force_fisher(logits_fn, variables["params"], x, y), rtol=1e-5, atol=1e-8)


def test_sampled_fisher_averages_to_the_true_fisher_and_empirical_does_not():
    """Softmax regression: the true Fisher of kernel[j, k] is mean_x p_k (1 - p_k) x_j^2."""
    x = jnp.asarray([[2.0, -1.0], [-1.5, 0.5], [1.0, 2.0], [0.5, -2.0]], jnp.float32)
    model = nn.Dense(NUM_CLASSES)
    params = {"kernel": jnp.asarray([[2.0, -1.0, 0.0], [0.5, 1.0, -1.5]]), "bias": jnp.zeros(3)}

    def logits_fn(p: dict, example: jax.Array) -> jax.Array:
        return model.apply({"params": p}, example)

    probs = jax.nn.softmax(x @ params["kernel"])
    true_kernel = np.mean(probs[:, None, :] * (1 - probs[:, None, :]) * x[:, :, None] ** 2, axis=0)
    wrong = jnp.argmin(probs, axis=-1)  # confidently wrong labels inflate the empirical Fisher
    repeats = 4000
    batch = (jnp.tile(x, (repeats, 1)), jnp.tile(wrong, repeats))
    sampled = ewc.fisher_diagonal(
        logits_fn, params, [batch], rng=jax.random.key(3), mode="sampled", chunk_size=1000
    )
    np.testing.assert_allclose(sampled["kernel"], true_kernel, rtol=0.1, atol=0.005)
    empirical = ewc.fisher_diagonal(logits_fn, params, [(x, wrong)])
    assert np.sum(empirical["kernel"]) > 3 * np.sum(true_kernel)


def test_fisher_rejects_bad_arguments():
    model, params, x, y = _mlp_problem()
    logits_fn = ewc.classifier_logits_fn(model)
    with pytest.raises(ValueError, match="unknown Fisher mode"):
        ewc.fisher_diagonal(logits_fn, params, [(x, y)], mode="true")
    with pytest.raises(ValueError, match="needs an rng"):
        ewc.fisher_diagonal(logits_fn, params, [(x, y)], mode="sampled")
    with pytest.raises(ValueError, match="no examples"):
        ewc.fisher_diagonal(logits_fn, params, [])


# --------------------------------------------------------------------------- end to end


def _two_tasks(n: int = 256):
    """Two input domains (feature 2 at +2 or -2); A's label is sign(x0), B's is sign(x1).

    One network can solve both, but training on B alone moves the weights A relied on.
    """
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(2, n, 4)).astype(np.float32)
    xa[:, 2] += 2.0
    xb[:, 2] -= 2.0
    return (xa, (xa[:, 0] > 0).astype(np.int32)), (xb, (xb[:, 1] > 0).astype(np.int32))


def _task_loss(model, params, task) -> jax.Array:
    logits, _ = model.apply({"params": params}, task[0], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, task[1]).mean()


def _trainer(model, tx, steps: int):
    """`(params, opt_state, task) -> params`: full-batch gradient descent, one compilation."""

    def train(params, opt_state, task):
        def step(carry, _):
            p, s = carry
            updates, s = tx.update(jax.grad(_task_loss, argnums=1)(model, p, task), s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(step, (params, opt_state), None, length=steps)[0][0]

    return jax.jit(train)


def test_ewc_keeps_task_a_while_learning_task_b():
    task_a, task_b = _two_tasks()
    model = _MLP(hidden=32, num_classes=2)
    tx = optax.chain(ewc.ewc_regularizer(100.0), optax.sgd(0.2))
    params = model.init(jax.random.key(0), task_a[0][:1], train=False)["params"]
    train = _trainer(model, tx, steps=200)
    loss = jax.jit(lambda p, task: _task_loss(model, p, task))
    params_a = train(params, tx.init(params), task_a)
    fisher = ewc.fisher_diagonal(ewc.classifier_logits_fn(model), params_a, [task_a])
    opt_state = tx.init(params_a)
    with_penalty = ewc.with_ewc(
        opt_state, ewc.consolidate(ewc.ewc_state_of(opt_state), params_a, fisher)
    )
    plain = train(params_a, opt_state, task_b)
    consolidated = train(params_a, with_penalty, task_b)
    assert loss(params_a, task_a) < 0.1 and loss(params_a, task_b) > 1.0
    assert loss(plain, task_a) > 0.7  # forgotten (about 1.05; 0.04 before B)
    assert loss(consolidated, task_a) < 0.4 * loss(plain, task_a)  # about 0.27
    assert loss(consolidated, task_b) < 0.2  # and B is still learned (about 0.06)
