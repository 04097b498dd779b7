"""Grad-CAM of an image classifier: where in an image the evidence for the predicted class lies,
and the figure showing it (each image beside its overlay, both enlarged to about `DISPLAY_SIZE`
pixels).

Grad-CAM needs no change to model code: while the model runs, `flax.linen.intercept_methods`
adds a zero perturbation to the output of the target top-level module, and the gradient of the
predicted class's logit with respect to that perturbation is the gradient with respect to the
feature map. The model runs in eval mode, unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry touched

from research.errors import ConfigError
from research.reporting import figures

STAGE = re.compile(r"stage(\d+)")  # the models' top-level stages: stage1, stage2, ...
# Grad-CAM panels are drawn about this many pixels a side: an 8x8 digit shown at its own
# resolution (or smoothed by matplotlib) is an unreadable wash of colour.
DISPLAY_SIZE = 128
HEAT_CMAP, HEAT_OPACITY = "jet", 0.5  # the usual Grad-CAM colours, half see-through


@dataclasses.dataclass(frozen=True)
class GradCam:
    """Grad-CAM of a batch: channel weights (B, C), the map at the layer's resolution (B, h, w),
    the map upsampled to the image and scaled to [0, 1] per image (B, H, W), predicted classes."""

    weights: np.ndarray
    coarse: np.ndarray
    maps: np.ndarray
    predicted: np.ndarray


def gradcam_layer(model_params: dict, configured: str | None) -> str | None:
    """The configured Grad-CAM module, else the last top-level `stage<N>` (None: no stages)."""
    if configured:
        return configured
    stages = [(int(m[1]), name) for name in model_params if (m := STAGE.fullmatch(name))]
    return max(stages)[1] if stages else None


def grad_cam(model: nn.Module, variables: dict, images: np.ndarray, layer: str) -> GradCam:
    """Grad-CAM of the predicted class at the output of top-level module `layer`.

    The gradient of the class logit with respect to the feature map A is averaged over space
    into one weight per channel; the map is ReLU(sum_c w_c A_c), upsampled bilinearly to the
    image size. The model runs in eval mode, unchanged.
    """
    images = jnp.asarray(images)
    shape = feature_shape(model, variables, images, layer)
    score = _perturbed_score(model, layer)
    grad_fn = jax.jit(jax.grad(score, has_aux=True))
    grads, (features, predicted) = grad_fn(jnp.zeros(shape, jnp.float32), variables, images)
    weights = jnp.mean(grads, axis=(1, 2))
    coarse = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", features.astype(jnp.float32), weights))
    fine = jax.image.resize(coarse, (*coarse.shape[:1], *images.shape[1:3]), "bilinear")
    peak = jnp.max(fine, axis=(1, 2), keepdims=True)
    maps = jnp.where(peak > 0, fine / jnp.where(peak > 0, peak, 1.0), 0.0)
    return GradCam(*(np.asarray(a) for a in (weights, coarse, maps, predicted)))


def _perturbed_score(model: nn.Module, layer: str):
    """`(delta, variables, images) -> (sum of predicted-class logits, (features, predicted))`
    with `delta` added to the output of top-level module `layer`."""

    def score(delta: jax.Array, variables: dict, images: jax.Array) -> tuple:
        captured = {}

        def perturb(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.path == (layer,):
                captured["features"] = out
                return out + delta.astype(out.dtype)
            return out

        with nn.intercept_methods(perturb):
            logits, _ = model.apply(variables, images, train=False)
        if "features" not in captured:
            raise ConfigError(f"evaluation.gradcam_layer='{layer}' was never called by the model")
        predicted, chosen = _predicted_logit(logits)
        return jnp.sum(chosen), (captured["features"], predicted)

    return score


def _predicted_logit(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Predicted class and its logit per example; with one output unit (a sigmoid), class 1's
    logit is z and class 0's is -z (the two-class softmax with logits (0, z), up to a shift)."""
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        z = logits[:, 0]
        predicted = (jax.lax.stop_gradient(z) > 0).astype(jnp.int32)
        return predicted, jnp.where(predicted == 1, z, -z)
    predicted = jnp.argmax(jax.lax.stop_gradient(logits), -1)
    return predicted, jnp.take_along_axis(logits, predicted[:, None], axis=1)[:, 0]


