"""Elastic Weight Consolidation (EWC) against catastrophic forgetting, as pure functions.

EWC (Kirkpatrick et al. 2017) adds `0.5 * weight * sum F (theta - theta*)^2` to the loss: the
parameters `theta*` that solved earlier tasks are anchors, and the diagonal Fisher information `F`
says how much each parameter mattered to them. Online EWC (Schwarz et al. 2018) keeps one running
Fisher, `F <- gamma * F_old + F_new`, re-anchored at the latest solution. L2-SP (Li et al. 2018)
is the special case `F = 1` anchored at pretrained weights.

How the anchors and Fisher reach the optimizer: `ewc_regularizer(weight)` is an ordinary optax
transformation whose *state* is an `EWCState` (anchors, Fisher, task count). It therefore lives
inside `TrainState.opt_state` and is saved and restored by the checkpoint with no extra plumbing,
and the train step needs no change. `tx.init` creates it with zero Fisher (the penalty is inactive
until a task is consolidated), so the checkpoint's tree structure never changes over a run and
restoring against `jax.eval_shape` targets keeps working. Between tasks, the host code does::

    fisher = fisher_diagonal(classifier_logits_fn(model, state.batch_stats), state.params, batches)
    new = consolidate(ewc_state_of(state.opt_state), state.params, fisher, gamma=0.9)
    state = state.replace(opt_state=with_ewc(state.opt_state, new))

(Consolidating the zero-Fisher initial state is the same as starting from `None`.)

This was preferred over passing anchors as an `update(..., ewc=...)` extra argument because
`optax.masked` / `optax.multi_transform` would not mask such an argument by default, and the train
step would need to thread it through. Inside a masked or multi-transform chain the state holds
`optax.MaskedNode` for parameters outside its group (frozen parameters keep no EWC state, as the
design asks); `with_ewc` masks a full state to fit, and `ewc_state_of` merges the groups back.
Put `ewc_regularizer` first in the chain, so the penalty gradient joins the loss gradient before
clipping and the optimizer see it.
"""

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
# One example (no batch axis) -> its class logits, shape [num_classes].
LogitsFn = Callable[[PyTree, PyTree], jax.Array]
# (inputs, labels) or (inputs, labels, mask); every leaf has a leading batch axis.
FisherBatch = tuple[PyTree, jax.Array] | tuple[PyTree, jax.Array, jax.Array]

MODES = ("empirical", "sampled")


class EWCState(NamedTuple):
    """Anchors theta*, diagonal Fisher F (both shaped like the params) and tasks consolidated."""

    anchors: PyTree
    fisher: PyTree
    num_tasks: jax.Array


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _copy(tree: PyTree) -> PyTree:
    # Fresh buffers: anchors must not alias params, or donating the train state would donate
    # one buffer twice (and the anchor would be overwritten by the update).
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


# --------------------------------------------------------------------------- Fisher information


def classifier_logits_fn(model: nn.Module, batch_stats: PyTree | None = None) -> LogitsFn:
    """A `LogitsFn` for a classifier `model.apply(variables, x, train=False) -> (logits, aux)`.

    Non-trainable variables (BatchNorm statistics) are closed over, so they are used in
    inference mode and never differentiated. The model sees a batch of one example.
    """

    def logits_fn(params: PyTree, example: PyTree) -> jax.Array:
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        batched = jax.tree.map(lambda x: x[None], example)
        logits, _ = model.apply(variables, batched, train=False)
        return logits[0]

    return logits_fn


def sample_labels(logits_fn: LogitsFn, params: PyTree, inputs: PyTree, key: jax.Array) -> jax.Array:
    """Labels drawn from the model's own predictive distribution; example j uses fold_in(key, j).

    `fisher_diagonal(mode="sampled")` draws exactly these labels for its batch `i` with
    `key = jax.random.fold_in(rng, i)`, so its result can be reproduced and checked.
    """
    index = jnp.arange(jax.tree.leaves(inputs)[0].shape[0])

    def one(x: PyTree, i: jax.Array) -> jax.Array:
        return jax.random.categorical(jax.random.fold_in(key, i), logits_fn(params, x))

    return jax.vmap(one)(inputs, index)


def _example_log_likelihood(
    logits_fn: LogitsFn, sampled: bool
) -> Callable[[PyTree, PyTree, jax.Array, jax.Array], jax.Array]:
    """`(params, example, label, key) -> log p(y | x)`, y the true or a model-sampled label."""

    def log_likelihood(params: PyTree, x: PyTree, label: jax.Array, key: jax.Array) -> jax.Array:
        logits = logits_fn(params, x)
        if sampled:  # the label is data, not a function of the params: no gradient through it
            label = jax.random.categorical(key, jax.lax.stop_gradient(logits))
        return jax.nn.log_softmax(logits)[label]

    return log_likelihood


