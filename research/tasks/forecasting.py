"""Regression on sequences: direct multi-horizon forecasts (and any sequence -> numbers problem).

Records hold "inputs" (time, features) and "targets" (horizon, target columns), or a scalar
"target" (e.g. the adding problem). The model has horizon x columns outputs, reshaped to the
targets; the training loss is their mean squared error in the units the data is prepared in
(scaled, possibly differenced).

Forecast windows made by research.data.sequences also carry what is needed to score in the
series' ORIGINAL units: "scale" and "offset" (prediction * scale + offset undoes the scaling and
the differencing; then exp undoes `data.series.log`), the original "truth", and the baselines'
predictions ("naive", "seasonal_naive", "ar"). Evaluation then reports mse, rmse, mae and mape
of the model and the rmse, mae and mse of every baseline over the same windows, and the summary
says which baselines the model beat. Without those keys the metrics are in the data's own units.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research.tasks.base import SequenceInputs
from research.tasks.registry import TaskData, TaskEntry

BASELINES = ("naive", "seasonal_naive", "ar")
_MAPE_FLOOR = 1e-8  # |truth| at or below this is left out of MAPE (it is undefined at zero)


@dataclasses.dataclass(frozen=True)
class RegressionTask(SequenceInputs):
    """Mean squared error on `targets`; metrics in original units when the windows allow."""

    output_shape: tuple[int, ...] = (1, 1)  # (horizon, target columns), from the data
    log_levels: bool = False  # the windows hold log(values) (data.series.log), from the data

    @property
    def model_outputs(self) -> int:
        """One output per horizon step and target column."""
        return int(np.prod(self.output_shape))

    def transform(self) -> Callable[[dict], dict]:
        """Records -> float32 inputs and (horizon, columns) targets."""
        return functools.partial(_regression_record, output_shape=self.output_shape)

    def predictions(self, outputs: jax.Array, batch: dict) -> jax.Array:
        """The model's outputs in the shape of the targets."""
        return outputs.reshape(batch["targets"].shape)

    def loss(self, outputs: jax.Array, aux: dict, batch: dict) -> tuple[jax.Array, dict]:
        """Mean squared error over every horizon step and column."""
        loss = jnp.mean((self.predictions(outputs, batch) - batch["targets"]) ** 2)
        return loss, {"loss": loss}

    def eval_sums(self, outputs: jax.Array, aux: dict, batch: dict) -> dict[str, jax.Array]:
        """Masked sums of squared / absolute / percentage errors, per horizon step too."""
        mask = batch["mask"][:, None, None]
        pred = self.predictions(outputs, batch)
        sums = {"loss": jnp.sum(jnp.mean((pred - batch["targets"]) ** 2, (1, 2)) * mask[:, 0, 0])}
        truth = batch.get("truth", batch["targets"])
        error = original_units(pred, batch, log=self.log_levels) - truth
        sums.update(_error_sums("", error, mask))
        for name in BASELINES:
            if name in batch:
                sums.update(_error_sums(f"{name}_", batch[name] - truth, mask))
        defined = (jnp.abs(truth) > _MAPE_FLOOR) * mask
        ape = jnp.abs(error) / jnp.maximum(jnp.abs(truth), 1e-8)
        sums["ape"] = jnp.sum(ape * defined)
        sums["ape_count"] = jnp.sum(defined)
        sums["count"] = jnp.sum(mask) * self.model_outputs
        sums["examples"] = jnp.sum(mask)
        return sums

    def finalize(self, sums: dict[str, Any]) -> dict[str, float]:
        """loss (training units), mse/rmse/mae/mape (original units), baselines' rmse/mae/mse."""
        count = float(sums["count"])
        metrics = {"loss": float(sums["loss"]) / float(sums["examples"])}
        for prefix in ("", *(f"{b}_" for b in BASELINES)):
            if f"{prefix}sq" not in sums:
                continue
            mse = float(sums[f"{prefix}sq"]) / count
            metrics[f"{prefix}mse"] = mse
            metrics[f"{prefix}rmse"] = float(np.sqrt(mse))
            metrics[f"{prefix}mae"] = float(sums[f"{prefix}abs"]) / count
        defined = float(sums["ape_count"])
        metrics["mape"] = 100.0 * float(sums["ape"]) / defined if defined else float("nan")
        return metrics

    def summary(self, sums: dict[str, Any]) -> dict[str, Any]:
        """RMSE per horizon step, and whether the model's RMSE beat each baseline's."""
        examples = float(sums["examples"]) * self.output_shape[-1]
        by_step = np.sqrt(np.asarray(sums["sq_by_step"], np.float64) / examples)
        out: dict[str, Any] = {"rmse_by_horizon": [float(v) for v in by_step]}
        rmse = self.finalize(sums)
        beats = {b: rmse["rmse"] < rmse[f"{b}_rmse"] for b in BASELINES if f"{b}_rmse" in rmse}
        if beats:
            out["beats"] = beats
            out["beat_baselines"] = all(beats.values())
        return out

    def plots(self, sums: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
        """No figures from the sums (forecast-vs-truth plots need the model: the forecast's
        report, research/reporting/forecasting.py)."""
        del sums, directory, prefix
        return []


def original_units(pred: jax.Array, batch: dict, *, log: bool = False) -> jax.Array:
    """Predictions back in the series' units: pred * scale + offset (identity without them),
    then exp when the windows were cut from the log of the series."""
    if "scale" not in batch:
        return pred
    levels = pred * batch["scale"][:, None, :] + batch["offset"][:, None, :]
    return jnp.exp(levels) if log else levels


def _error_sums(prefix: str, error: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Masked sums of squared and absolute errors (and squared, per horizon step, for the model)."""
    sums = {
        f"{prefix}sq": jnp.sum(error**2 * mask),
        f"{prefix}abs": jnp.sum(jnp.abs(error) * mask),
    }
    if not prefix:
        sums["sq_by_step"] = jnp.sum(error**2 * mask, axis=(0, 2))
    return sums


def _regression_record(record: dict, *, output_shape: Sequence[int]) -> dict:
    """float32 inputs/targets shaped (horizon, columns); other prepared keys pass through."""
    out = dict(record)
    out["inputs"] = np.asarray(record["inputs"], np.float32)
    target = record["targets"] if "targets" in record else record["target"]
    out["targets"] = np.asarray(target, np.float32).reshape(tuple(output_shape))
    out.pop("target", None)
    return out


def _regression(options: dict[str, Any], info: TaskData) -> RegressionTask:
    return RegressionTask(
        output_shape=tuple(info.output_shape or (1, 1)),
        log_levels=info.log_levels,
        **options,
    )


ENTRIES = {
    "forecasting": TaskEntry(_regression, options=RegressionTask),
    "regression": TaskEntry(_regression, options=RegressionTask),
}
