"""FLOPs of a function counted from its jaxpr, loops included.

XLA's cost analysis counts the body of a `lax.scan` (a while loop after lowering) once, so a
recurrent step of length T is undercounted about T-fold. Here every equation of the traced
program is counted, a scan's body times its length: matrix products and convolutions exactly
(2 multiply-adds per term), elementwise arithmetic as one FLOP per output element and reductions
as one per input element (as XLA counts them); transcendental functions (exp, tanh, ...) are not
FLOPs here, as in XLA's `flops` entry. A `while_loop` with a data-dependent trip count is counted
once, and a `cond` as its most expensive branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core

# One FLOP per output element.
_ELEMENTWISE = frozenset(
    {
        "add", "sub", "mul", "div", "neg", "max", "min", "abs", "sign", "square", "rem",
        "integer_pow", "pow", "sqrt", "rsqrt", "select_n", "clamp", "add_any", "floor", "ceil",
        "round", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor",
    }
)  # fmt: skip
# One FLOP per input element.
_REDUCTIONS = frozenset(
    {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "cumsum"}
)


def count(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """FLOPs of one call of `fn(*args, **kwargs)`; arguments may be arrays or ShapeDtypeStructs."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def jaxpr_flops(jaxpr: core.Jaxpr) -> float:
    """FLOPs of every equation of `jaxpr`, nested jaxprs included."""
    return float(sum(_equation(eqn) for eqn in jaxpr.eqns))


def _equation(eqn: core.JaxprEqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        return _dot(eqn)
    if name == "conv_general_dilated":
        return _conv(eqn)
    if name == "scan":
        return eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    if name == "cond":
        return max(jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
    if name in _ELEMENTWISE:
        return float(sum(_size(v) for v in eqn.outvars))
    if name in _REDUCTIONS:
        return float(sum(_size(v) for v in eqn.invars))
    # Calls (jit, custom_jvp/vjp, remat, shard_map, while): the jaxprs they hold.
    return sum(jaxpr_flops(inner) for inner in _inner_jaxprs(eqn.params))


def _dot(eqn: core.JaxprEqn) -> float:
    """2 x (output elements) x (contracted elements per output)."""
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * _size(eqn.outvars[0]) * math.prod(lhs[d] for d in contract)


def _conv(eqn: core.JaxprEqn) -> float:
    """2 x (output elements) x (kernel window x input features per group)."""
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
    kernel = eqn.invars[1].aval.shape
    per_output = kernel[rhs_spec[1]] * math.prod(kernel[d] for d in rhs_spec[2:])
    return 2.0 * _size(eqn.outvars[0]) * per_output


def _inner_jaxprs(params: dict[str, Any]) -> list[core.Jaxpr]:
    inner = []
    for value in params.values():
        if isinstance(value, core.ClosedJaxpr):
            inner.append(value.jaxpr)
        elif isinstance(value, core.Jaxpr):
            inner.append(value)
    return inner


def _size(var: Any) -> int:
    return math.prod(getattr(var.aval, "shape", ()))
