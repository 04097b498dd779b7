"""The loop's extension points: features are chosen from the config and the task, and the loop
module imports none of them."""

import ast
from pathlib import Path

import pytest

from research.config import load_config_file
from research.train import extensions
from research.train.setup import build_run

ROOT = Path(__file__).parents[1]
FEATURES = {
    "research.train.artifacts",
    "research.train.continual",
    "research.train.generative_artifacts",
    "research.train.sequence_artifacts",
    "research.train.teacher",
    "research.train.transfer",
}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_loop_imports_no_feature_module():
    assert not _imported_modules(ROOT / "research" / "train" / "loop.py") & FEATURES


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize(
    "config,overrides,expected",
    [
        ("smoke.py", {}, ["ClassificationReport"]),
        ("smoke.py", {"evaluation.artifacts": False}, []),
        (
            "continual/permuted_digits.py",
            {"total_steps": 20, "evaluation.artifacts": False},
            ["ContinualStages"],
        ),
    ],
)
def test_features_follow_the_config_and_the_task(data_dir, config, overrides, expected):
    c = load_config_file(ROOT / "configs" / config, None)
    c.data.data_dir = data_dir
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        setattr(c[section] if section else c, name, value)
    run = build_run(c)
    assert [type(e).__name__ for e in extensions.for_run(run)] == expected
