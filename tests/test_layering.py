"""Imports go one way: core <- data <- models <- rollout <- eval, analysis <- train <- methods <-
integrations <- demo <- cli. A module imports thinklean modules of its own package or of a lower
layer only, wherever the import statement sits (module level, function body, TYPE_CHECKING), so
data and evaluation never pull in a trainer or a method. ``thinklean.runlog`` (metrics records,
progress bar) and the package's ``__init__`` (its version) import nothing of thinklean and are
open to every layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "thinklean"
LAYERS = {"thinklean": 0, "runlog": 0, "core": 1, "data": 2, "models": 3, "rollout": 4, "eval": 5, "analysis": 5,
          "train": 6, "methods": 7, "integrations": 8, "demo": 9, "cli": 10}


def unit(module: str) -> str:
    """The layer unit of a dotted thinklean module name: its top-level package or module
    (``thinklean`` for the package itself)."""
    parts = module.removesuffix(".__init__").split(".")
    return parts[1] if len(parts) > 1 else "thinklean"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def thinklean_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a thinklean module in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "thinklean" else [f"thinklean.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name == "thinklean" or name.startswith("thinklean.")]
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = unit(module_name(path))
        for line, name in thinklean_imports(path):
            target = unit(name)
            if target == source:
                continue
            if LAYERS[target] >= LAYERS[source]:
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source} imports {name} from a layer "
                           f"not below it")
    return out


def test_every_package_and_top_level_module_has_a_layer():
    assert {unit(module_name(path)) for path in PACKAGE.rglob("*.py")} == set(LAYERS)


def test_runlog_and_the_package_init_import_nothing_of_thinklean():
    assert thinklean_imports(PACKAGE / "runlog.py") == thinklean_imports(PACKAGE / "__init__.py") == []


def test_imports_point_down_the_layers():
    assert violations() == []


def test_the_check_sees_an_import_from_above(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from thinklean.train.rl import RLTrainer\n")
    assert thinklean_imports(module) == [(2, "thinklean.train.rl")]
