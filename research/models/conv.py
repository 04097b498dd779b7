"""How a 2-D convolution is computed: XLA's convolution, or image patches times one matmul.

XLA:CPU's convolution is slow on small feature maps with many channels (a ResNet's last stages
at 32x32 inputs: 4x4 maps and smaller), where gathering the k x k patches of every output pixel
side by side (im2col) and multiplying them by the kernel, reshaped to (k * k * in, out), is one
large matmul. Both compute the same function of the same parameters (flax's `kernel`, HWIO),
so ported weights and checkpoints do not care which one ran. The model option `conv` picks:

- "xla": `lax.conv_general_dilated`;
- "im2col": patches and a matmul for every ungrouped, undilated 2-D convolution (others: XLA);
- "auto" (default): im2col on CPU where the output map has at most `AUTO_MAX_PIXELS` pixels or
  the kernel is 1x1, XLA's convolution elsewhere and on every other backend (at 8x8 maps the
  quickstart CNN's step was no faster as im2col, and its larger programs compile slower).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from research.errors import ConfigError

CONV_IMPLS = ("auto", "xla", "im2col")
AUTO_MAX_PIXELS = 16  # output maps of 4x4 and smaller; measured with launch/bench.py


def check_impl(name: str) -> None:
    """A ConfigError for an unknown `model.conv`."""
    if name not in CONV_IMPLS:
        raise ConfigError(f"unknown model.conv '{name}'; known: {', '.join(CONV_IMPLS)}")


def conv_function(name: str) -> Callable[..., jax.Array]:
    """The `conv_general_dilated` that flax's nn.Conv should call for `model.conv` = `name`
    (the same object every time, so modules built from equal configs stay equal)."""
    check_impl(name)
    return _FUNCTIONS[name]


def _conv(
    name: str,
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """lax.conv_general_dilated's signature; im2col where it applies and is chosen."""
    args = (lhs, rhs, window_strides, padding)
    options = {
        "lhs_dilation": lhs_dilation,
        "rhs_dilation": rhs_dilation,
        "dimension_numbers": dimension_numbers,
        "feature_group_count": feature_group_count,
        "precision": precision,
        **kwargs,
    }
    plain = (
        lhs.ndim == 4
        and feature_group_count == 1
        and not kwargs
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and _is_nhwc_hwio(dimension_numbers, lhs.ndim)
    )
    if not plain:
        return lax.conv_general_dilated(*args, **options)
    pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2], window_strides)
    if name == "auto" and not _auto_prefers_im2col(lhs.shape, rhs.shape, window_strides, pads):
        return lax.conv_general_dilated(*args, **options)
    return im2col_conv(lhs, rhs, window_strides, pads, precision=precision)


_FUNCTIONS: dict[str, Callable[..., jax.Array]] = {
    "xla": lax.conv_general_dilated,
    "auto": functools.partial(_conv, "auto"),
    "im2col": functools.partial(_conv, "im2col"),
}


def im2col_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    *,
    precision: Any = None,
) -> jax.Array:
    """NHWC x HWIO convolution as patches (B, H', W', kh * kw * C) times the kernel reshaped
    to (kh * kw * C, O): the patches' order (row, column, channel) is the kernel's HWI order."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    height, width = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    # Kernel rows (columns) that only ever see padding add zeros: leave them out (a 3x3 kernel
    # on a 1x1 map keeps its centre tap only).
    rows = _live_taps(kh, out_h, sh, pads[0][0], height)
    cols = _live_taps(kw, out_w, sw, pads[1][0], width)
    taps = [
        lax.slice(
            x,
            (0, i, j, 0),
            (x.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, cin),
            (1, sh, sw, 1),
        )
        for i in rows
        for j in cols
    ]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    live = kernel[jnp.array(rows)][:, jnp.array(cols)]
    return jnp.dot(patches, live.reshape(len(rows) * len(cols) * cin, cout), precision=precision)


def _live_taps(k: int, out: int, stride: int, low: int, size: int) -> list[int]:
    """Offsets of a kernel axis that meet at least one real (unpadded) input position."""
    return [i for i in range(k) if any(low <= i + r * stride < low + size for r in range(out))]


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
    """Whether the convolution is laid out as flax's nn.Conv lays out 2-D ones."""
    if dimension_numbers is None:
        return False  # lax's default is NCHW / OIHW
    spec = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    nhwc = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, ("NHWC", "HWIO", "NHWC"))
    return spec == nhwc


def _pads(
    padding: str | Sequence[tuple[int, int]],
    spatial: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
) -> list[tuple[int, int]]:
    """Explicit (low, high) pads per spatial axis, as lax resolves 'SAME' and 'VALID'."""
    if isinstance(padding, str):
        return [tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding)]
    return [tuple(p) for p in padding]


def _auto_prefers_im2col(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> bool:
    """On CPU: 1x1 kernels (a matmul either way) and outputs of at most AUTO_MAX_PIXELS."""
    if jax.default_backend() != "cpu":
        return False
    if tuple(kernel_shape[:2]) == (1, 1):
        return True
    out = [
        (size + lo + hi - k) // s + 1
        for size, (lo, hi), k, s in zip(x_shape[1:3], pads, kernel_shape[:2], strides, strict=True)
    ]
    return out[0] * out[1] <= AUTO_MAX_PIXELS
