"""Run tracking: `metrics.jsonl` (the source of truth), `summary.json`, W&B mirror, progress bar.

This is the only module that imports wandb. Only the main process (process 0) writes; the others
construct the same objects with `is_main=False` so every host runs the same code. Each metrics line
is written in one call and flushed, so a SIGKILL loses at most the line being written, and a torn
last line is dropped when the run resumes. An object store (gs://) cannot append: there the lines
are kept in memory and the object rewritten every FLUSH_S seconds and before every checkpoint,
so a resumed run's history still reaches its checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from research import rundir, storage
from research.errors import ConfigError, WorkdirError
from research.manifest import to_jsonable, write_json

METRICS_FILE, SUMMARY_FILE = rundir.METRICS, rundir.SUMMARY
WANDB_MODES = ("online", "offline", "disabled")
FLUSH_S = 30.0  # how often metrics.jsonl on an object store is rewritten during training


def run_id(workdir: str | os.PathLike) -> str:
    """A W&B run id that is a pure function of the absolute workdir, so a resume continues it."""
    path = os.fspath(storage.workdir_path(workdir))
    digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:12]
    # The readable prefix helps find the run in W&B; the digest makes it unique per path.
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.basename(path))[:40].strip("-")
    return f"{stem}-{digest}" if stem else digest


def _parse_lines(path: os.PathLike) -> tuple[list[dict], int]:
    """Complete records of a metrics file and the byte length they occupy.

    A last line without a newline, or one that is not valid JSON, is a write cut short by a kill
    and is left out; a bad line elsewhere is corruption and raises WorkdirError.
    """
    data = path.read_bytes()
    records, offset = [], 0
    lines = data.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if record is None or not line.endswith(b"\n"):
            if is_last:
                break
            raise WorkdirError(f"{path}:{number}: not a JSON metrics record: {line[:80]!r}")
        records.append(record)
        offset += len(line)
    return records, offset


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of `<workdir>/metrics.jsonl` in order ([] when there is none yet)."""
    path = storage.workdir_path(workdir) / METRICS_FILE
    return _parse_lines(path)[0] if path.exists() else []


