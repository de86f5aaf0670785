"""The code's layers, read from its imports (function-level ones included, `TYPE_CHECKING` blocks
left out): no module reaches itself again through what it imports, and every package imports only
the layers below it (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bilaf", "dagster_project")
# What each layer may import (besides itself), from the bottom up.
_BASE = {"bilaf.artifacts", "bilaf.choices", "bilaf.compute", "bilaf.defaults", "bilaf.errors", "bilaf.progress"}
LAYERS = {
    "bilaf.selection": _BASE,
    "bilaf.features": {*_BASE, "bilaf.selection"},
    "bilaf.training": {*_BASE, "bilaf.selection", "bilaf.features"},
    "bilaf.annotation": {*_BASE, "bilaf.selection", "bilaf.features"},
    "bilaf.stages": {"bilaf"},
    "bilaf": {"bilaf"},
    "dagster_project": {"bilaf", "dagster_project"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import module`` names the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {module for module in found if module in known and module != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imported(name, path, known) for name, path in known.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None (packages' __init__ re-exports left out)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if target in _packages(graph) and module.startswith(target + "."):
                continue  # a module importing its own package's __init__ (`from . import x`)
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if not state.get(target):
                found = walk(target)
                if found:
                    return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if not state.get(module):
            found = walk(module)
            if found:
                return found
    return None


def _packages(graph: dict[str, set[str]]) -> set[str]:
    return {name for name in graph if any(other.startswith(name + ".") for other in graph)}


def test_no_module_imports_itself_through_others():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_layer_imports_only_what_is_below_it(layer):
    graph = _graph()
    allowed = LAYERS[layer]
    for module, targets in graph.items():
        if module != layer and not module.startswith(layer + "."):
            continue
        if any(
            module.startswith(deeper + ".") or module == deeper for deeper in LAYERS if deeper.startswith(layer + ".")
        ):
            continue  # judged by its own, deeper layer
        for target in targets:
            if target == layer or target.startswith(layer + "."):
                continue
            assert any(target == ok or target.startswith(ok + ".") for ok in allowed), f"{module} imports {target}"