def feature_shape(model: nn.Module, variables: Any, images: Any, layer: str) -> tuple:
    """The output shape of `layer` for `images`, traced abstractly (nothing is computed)."""
    score = _perturbed_score(model, layer)
    return tuple(jax.eval_shape(score, jnp.float32(0), variables, images)[1][0].shape)


def plot_gradcam(
    images: np.ndarray,
    cam: GradCam,
    labels: np.ndarray,
    path: Path,
    *,
    layer: str | None = None,
    columns: int = 4,
) -> Path:
    """The Grad-CAM figure (see `gradcam_figure`) saved as a PNG at `path`."""
    fig = gradcam_figure(images, cam, labels, layer=layer, columns=columns)
    return figures.save(fig, path)


def gradcam_figure(
    images: np.ndarray,
    cam: GradCam,
    labels: np.ndarray,
    *,
    layer: str | None = None,
    columns: int = 4,
    size: int = DISPLAY_SIZE,
) -> Figure:
    """For each image, two panels: the image enlarged for display (titled with the true and
    predicted class) and its Grad-CAM overlay (`gradcam_overlay`); `columns` images a row."""
    n = images.shape[0]
    cols = min(columns, n)
    rows = -(-n // cols)
    # Constrained layout makes room for the colour bar; tight_layout cannot place one.
    fig = Figure(figsize=(3.4 * cols + 0.8, 1.9 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        shown, overlay = gradcam_overlay(images[i], cam.coarse[i], size)
        left, right = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        left.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
        left.set_title(f"true {labels[i]} / pred {cam.predicted[i]}", fontsize=8)
        right.imshow(overlay, interpolation="nearest")
        # An all-zero map (no location raised the class score) would read as "cold everywhere".
        right.set_title("Grad-CAM" if cam.coarse[i].max() > 0 else "Grad-CAM: 0", fontsize=8)
    bar = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), HEAT_CMAP)
    fig.colorbar(bar, ax=axes, shrink=0.8, label="fraction of the map's peak")
    h, w = cam.coarse.shape[1:]
    source = f"{layer}'s" if layer else "the layer's"
    fig.suptitle(
        f"Grad-CAM of the predicted class from {source} {h}x{w} feature map, "
        "upsampled bilinearly to the image",
        fontsize=9,
    )
    return fig


def gradcam_overlay(
    image: np.ndarray, coarse: np.ndarray, size: int = DISPLAY_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """`image` (H, W, C) enlarged for display, and the Grad-CAM overlay at the same resolution.

    The image is enlarged by the integer factor that brings its longer side nearest to `size`
    (never shrunk), nearest-neighbour, so its pixels stay sharp squares. The coarse map (h, w)
    is upsampled bilinearly straight to that resolution, scaled to [0, 1] by its peak, coloured
    and blended over the grayscale image. Returns (image: 2-D or RGB, overlay: RGB) in [0, 1].
    """
    image = _displayable(image)
    factor = max(1, round(size / max(image.shape[:2])))
    shown = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    gray = shown if shown.ndim == 2 else shown @ np.array([0.299, 0.587, 0.114])  # luma
    heat = upsample_map(coarse, gray.shape)
    colour = matplotlib.colormaps[HEAT_CMAP](heat)[..., :3]
    overlay = (1.0 - HEAT_OPACITY) * gray[..., None] + HEAT_OPACITY * colour
    return shown, np.clip(overlay, 0.0, 1.0)  # colormap floats can exceed 1 by an ulp


def upsample_map(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A (h, w) map resized bilinearly to `shape`, as a fraction of the coarse map's peak (all
    zeros when the map is). Upsampling by an integer factor keeps the map's mean; every value
    is a blend of neighbouring cells, so none exceeds 1."""
    coarse = np.asarray(coarse, np.float32)
    fine = np.asarray(jax.image.resize(jnp.asarray(coarse), shape, "bilinear"))
    peak = coarse.max()
    return fine / peak if peak > 0 else np.zeros_like(fine)


def _displayable(image: np.ndarray) -> np.ndarray:
    """An image scaled to [0, 1] per image (inputs may be normalised), 2-D if single-channel."""
    image = np.asarray(image, np.float64)
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image[..., 0] if image.shape[-1] == 1 else image[..., :3]
