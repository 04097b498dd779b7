"""The benchmark entry point (launch/bench.py) in its smallest setting, and its timing maths."""

import importlib.util
import re
from pathlib import Path

import pytest

from research.bench import report, workloads
from research.bench.runner import Row
from research.bench.spec import Step
from research.bench.timing import Timings, interleave

BENCH = Path(__file__).resolve().parents[1] / "launch" / "bench.py"


def _bench_module():
    """launch/bench.py loaded in-process (launch/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _frameworks() -> list[str]:
    """The project and whichever of PyTorch and Keras this Python has (no torch on 3.12)."""
    present = [
        f for f, m in (("torch", "torch"), ("keras", "keras")) if importlib.util.find_spec(m)
    ]
    return ["project", *present]


def test_smallest_benchmark_prints_one_row_with_a_ratio_per_framework(tmp_path, capsys):
    frameworks = _frameworks()
    out = tmp_path / "bench" / "table.md"
    argv = ["--workloads=mlp", "--rounds=1", "--steps=2", f"--frameworks={','.join(frameworks)}"]
    assert _bench_module().main([*argv, f"--out={out}"]) == 0
    written = out.read_text()
    assert capsys.readouterr().out.endswith(written)  # after any dataset-preparation line
    header, rule, row, blank, machine = written.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(columns, [c.strip() for c in row.strip("|").split("|")], strict=True))
    assert cells["workload"] == "mlp" and cells["batch"] == str(workloads.get("mlp").batch_size)
    for framework in frameworks:
        assert float(cells[f"{framework} ms/step"]) > 0
    for other in frameworks[1:]:
        assert re.fullmatch(r"\d+\.\d\dx \[\d+\.\d\dx\]", cells[f"project vs {other}"])
    assert len(cells[columns[-3]].split(" / ")) == len(frameworks)  # first-step seconds
    assert float(cells["project MiB"]) > 0
    assert re.fullmatch(r"\S+ \(\d+\.\d%\)", cells["project GFLOP/s"])
    assert "median of 1 interleaved rounds of 2 steps" in machine


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workloads=mlp,transformer"], "unknown benchmark workload 'transformer'"),
        (["--frameworks=project,jax2"], "--frameworks=project,jax2"),
        (["--frameworks=torch"], "name 'project'"),
        (["--rounds=0"], "--rounds must be a positive integer"),
        (["--precision=float16"], "bad command line"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(argv, message, capsys):
    assert _bench_module().main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_interleaving_rotates_the_order_and_times_every_step():
    calls = []
    steps = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    timings = interleave(steps, rounds=3, steps_per_round=2)
    assert "".join(calls) == "aabbcc" + "bbccaa" + "ccaabb"
    assert all(len(t) == 3 and min(t) >= 0 for t in timings.per_round.values())


def test_speedup_is_the_median_of_per_round_ratios_and_the_ratio_of_best_rounds():
    timings = Timings({"project": [1.0, 2.0, 4.0], "torch": [3.0, 2.0, 4.0]})
    row = Row(workloads.get("mlp"), {"project": Step(lambda: None, 1, 0.0)}, timings)
    median, best = report.speedup(row, "torch")
    assert median == pytest.approx(1.0)  # ratios 3, 1, 1
    assert best == pytest.approx(2.0)  # fastest rounds: 2.0 vs 1.0