def _pad_and_chunk(tree: PyTree, chunk_size: int) -> PyTree:
    """Pad the leading axis to a multiple of `chunk_size` and split it into [chunks, chunk]."""

    def one(x: jax.Array) -> jax.Array:
        pad = -x.shape[0] % chunk_size
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((-1, chunk_size) + x.shape[1:])

    return jax.tree.map(one, tree)


def _squared_grad_sum(
    log_likelihood: Callable, chunk_size: int
) -> Callable[[PyTree, PyTree, PyTree, jax.Array, jax.Array, jax.Array], PyTree]:
    """Jitted `(acc, params, inputs, labels, mask, key) -> acc + sum_i mask_i * g_i^2`.

    Per-example gradients are taken `chunk_size` at a time under a scan, so memory holds at
    most `chunk_size` gradient copies however large the batch is.
    """
    per_example_grad = jax.vmap(jax.grad(log_likelihood), in_axes=(None, 0, 0, 0))

    def accumulate(acc, params, inputs, labels, mask, key):
        index = jnp.arange(labels.shape[0])
        chunks = _pad_and_chunk((inputs, labels, mask, index), min(chunk_size, labels.shape[0]))

        def body(acc: PyTree, chunk: tuple) -> tuple[PyTree, None]:
            x, y, m, i = chunk
            # Example i's key is fold_in(key, i), as in `sample_labels`.
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, i)
            grads = per_example_grad(params, x, y, keys)

            def add(a: jax.Array, g: jax.Array) -> jax.Array:
                # `where`, not a product: padding rows may give non-finite gradients.
                keep = (m > 0).reshape((-1,) + (1,) * (g.ndim - 1))
                return a + jnp.sum(jnp.where(keep, m.reshape(keep.shape) * g**2, 0.0), axis=0)

            return jax.tree.map(add, acc, grads), None

        return jax.lax.scan(body, acc, chunks)[0]

    return jax.jit(accumulate)


def fisher_diagonal(
    logits_fn: LogitsFn,
    params: PyTree,
    batches: Iterable[FisherBatch],
    *,
    rng: jax.Array | None = None,
    mode: str = "empirical",
    chunk_size: int = 32,
) -> PyTree:
    """Diagonal Fisher: the mean over examples of the squared per-example log-likelihood gradient.

    `mode="empirical"` differentiates at the true label; `"sampled"` at a label drawn from
    `softmax(logits)` (the true Fisher's Monte Carlo estimate; needs `rng`). `batches` yields
    `(inputs, labels)` or `(inputs, labels, mask)`; mask-0 rows (eval padding) are skipped.
    """
    if mode not in MODES:
        raise ValueError(f"unknown Fisher mode '{mode}'; known: {', '.join(MODES)}")
    if mode == "sampled" and rng is None:
        raise ValueError("fisher_diagonal(mode='sampled') needs an rng to sample labels")
    rng = jax.random.key(0) if rng is None else rng  # unused by the empirical mode
    accumulate = _squared_grad_sum(
        _example_log_likelihood(logits_fn, mode == "sampled"), chunk_size
    )
    total = jax.tree.map(jnp.zeros_like, params)
    count = jnp.zeros(())
    for i, batch in enumerate(batches):
        inputs, labels = batch[0], jnp.asarray(batch[1])
        mask = jnp.asarray(batch[2] if len(batch) > 2 else jnp.ones(labels.shape), jnp.float32)
        total = accumulate(total, params, inputs, labels, mask, jax.random.fold_in(rng, i))
        count = count + jnp.sum(mask)
    if float(count) == 0:
        raise ValueError("fisher_diagonal got no examples")
    return jax.tree.map(lambda t: t / count, total)


# --------------------------------------------------------------------------- consolidation


def consolidate(
    state: EWCState | None, params: PyTree, fisher: PyTree, *, gamma: float = 1.0
) -> EWCState:
    """Online EWC after a task: `F <- gamma * F_old + F_new`, anchors <- the current params.

    `state=None` starts from the first task. Old Fisher entries that are `optax.MaskedNode`
    (parameters frozen in every group) count as zero.
    """
    if state is None:
        return EWCState(_copy(params), _copy(fisher), jnp.ones((), jnp.int32))

    def combine(new: jax.Array, old: Any) -> jax.Array:
        return jnp.array(new, copy=True) if _is_masked(old) else gamma * old + new

    merged = jax.tree.map(combine, fisher, state.fisher)
    return EWCState(_copy(params), merged, jnp.asarray(state.num_tasks + 1, jnp.int32))


