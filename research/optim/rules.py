"""Per-parameter rules: a table of regexes over `a/b/c` parameter paths decides, for each
parameter, its group, learning-rate multiplier (0 freezes it) and whether weight decay applies.

Rules are `(regex, group, lr_multiplier, decay)` tuples; the first whose regex matches the whole
path wins, and every parameter must be matched, so a new layer never silently escapes a rule.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax
import numpy as np

from research.errors import ConfigError

# The default: no weight decay on biases and normalisation parameters (BatchNorm/LayerNorm
# scale and bias), decay on everything else.
DEFAULT_RULES = (
    (r"(.*/)?(bias|scale)", "no_decay", 1.0, False),
    (r".*", "default", 1.0, True),
)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What the rule table decided for one parameter."""

    group: str
    lr: float
    decay: bool


def key_path_str(key_path: tuple) -> str:
    """A jax key path (dict keys, dataclass fields, indices) as an `a/b/c` parameter path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


def param_paths(params: Any) -> list[str]:
    """The `a/b/c` path of every parameter leaf, in flattening order."""
    return ["/".join(map(str, k)) for k in flax.traverse_util.flatten_dict(_plain(params))]


def resolve_rules(params: Any, rules: Sequence[Sequence[Any]]) -> dict[str, Rule]:
    """path -> Rule for every parameter; a parameter no rule matches is a ConfigError."""
    compiled = [_compile(rule) for rule in rules]
    resolved = {}
    for path in param_paths(params):
        match = next((r for pattern, r in compiled if pattern.fullmatch(path)), None)
        if match is None:
            raise ConfigError(
                f"parameter '{path}' matches no entry of param_rules; add a rule for it "
                "(e.g. a final ('.*', 'default', 1.0, True))"
            )
        resolved[path] = match
    return resolved


def _compile(rule: Sequence[Any]) -> tuple[re.Pattern, Rule]:
    if len(rule) != 4:
        raise ConfigError(
            f"param_rules entry {tuple(rule)!r} must be (regex, group, lr_multiplier, decay)"
        )
    pattern, group, lr, decay = rule
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"param_rules regex '{pattern}' is invalid: {e}") from None
    if float(lr) < 0:
        raise ConfigError(f"param_rules '{pattern}': lr multiplier must be >= 0, got {lr}")
    return compiled, Rule(group=str(group), lr=float(lr), decay=bool(decay))


def tree_of(params: Any, values: Mapping[str, Any]) -> Any:
    """A tree shaped like `params` holding `values[path]` at each leaf."""
    flat = flax.traverse_util.flatten_dict(_plain(params))
    return flax.traverse_util.unflatten_dict({k: values["/".join(map(str, k))] for k in flat})


def table(
    params: Any, rules: Mapping[str, Rule], lr_multipliers: Mapping[str, float]
) -> list[dict[str, Any]]:
    """One row per parameter: path, shape, group, effective lr multiplier, decay."""
    flat = flax.traverse_util.flatten_dict(_plain(params))
    return [
        {
            "path": path,
            "shape": list(np.shape(leaf)),
            "group": rules[path].group,
            "lr_multiplier": float(lr_multipliers[path]),
            "decay": rules[path].decay,
        }
        for path, leaf in (("/".join(map(str, k)), v) for k, v in flat.items())
    ]


def format_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rule table as aligned text, for the log."""
    rows = list(rows)
    header = ("path", "shape", "group", "lr_mult", "decay")
    cells = [
        (
            r["path"],
            "x".join(map(str, r["shape"])) or "()",
            r["group"],
            f"{r['lr_multiplier']:g}",
            "yes" if r["decay"] else "no",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def _plain(tree: Any) -> Any:
    """FrozenDicts and other mappings as plain nested dicts."""
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def group_summary(rows: Iterable[Mapping[str, Any]]) -> str:
    """One line per group: parameter count, size, lr multipliers and decay, for the log."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    lines = []
    for group, members in groups.items():
        size = sum(int(np.prod(r["shape"])) for r in members)
        mults = sorted({r["lr_multiplier"] for r in members})
        lr = f"{mults[0]:g}" if len(mults) == 1 else f"{mults[0]:g}..{mults[-1]:g}"
        decay = sorted({"yes" if r["decay"] else "no" for r in members})
        lines.append(
            f"{group}: {len(members)} tensors, {size:,} values, lr x{lr}, decay {'/'.join(decay)}"
        )
    return "\n".join(lines)
