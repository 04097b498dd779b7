"""Running `launch/train.py` as a user would, in a subprocess, optionally signalling it at a
chosen moment: a deterministic stand-in for a scheduler's SIGTERM, an OOM-killer's SIGKILL or a
user's Ctrl-C."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.py"

# argv: SIGNAL WHERE AT train.py-args... The process sends itself SIGNAL
#   WHERE=step     AT=n        right after the training metrics of step n are logged;
#   WHERE=startup  AT=-        when the run starts being built (before any training);
#   WHERE=evaluate AT=split#k  at the start of the k-th evaluation pass over `split`.
SIGNALLER = """
import os, runpy, signal, sys
sig, where, at = getattr(signal, sys.argv[1]), sys.argv[2], sys.argv[3]
kill = lambda: os.kill(os.getpid(), sig)
if where == "step":
    from research.tracking import Tracker
    log = Tracker.log
    def hooked(self, step, metrics):
        log(self, step, metrics)
        if step == int(at) and "train/loss" in metrics:
            kill()
    Tracker.log = hooked
elif where == "startup":
    from research.train import loop
    build = loop.build_run
    def hooked(config, *args):
        kill()
        return build(config, *args)
    loop.build_run = hooked
elif where == "evaluate":
    from research.train import evaluation
    evaluate, (split, nth), calls = evaluation.evaluate, at.split("#"), []
    def hooked(run, state, which, **kwargs):
        calls.append(which)
        if which == split and calls.count(split) == int(nth):
            kill()
        return evaluate(run, state, which, **kwargs)
    evaluation.evaluate = hooked
sys.argv = ["launch/train.py", *sys.argv[4:]]
runpy.run_path("launch/train.py", run_name="__main__")
"""


def train(
    workdir: Path | str,
    data_dir: str,
    *overrides: str,
    config: Path | str = SMOKE,
    signal_at: tuple[str, str, str] | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """`launch/train.py --config=config --workdir=workdir --config.<override> ...`; with
    `signal_at=(SIGNAL, WHERE, AT)` the run signals itself as SIGNALLER describes."""
    args = [f"--config={config}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
    args += [f"--config.{o}" for o in overrides]
    if signal_at is None:
        cmd = [sys.executable, "launch/train.py", *args]
    else:
        cmd = [sys.executable, "-c", SIGNALLER, *map(str, signal_at), *args]
    env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def one_error_line(result: subprocess.CompletedProcess, message: str, code: int = 2) -> str:
    """Assert the run exited with `code` and a single `error: ...` line holding `message`."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    return lines[0]