def _to_float(key: str, value: Any) -> float:
    """A metric value as a Python float (from Python, numpy or JAX scalars)."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric {key!r} must be a scalar, got shape {array.shape}")
    return float(array.reshape(()))


def resolve_wandb_mode(wandb_mode: str) -> str:
    """The W&B mode to use: `WANDB_MODE` in the environment wins, so a test suite or an air-gapped
    cluster can switch W&B off or offline without editing configs."""
    source, mode = "tracking.wandb_mode", wandb_mode
    if os.environ.get("WANDB_MODE"):
        source, mode = "WANDB_MODE", os.environ["WANDB_MODE"]
    if mode not in WANDB_MODES:
        raise ConfigError(f"{source}={mode!r}: must be one of {', '.join(WANDB_MODES)}")
    return mode


def _init_wandb(workdir: os.PathLike, mode: str, config: dict, **init_kwargs: Any):
    """Starts (or resumes) the W&B run of `workdir`, writing its files under `<workdir>/wandb/`
    (under the temporary directory for a gs:// workdir: W&B writes local files)."""
    import wandb  # Deferred: a disabled tracker should not pay for importing wandb.

    directory = os.fspath(workdir)
    if storage.is_remote(workdir):
        directory = os.path.join(tempfile.gettempdir(), run_id(workdir))
        os.makedirs(directory, exist_ok=True)
    run = wandb.init(
        mode=mode,
        dir=directory,
        id=run_id(workdir),
        resume="allow",
        config=config,
        # Leave stdout/stderr (and the progress bar) alone, and keep the terminal quiet.
        settings=wandb.Settings(console="off", silent=True),
        **init_kwargs,
    )
    # Our own "step" axis: after a resume, steps between the checkpoint and the kill are logged
    # again, which W&B's built-in monotonic step would silently drop.
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


class _AppendedLines:
    """metrics.jsonl on a local disk: each record appended and flushed as one line."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = os.fspath(path)
        if os.path.exists(self.path):  # cut off a line torn by a kill
            _, complete = _parse_lines(path)
            if complete != os.path.getsize(self.path):
                os.truncate(self.path, complete)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def append(self, line: str) -> None:
        # One write of one complete line, then flush: a kill can only tear this very line.
        self._file.write(line)
        self._file.flush()

    def rewrite(self, lines: Sequence[str]) -> None:
        self._file.close()
        storage.write_text(storage.workdir_path(self.path), "".join(lines))
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def flush(self) -> None:
        """Every line is on disk already."""

    def close(self) -> None:
        self._file.close()


class _RewrittenObject:
    """metrics.jsonl on an object store, which has no append: the lines are kept and the whole
    object written on `flush` (or when FLUSH_S has passed since the last write)."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = storage.workdir_path(path)
        records = _parse_lines(self.path)[0] if self.path.exists() else []
        self._lines = [json.dumps(r) + "\n" for r in records]
        self._written = time.monotonic()
        self._dirty = False

    def append(self, line: str) -> None:
        self._lines.append(line)
        self._dirty = True
        if time.monotonic() - self._written > FLUSH_S:
            self.flush()

    def rewrite(self, lines: Sequence[str]) -> None:
        self._lines = list(lines)
        self._dirty = True
        self.flush()

    def flush(self) -> None:
        if self._dirty:
            storage.write_text(self.path, "".join(self._lines))
            self._written, self._dirty = time.monotonic(), False

    def close(self) -> None:
        self.flush()


class Tracker:
    """JSONL metrics (the source of truth), summary.json, W&B mirror; writes only on process 0."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        config: Mapping,
        manifest: Mapping,
        wandb_mode: str = "offline",
        project: str = "research",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        is_main: bool = True,
    ) -> None:
        """Opens `<workdir>/metrics.jsonl` for appending and starts the W&B run (main process)."""
        self.workdir = storage.workdir_path(workdir)
        self.is_main = is_main
        self._file: _AppendedLines | _RewrittenObject | None = None
        self._run = None
        self._found_metrics = False
        mode = resolve_wandb_mode(wandb_mode)
        if not is_main:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Opening creates the file: remember whether an earlier run left one (truncate_after).
        self._found_metrics = self.metrics_path.exists()
        self._open_metrics()
        if mode != "disabled":
            # The manifest rides along in the run config, so W&B alone can tell what produced it.
            wandb_config = {**to_jsonable(config), "manifest": to_jsonable(manifest)}
            self._run = _init_wandb(
                self.workdir,
                mode,
                wandb_config,
                project=project,
                entity=entity,
                name=name,
                group=group,
                tags=list(tags),
            )

    @property
    def metrics_path(self) -> os.PathLike:
        """Where the JSONL metrics go."""
        return self.workdir / METRICS_FILE

    def _open_metrics(self) -> None:
        remote = storage.is_remote(self.workdir)
        self._file = (_RewrittenObject if remote else _AppendedLines)(self.metrics_path)

    def truncate_after(self, step: int, first_logged: int = 1) -> None:
        """On resume: drops records with a step after `step` (and any torn line), atomically.
        Warns on stderr when the history before `step` is gone (metrics.jsonl deleted), if a
        row was due by then (the first log step is `first_logged`)."""
        if not self.is_main:
            return
        path = self.metrics_path
        records = (
            [r for r in _parse_lines(path)[0] if int(r["step"]) <= step] if path.exists() else []
        )
        if step >= max(first_logged, 1) and not records:
            self._warn_lost_history(step)
        self._file.rewrite([json.dumps(r) + "\n" for r in records])

    def _warn_lost_history(self, step: int) -> None:
        """One stderr line: the resumed run's JSONL lacks steps 1..`step` and cannot get them back
        (the checkpoint holds the state, not the logged metrics)."""
        state = f"holds no rows up to step {step}" if self._found_metrics else "is missing"
        print(
            f"warning: {self.metrics_path} {state}; the metrics of steps 1..{step} are gone "
            f"(training resumes from step {step})",
            file=sys.stderr,
            flush=True,
        )

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends `{"step": step, **metrics}` as one JSON line and mirrors it to W&B."""
        for key in metrics:
            if "/" not in key:
                raise ValueError(f"metric key {key!r} must look like '<split>/<name>'")
        record = {"step": int(step), **{k: _to_float(k, v) for k, v in metrics.items()}}
        if self._file is not None:
            self._file.append(json.dumps(record) + "\n")
        if self._run is not None:
            self._run.log(record)

    def flush(self) -> None:
        """Makes every logged record readable in metrics.jsonl (needed only on object stores)."""
        if self._file is not None:
            self._file.flush()

    def history(self) -> list[dict]:
        """Every record of metrics.jsonl, including those just logged ([] off process 0)."""
        if not self.is_main:
            return []
        self.flush()
        return read_metrics(self.workdir)

    def write_summary(self, summary: Mapping) -> None:
        """Writes `summary.json` (pretty, sorted keys, atomic) and sets the W&B run summary."""
        if not self.is_main:
            return
        plain = to_jsonable(summary)
        write_json(self.workdir / SUMMARY_FILE, plain)
        if self._run is not None:
            self._run.summary.update(plain)

    def log_images(self, paths: Sequence[str | os.PathLike], step: int | None = None) -> None:
        """Uploads PNGs to W&B as `plots/<file stem>` (the files themselves stay in the workdir)."""
        if self._run is None or not paths:
            return
        import wandb  # Already imported by _init_wandb when a run exists.

        images = {f"plots/{pathlib.Path(p).stem}": wandb.Image(_image(p)) for p in paths}
        self._run.log(images if step is None else {"step": int(step), **images})

    def close(self) -> None:
        """Writes out and closes the metrics file and finishes the W&B run; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._run is not None:
            run, self._run = self._run, None
            run.finish()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _image(path: str | os.PathLike) -> Any:
    """What wandb.Image takes: a local file's path, or the decoded image of a remote one."""
    if not storage.is_remote(path):
        return os.fspath(path)
    from PIL import Image

    return Image.open(io.BytesIO(storage.workdir_path(path).read_bytes()))


def _format_postfix(value: Any) -> str:
    """Short display of a postfix value: 4 significant digits for numbers."""
    if isinstance(value, int | float | np.generic) and not isinstance(value, bool):
        value = float(value)
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


class Progress:
    """A tqdm bar on the main process: steps/s, examples/s and ETA; a no-op when disabled."""

    def __init__(
        self,
        total_steps: int,
        initial_step: int = 0,
        global_batch_size: int = 1,
        enabled: bool = True,
    ) -> None:
        """Starts the bar at `initial_step` (a resume), so rates count only this run's steps."""
        self._batch = global_batch_size
        self._enabled = enabled
        # Redraw rarely when the output is a log file rather than a terminal.
        interactive = sys.stderr.isatty()
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if interactive else 30.0,
            disable=not enabled,
        )

    def update(self, step: int, **postfix: Any) -> None:
        """Moves the bar to `step` and shows `postfix` (e.g. loss) plus examples per second."""
        if not self._enabled:
            return
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)
        fields = {k: _format_postfix(v) for k, v in postfix.items()}
        stats = self._bar.format_dict
        # tqdm's smoothed rate exists only after a redraw; until then use this run's average.
        elapsed = stats["elapsed"]
        rate = stats["rate"] or ((stats["n"] - stats["initial"]) / elapsed if elapsed > 0 else 0)
        if rate:
            fields["ex/s"] = f"{rate * self._batch:.4g}"
        self._bar.set_postfix(fields, refresh=False)

    def close(self) -> None:
        """Closes the bar (prints its final state)."""
        self._bar.close()
