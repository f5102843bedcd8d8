"""The layering rule of style.md: imports only point down.

Parses every module's imports (no execution) and checks each against the layer it belongs to.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "batchnorm"

# Lower number = lower layer. A module may import only modules of a lower or equal layer.
LAYERS = {
    "_errors": 0,
    "_types": 0,
    "_registry": 0,
    "_thresholds": 0,
    "_axes": 1,
    "_moments": 1,
    "_affine": 1,
    "_nonfinite": 1,
    "_tf_rules": 1,
    "_reductions": 1,
    "_aten": 1,
    "initializers": 1,
    "regularizers": 1,
    "constraints": 1,
    "_reference": 2,
    "_standardize": 2,
    "_plan": 2,
    "_sync": 2,
    "_statistics": 2,
    "_kernels": 2,
    "functional": 3,
    "_lanes": 4,
    "distributed": 4,
    "layer": 5,
    "convert": 6,
    "recalibrate": 6,
    "compat": 6,
    "__init__": 7,
    "__main__": 8,
    "cli": 8,
}
PURE_MATH = {"_axes", "_moments", "_affine", "_types", "_errors", "_tf_rules"}


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "batchnorm":
                found.update(f"batchnorm.{alias.name}" for alias in node.names)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    name = _module_name(path)
    assert name in LAYERS, f"{name} has no layer in tests/test_layering.py; give it one"
    for target in _imports(path):
        if not target.startswith("batchnorm."):
            continue
        other = target.split(".")[1]
        if other == name:
            continue
        assert LAYERS[other] <= LAYERS[name], f"{name} (layer {LAYERS[name]}) imports {target}"
        if name == "cli":
            assert not other.startswith("_"), f"the CLI uses only public names, not {target}"


@pytest.mark.parametrize(
    "path", [PACKAGE / f"{m}.py" for m in sorted(PURE_MATH)], ids=lambda p: p.stem
)
def test_pure_math_knows_no_modules_or_processes(path):
    for target in _imports(path):
        assert not target.startswith(("torch.nn", "torch.distributed")), f"{path.stem}: {target}"
