"""Transfer strategies: what each trains, head replacement, the cached linear probe, anchors."""

import ast
import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from research import config as cfg
from research.checkpoint import load_state
from research.errors import ConfigError
from research.train import extensions, loop
from research.train.setup import build_run
from research.transfer import strategy

CONFIG = "configs/transfer/digits.py"
TINY = {
    "model.name": "cnn_tiny",
    "model.batch_norm": True,
    "model.dense_features": 16,
    "log_every_steps": 5,
    "eval_every_steps": 10,
    "parallel.num_devices": 1,  # what is tested here does not depend on the device count
}


def _config(data_dir, arg=None, **overrides):
    config = cfg.load_config_file(CONFIG, arg)
    cfg.apply_overrides(config, {"data.data_dir": data_dir, **TINY, **overrides})
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir) -> Path:
    workdir = tmp_path_factory.mktemp("source")
    config = _config(
        data_dir,
        "pretrain",
        total_epochs=None,
        total_steps=40,
        **{"checkpoint.every_steps": 40, "optimizer.warmup_steps": 5},
    )
    assert loop.train_and_evaluate(config, workdir).status == loop.COMPLETED
    return workdir


def _params(workdir: Path) -> dict:
    """Final params and batch_stats of a run, flattened to {"params/a/b": array}."""
    config = cfg.from_json((workdir / "config.json").read_text())
    config.data.data_dir = json.loads((workdir / "config.json").read_text())["data"]["data_dir"]
    run = build_run(config, extensions.available())
    abstract = run.par.abstract_state(run.init_fn, jax.random.PRNGKey(0))
    state = load_state(
        workdir / "checkpoints", {"params": abstract.params, "batch_stats": abstract.batch_stats}
    )
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(state, sep="/").items()}


def _target(tmp_path, data_dir, source, strategy, **overrides):
    workdir = tmp_path / strategy
    config = _config(
        data_dir,
        init_from=str(source),
        total_steps=20,
        batch_size=16,
        **{"transfer.strategy": strategy, "checkpoint.every_steps": 20, **overrides},
    )
    assert loop.train_and_evaluate(config, workdir).status == loop.COMPLETED
    return workdir


def _changed(before: dict, after: dict) -> set[str]:
    """Parameter paths (params/... only) whose values differ, head excluded."""
    return {
        k
        for k in before
        if k.startswith("params/")
        and not k.startswith("params/head")
        and not np.array_equal(before[k], after[k])
    }


# Which parameters each strategy may change (cnn_tiny: stage{1,2}/block{1,2}, fc, head).
BACKBONE = {
    "params/stage1/block1",
    "params/stage1/block2",
    "params/stage2/block1",
    "params/stage2/block2",
    "params/fc",
}


def _modules(paths: set[str]) -> set[str]:
    return {p.rsplit("/", 1)[0].replace("/conv", "").replace("/bn", "") for p in paths}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "overrides", "trained"),
    [
        ("linear_probe", {}, set()),
        ("partial", {"transfer.blocks": 2}, {"params/stage2/block2", "params/fc"}),
        # Levels below the head: fc (from step 0), stage2/block2 at 8, stage2/block1 at 16.
        (
            "progressive",
            {"transfer.unfreeze_every_steps": 8},
            {"params/fc", "params/stage2/block2", "params/stage2/block1"},
        ),
        ("finetune", {}, BACKBONE),
    ],
)
def test_each_strategy_trains_exactly_its_parameters(
    tmp_path, data_dir, source, strategy, overrides, trained
):
    before = _params(source)
    workdir = _target(tmp_path, data_dir, source, strategy, **overrides)
    after = _params(workdir)
    assert _modules(_changed(before, after)) == trained
    # BatchNorm runs on the source statistics (transfer.batch_norm=frozen): all kept.
    stats = [k for k in before if k.startswith("batch_stats/")]
    assert stats and all(np.array_equal(before[k], after[k]) for k in stats)
    # The head was replaced: it differs from the source head (and trained).
    assert not np.array_equal(before["params/head/kernel"], after["params/head/kernel"])


@pytest.mark.slow
def test_scratch_ignores_init_from_and_update_mode_moves_statistics(tmp_path, data_dir, source):
    before = _params(source)
    scratch = _params(_target(tmp_path, data_dir, source, "scratch"))
    # Not loaded: even a parameter that would train little is far from the source value.
    assert not np.allclose(
        before["params/stage1/block1/conv/kernel"],
        scratch["params/stage1/block1/conv/kernel"],
        atol=1e-2,
    )
    updated = _params(
        _target(tmp_path, data_dir, source, "finetune", **{"transfer.batch_norm": "update"})
    )
    key = "batch_stats/stage1/block1/bn/mean"
    assert not np.array_equal(before[key], updated[key])
    # Strategy "none" is a plain warm start: everything loaded (head too), BatchNorm as configured.
    warm = _params(_target(tmp_path, data_dir, source, "none"))
    assert not np.array_equal(before[key], warm[key])


