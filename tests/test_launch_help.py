"""`--help` and `-h` of the launch scripts: usage and every flag on stdout, exit 0, nothing run."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# script -> flags its help must list
SCRIPTS = {
    "train.py": ("--config", "--workdir"),
    "sweep.py": ("--config", "--workdir", "--backend", "--parallel", "dry_run", "--search"),
    "port.py": ("--source", "--arch", "--weights", "--output"),
    "report.py": ("--metric", "--scaling", "--curves", "--target", "--target-metric"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_flags(script, flag, tmp_path):
    # The other flags are bad on purpose: help wins over them, and nothing is written.
    cmd = [sys.executable, str(ROOT / "launch" / script), flag, f"--workdir={tmp_path}/w"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert f"launch/{script}" in out.stdout  # the usage line of the docstring
    for name in SCRIPTS[script]:
        assert name in out.stdout, name
    assert not (tmp_path / "w").exists()
