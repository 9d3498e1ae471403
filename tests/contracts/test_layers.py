"""The layer rule, read from every module's imports (function-local ones included): config at
the bottom, then model, tasks, flows and the CLI on top; no Prefect in model/, no pandas in
flows/, and no module importing another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["config", "model", "tasks", "flows", "driftloop"]  # bottom to top
FORBIDDEN = {"model": {"prefect"}, "flows": {"pandas"}}


def modules(layer: str) -> list[Path]:
    return sorted(p for p in (ROOT / layer).rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_itself_and_the_layers_below(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1 :]) | FORBIDDEN.get(layer, set())
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in modules(layer)
        for module, _ in imports(path)
        if module.split(".")[0] in above
    ]
    assert wrong == []


def test_no_module_imports_a_private_name_of_another():
    project = tuple(f"{layer}." for layer in LAYERS)
    wrong = [
        f"{path.relative_to(ROOT)} imports {name} from {module}"
        for layer in LAYERS
        for path in modules(layer)
        for module, names in imports(path)
        if module.startswith(project)
        for name in names
        if name.startswith("_")
    ]
    assert wrong == []


def test_the_rule_is_read_from_real_modules():
    """The walk sees the tree: a layer with no modules would pass every rule above."""
    counts = {layer: len(modules(layer)) for layer in LAYERS}
    assert all(n >= 3 for n in counts.values()), counts
    assert ("prefect", ["flow"]) in imports(ROOT / "flows/promote.py")
