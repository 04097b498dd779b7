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
    "research.reporting.classification",
    "research.reporting.forecasting",
    "research.reporting.generative",
    "research.reporting.sequence",
    "research.train.continual",
    "research.train.distillation",
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


def _research_modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "research").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imported_research_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The research modules `path` imports: `from package import module` counts as the module
    alone (not the package), as Python imports it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in modules else node.module)
    return names


def test_the_loop_imports_no_feature_module():
    assert not _imported_modules(ROOT / "research" / "train" / "loop.py") & FEATURES


def test_only_the_list_of_features_imports_them():
    for name, path in _research_modules().items():
        if name in FEATURES or name == "research.train.extensions":
            continue
        assert not _imported_modules(path) & FEATURES, name


def test_research_has_no_import_cycle():
    modules = _research_modules()
    graph = {
        name: _imported_research_modules(path, modules) - {name} for name, path in modules.items()
    }
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join((*path, name)))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


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