def l2sp_state(params: PyTree) -> EWCState:
    """L2-SP: identity Fisher anchored at `params` (e.g. pretrained weights); one task counted."""
    ones = jax.tree.map(jnp.ones_like, params)
    return EWCState(_copy(params), ones, jnp.ones((), jnp.int32))


def penalty(params: PyTree, ewc_state: EWCState, weight: float) -> jax.Array:
    """`0.5 * weight * sum F (theta - theta*)^2`, e.g. for logging; masked entries add nothing."""

    def term(f: Any, anchor: Any, p: jax.Array) -> jax.Array:
        return jnp.zeros(()) if _is_masked(f) else jnp.sum(f * (p - anchor) ** 2)

    terms = jax.tree.map(term, ewc_state.fisher, ewc_state.anchors, params, is_leaf=_is_masked)
    return 0.5 * weight * sum(jax.tree.leaves(terms), jnp.zeros(()))


# --------------------------------------------------------------------------- optax transformation


def ewc_regularizer(weight: float) -> optax.GradientTransformation:
    """Adds the EWC penalty gradient `weight * F * (theta - theta*)` to the incoming updates.

    The anchors and Fisher are this transformation's state (zero Fisher after `init`, so it is
    inert until `with_ewc` installs a consolidated `EWCState`); put it first in the chain.
    """

    def init(params: PyTree) -> EWCState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return EWCState(zeros, jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

    def update(
        updates: PyTree, state: EWCState, params: PyTree | None = None
    ) -> tuple[PyTree, EWCState]:
        if params is None:
            raise ValueError("ewc_regularizer needs the params: call tx.update(g, state, params)")

        def add(g: jax.Array, p: jax.Array, anchor: jax.Array, f: jax.Array) -> jax.Array:
            return (g + weight * f * (p - anchor)).astype(g.dtype)

        return jax.tree.map(add, updates, params, state.anchors, state.fisher), state

    return optax.GradientTransformation(init, update)


def _ewc_nodes(opt_state: PyTree) -> list[EWCState]:
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, EWCState))
    return [n for n in nodes if isinstance(n, EWCState)]


def ewc_state_of(opt_state: PyTree) -> EWCState:
    """The `EWCState` held in an optimizer state; several (one per multi-transform group) merge.

    Entries masked out in every group stay `optax.MaskedNode` (`consolidate` and `penalty`
    accept them). Raises ValueError if the chain has no `ewc_regularizer`.
    """
    nodes = _ewc_nodes(opt_state)
    if not nodes:
        raise ValueError("the optimizer state holds no EWC state: add ewc_regularizer to the chain")

    def pick(a: Any, b: Any) -> Any:
        return b if _is_masked(a) else a

    merged = nodes[0]
    for node in nodes[1:]:
        merged = EWCState(
            jax.tree.map(pick, merged.anchors, node.anchors, is_leaf=_is_masked),
            jax.tree.map(pick, merged.fisher, node.fisher, is_leaf=_is_masked),
            jnp.maximum(merged.num_tasks, node.num_tasks),
        )
    return merged


def with_ewc(opt_state: PyTree, ewc_state: EWCState) -> PyTree:
    """`opt_state` with every `ewc_regularizer` state replaced by `ewc_state`.

    Each replaced state keeps its own `optax.MaskedNode` entries (parameters outside its group),
    so the tree structure, and hence the checkpoint layout and any jit cache, is unchanged.
    """
    if not _ewc_nodes(opt_state):
        raise ValueError("the optimizer state holds no EWC state: add ewc_regularizer to the chain")

    def fit(like: PyTree, full: PyTree) -> PyTree:
        return jax.tree.map(lambda m, x: m if _is_masked(m) else x, like, full, is_leaf=_is_masked)

    def replace(node: Any) -> Any:
        if not isinstance(node, EWCState):
            return node
        num_tasks = jnp.asarray(ewc_state.num_tasks, node.num_tasks.dtype)
        return EWCState(
            fit(node.anchors, ewc_state.anchors), fit(node.fisher, ewc_state.fisher), num_tasks
        )

    return jax.tree.map(replace, opt_state, is_leaf=lambda x: isinstance(x, EWCState))