@pytest.mark.slow
def test_cached_linear_probe_equals_the_uncached_one(tmp_path, data_dir, source):
    # Without augmentation the two paths compute the same (both run the model in eval mode).
    common = {"data.augment.crop_padding": 0}
    uncached = _target(
        tmp_path / "a",
        data_dir,
        source,
        "linear_probe",
        **{**common, "transfer.cache_features": False},
    )
    cached = _target(
        tmp_path / "b",
        data_dir,
        source,
        "linear_probe",
        **{**common, "transfer.cache_features": True},
    )
    heads = [_params(w)["params/head/kernel"] for w in (uncached, cached)]
    np.testing.assert_allclose(heads[1], heads[0], rtol=1e-5, atol=1e-6)
    losses = {
        name: [
            r["train/loss"]
            for r in map(json.loads, (w / "metrics.jsonl").open())
            if "train/loss" in r
        ]
        for name, w in (("uncached", uncached), ("cached", cached))
    }
    np.testing.assert_allclose(losses["cached"], losses["uncached"], rtol=1e-5)
    summaries = [json.loads((w / "summary.json").read_text()) for w in (uncached, cached)]
    assert summaries[0]["test/accuracy"] == pytest.approx(summaries[1]["test/accuracy"])


@pytest.mark.slow
def test_l2sp_and_ewc_stay_closer_to_the_source_and_report_retention(tmp_path, data_dir, source):
    before = _params(source)

    def distance(workdir):
        after = _params(workdir)
        keys = [k for k in before if k.startswith("params/") and "head" not in k]
        return sum(float(np.sum((after[k] - before[k]) ** 2)) for k in keys)

    finetune = _target(tmp_path, data_dir, source, "finetune")
    l2sp = _target(tmp_path, data_dir, source, "l2sp", **{"transfer.weight": 100.0})
    ewc = _target(tmp_path, data_dir, source, "ewc", **{"transfer.weight": 1000.0})
    assert distance(l2sp) < 0.5 * distance(finetune)
    assert distance(ewc) < distance(finetune)
    summary = json.loads((finetune / "summary.json").read_text())
    source_summary = json.loads((source / "summary.json").read_text())
    # Retention "before" is the source run's own test accuracy, recomputed from its weights.
    assert summary["source/test_accuracy_before"] == pytest.approx(source_summary["test/accuracy"])
    assert 0.0 <= summary["source/test_accuracy_after"] <= 1.0


def test_strategy_without_init_from_and_bad_strategy_are_config_errors(data_dir):
    with pytest.raises(ConfigError, match="needs init_from"):
        build_run(
            _config(data_dir, init_from=None, batch_size=16, **{"transfer.strategy": "finetune"}),
            extensions.available(),
        )
    with pytest.raises(ConfigError, match="transfer.strategy"):
        build_run(
            _config(data_dir, batch_size=16, **{"transfer.strategy": "warm"}),
            extensions.available(),
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy_name", "overrides", "unfreeze"),
    [
        ("partial", {"transfer.blocks": 2}, {}),
        (
            "progressive",
            {"transfer.unfreeze_every_steps": 8},
            {"unfreeze.groups": ["level1", "level2"], "unfreeze.at_steps": [8, 16]},
        ),
    ],
)
def test_the_workdir_records_the_rules_the_strategy_set(
    tmp_path, data_dir, source, strategy_name, overrides, unfreeze
):
    workdir = _target(tmp_path, data_dir, source, strategy_name, **overrides)
    recorded = json.loads((workdir / "optimizer_overrides.json").read_text())
    assert set(recorded) == {"param_rules", *unfreeze}
    assert {k: recorded[k] for k in unfreeze} == unfreeze
    # The recorded rules (first whole-path match wins) give every parameter the group that
    # param_rules.txt shows, so they freeze exactly its frozen rows.
    rows = [line.split() for line in (workdir / "param_rules.txt").read_text().splitlines()[1:]]
    shown = {path: group for path, _, group, _, _ in rows}
    resolved = {
        path: next(rule[1] for rule in recorded["param_rules"] if re.fullmatch(rule[0], path))
        for path in shown
    }
    assert resolved == shown
    frozen = [row for row in rows if row[2] == "frozen"]
    assert frozen and all(row[3] == "0" for row in frozen)


def test_runs_without_a_strategy_record_nothing_and_the_strategy_is_pure():
    paths = ["stage1/block1/conv/kernel", "stage2/block1/conv/kernel", "fc/kernel", "head/kernel"]
    config = cfg.load_config_file(CONFIG, None)
    config.init_from = "/source"
    for name in ("none", "scratch", "finetune"):
        config.transfer.strategy = name
        assert strategy.optimizer_overrides(config, paths) == {}
    config.transfer.strategy = "ewc"
    assert strategy.optimizer_overrides(config, paths) == {
        "ewc.weight": config.transfer.weight,
        "ewc.mode": "ewc",
    }
    # Below the loop: the strategy and the source weights import nothing of research/train,
    # and building a run imports no transfer extension (no import cycle through SourceRun).
    root = Path(__file__).parents[1] / "research"
    for module in ("transfer/strategy.py", "transfer/source.py", "train/setup.py"):
        imported = {
            name
            for node in ast.walk(ast.parse((root / module).read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
            for name in (node.module, *(f"{node.module}.{a.name}" for a in node.names))
        }
        assert "research.train.transfer" not in imported
        if module.startswith("transfer/"):
            assert not any(name.startswith("research.train") for name in imported)
