"""launch/report.py and research.analysis.{collect,tables}: seed statistics per swept group,
checked against hand computation on hand-made workdirs, and the no-runs error."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from research.analysis import collect, tables

REPO = Path(__file__).resolve().parents[1]
# 2 widths x 3 seeds; accuracies chosen so the statistics are easy to compute by hand.
ACCURACY = {16: (0.80, 0.82, 0.84), 32: (0.90, 0.91, 0.95)}
# Student t quantile 0.975 with 2 degrees of freedom, closed form for df=2: (2p-1)/sqrt(2p(1-p)).
T_975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # = 4.3027


def _write_run(path: Path, width: int, seed: int, accuracy: float) -> None:
    """A finished run as train.py leaves it (only the files the report reads)."""
    path.mkdir(parents=True)
    config = {
        "seed": seed,
        "batch_size": 32,
        "total_steps": 20,
        "model": {"name": "cnn", "width": width},
        "tracking": {"wandb_mode": "disabled", "project": f"p{seed}"},  # runtime: never a group
        "data": {"name": "digits", "data_dir": f"/scratch/{seed}"},  # data_dir is runtime too
    }
    (path / "config.json").write_text(json.dumps(config))
    summary = {"step": 20, "best/step": 10, "test/accuracy": accuracy, "test/loss": 1 - accuracy}
    (path / "summary.json").write_text(json.dumps(summary))
    records = [
        {"step": s, "train/loss": (1 - accuracy) * 10 / s, "eval/accuracy": accuracy * s / 20}
        for s in (10, 20)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Runs at different depths (`w16/s0`, `w32/nested/s1`), as sweeps lay them out."""
    for width, accs in ACCURACY.items():
        for seed, acc in enumerate(accs):
            depth = "nested/" if seed == 1 else ""
            _write_run(tmp_path / f"w{width}" / f"{depth}s{seed}", width, seed, acc)
    (tmp_path / "w16" / "not_a_run").mkdir()  # config.json missing: ignored
    return tmp_path


def _hand_stats(values: tuple[float, ...]) -> tuple[float, float, float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975_2 * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def test_groups_by_swept_key_only(sweep: Path) -> None:
    runs = collect.collect(sweep)
    assert len(runs) == 6
    assert collect.swept_keys(runs) == ["model.width"]
    groups = collect.group_runs(runs, ["model.width"])
    assert list(groups) == [(16,), (32,)]
    assert collect.numeric_metrics(runs) == ["test/accuracy", "test/loss"]


def test_statistics_match_hand_computation(sweep: Path) -> None:
    runs = collect.collect(sweep)
    rows = tables.aggregate(collect.group_runs(runs, ["model.width"]), ["test/accuracy"])
    for row, width in zip(rows, (16, 32), strict=True):
        s = row.stats["test/accuracy"]
        assert (row.values, row.n, s.n) == ((width,), 3, 3)
        expected = _hand_stats(ACCURACY[width])
        assert (s.mean, s.std, s.low, s.high) == pytest.approx(expected, rel=1e-12)
    # width 16: mean 0.82, std 0.02 exactly
    assert rows[0].stats["test/accuracy"].std == pytest.approx(0.02, rel=1e-12)


def test_single_seed_has_no_interval() -> None:
    s = tables.summarize([0.5])
    assert s.n == 1 and s.mean == 0.5
    assert math.isnan(s.std) and math.isnan(s.low) and math.isnan(s.high)


def _run_report(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "launch" / "report.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_report_writes_tables_and_curves(sweep: Path) -> None:
    result = _run_report(str(sweep), "--metric=test/accuracy")
    assert result.returncode == 0, result.stderr
    out = sweep / "report"
    m16, s16, lo16, hi16 = _hand_stats(ACCURACY[16])
    m32, s32, lo32, hi32 = _hand_stats(ACCURACY[32])
    md = (out / "report.md").read_text()
    assert "| model.width | n | test/accuracy |" in md
    assert f"| 16 | 3 | {m16:.4f} ± {s16:.4f} [{lo16:.4f}, {hi16:.4f}] |" in md
    assert f"| 32 | 3 | {m32:.4f} ± {s32:.4f} [{lo32:.4f}, {hi32:.4f}] |" in md
    tex = (out / "report.tex").read_text()
    assert "model.width & n & test/accuracy" in tex.replace("\\_", "_")
    assert f"16 & 3 & ${m16:.4f} \\pm {s16:.4f} [{lo16:.4f}, {hi16:.4f}]$ \\\\" in tex
    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model.width"] for r in rows] == ["16", "32"]
    got = [float(rows[1][f"test/accuracy/{k}"]) for k in ("mean", "std", "ci_low", "ci_high")]
    assert got == pytest.approx([m32, s32, lo32, hi32], rel=1e-12)
    for metric in ("eval_accuracy", "train_loss"):
        assert (out / f"curves_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_curve_averages_seeds(sweep: Path) -> None:
    runs = collect.group_runs(collect.collect(sweep), ["model.width"])[(16,)]
    steps, means = collect.mean_curve(runs, "train/loss")
    assert steps.tolist() == [10, 20]
    assert means.tolist() == pytest.approx([(0.2 + 0.18 + 0.16) / 3, (0.2 + 0.18 + 0.16) / 6])


def test_no_runs_is_one_line_exit_2(tmp_path: Path) -> None:
    result = _run_report(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no runs found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--metric=test/acuracy"],
            "--metric=test/acuracy: no run has this numeric summary.json metric; "
            "did you mean test/accuracy? metrics: test/accuracy, test/loss",
        ),
        (
            ["--target=0.9", "--target-metric=eval/acc"],
            "--target-metric=eval/acc: no run has this metric in metrics.jsonl; "
            "did you mean eval/accuracy? logged: eval/accuracy, train/loss",
        ),
        (["--target-metric=eval/accuracy"], "--target-metric=eval/accuracy needs --target=T"),
        (["--curves=model.widht"], "did you mean model.width? swept keys: model.width"),
        (["--scaling=width"], "argument --scaling: invalid choice: 'width'"),
        (["--group=model.width"], "unrecognized arguments: --group=model.width"),
        (["--bootstrap=0"], "argument --bootstrap: must be a whole number >= 1, got '0'"),
        (["--hidden-gradients"], "no run has plots/hidden_gradients.json"),
    ],
)
def test_unknown_names_and_bad_flags_are_one_line_errors(sweep, flags, message) -> None:
    result = _run_report(str(sweep), *flags)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert result.stdout == "" and not (sweep / "report").exists()


def test_missing_dir_or_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{}")
    for path, state in ((tmp_path / "nope", "does not exist"), (tmp_path / "summary.json", "file")):
        result = _run_report(str(path))
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert result.stderr.startswith(f"error: {path} ") and state in result.stderr


def test_target_columns_are_tabulated_without_metric_flags(sweep: Path) -> None:
    result = _run_report(str(sweep), "--target=0.5")
    assert result.returncode == 0, result.stderr
    header = (sweep / "report" / "report.md").read_text().splitlines()[0]
    assert header.endswith("| test/accuracy | test/loss | steps_to_0.5 | reached_0.5 |")


def test_tuple_valued_keys_group_and_sort_by_value(tmp_path: Path) -> None:
    # Configs store tuples (hidden_sizes) as JSON lists; groups must still form and sort by size.
    for width in (128, 4, 16):
        for seed in (0, 1):
            _write_run(tmp_path / f"w{width}s{seed}", width, seed, 0.5)
            config_path = tmp_path / f"w{width}s{seed}" / "config.json"
            config = json.loads(config_path.read_text())
            config["model"]["width"] = [width]
            config_path.write_text(json.dumps(config))
    runs = collect.collect(tmp_path)
    groups = collect.group_runs(runs, collect.swept_keys(runs))
    assert list(groups) == [((4,),), ((16,),), ((128,),)]
    assert [len(g) for g in groups.values()] == [2, 2, 2]


def test_steps_to_target_and_fraction_reached(sweep: Path) -> None:
    runs = collect.collect(sweep)
    # eval/accuracy is accuracy * step / 20 at steps 10 and 20.
    names = collect.add_steps_to(runs, "eval/accuracy", 0.5)
    for run in runs:
        acc = run.summary["test/accuracy"]
        expected = 10 if acc / 2 >= 0.5 else (20 if acc >= 0.5 else None)
        assert run.summary[names[1]] == (expected is not None)
        assert run.summary.get(names[0]) == expected
    result = _run_report(str(sweep), "--metric=test/accuracy", "--target=0.5")
    assert result.returncode == 0, result.stderr
    table = (sweep / "report" / "report.md").read_text()
    assert "steps_to_0.5" in table and "reached_0.5" in table


def test_a_loss_target_is_reached_from_above(sweep: Path) -> None:
    runs = collect.collect(sweep)
    # train/loss is (1 - accuracy) * 10 / step: 0.8 -> 0.2 at step 10, 0.1 at step 20.
    names = collect.add_steps_to(runs, "train/loss", 0.15)
    for run in runs:
        at_10 = (1 - run.summary["test/accuracy"]) * 10 / 10
        at_20 = at_10 / 2
        expected = 10 if at_10 <= 0.15 else (20 if at_20 <= 0.15 else None)
        assert run.summary.get(names[0]) == expected
    assert collect.lower_is_better("eval/mse") and not collect.lower_is_better("eval/accuracy")


def test_hidden_gradient_curves_of_several_runs_in_one_figure(sweep: Path) -> None:
    for i, path in enumerate(sorted(sweep.rglob("config.json"))[:2]):
        plots = path.parent / "plots"
        plots.mkdir()
        curve = {"init": [1.0, 2.0], "trained": [0.5 * (i + 1), 1.0]}
        (plots / "hidden_gradients.json").write_text(json.dumps(curve))
    result = _run_report(str(sweep), "--metric=test/accuracy", "--hidden-gradients")
    assert result.returncode == 0, result.stderr
    assert (sweep / "report" / "hidden_gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = sweep / "w32"
    for path in empty.rglob("hidden_gradients.json"):
        path.unlink()
    result = _run_report(str(empty), "--hidden-gradients")
    assert result.returncode == 2 and "hidden_gradients.json" in result.stderr


def test_folds_are_averaged_and_steps_derived_from_epochs_are_not_groups(tmp_path: Path) -> None:
    for fold in range(3):
        path = tmp_path / f"fold{fold}"
        _write_run(path, 16, 0, 0.8 + 0.01 * fold)
        config = json.loads((path / "config.json").read_text())
        # Folds train on different amounts of data: the same epochs are different step counts.
        config.update(total_epochs=2.0, total_steps=20 + fold, data={"name": "x", "fold": fold})
        (path / "config.json").write_text(json.dumps(config))
    runs = collect.collect(tmp_path)
    assert collect.swept_keys(runs) == []
    (tmp_path / "fold0" / "config.json").write_text(
        json.dumps(
            {**json.loads((tmp_path / "fold0" / "config.json").read_text()), "total_epochs": None}
        )
    )
    assert collect.swept_keys(collect.collect(tmp_path)) == ["total_epochs", "total_steps"]
