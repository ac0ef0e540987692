"""The package architecture (docs/design.md, "Import graph"): imports flow one way,
sapphire <- training_sets <- emulator <- forecasts, no module imports another's private names,
and there is no import cycle between modules (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("sapphire", "training_sets", "emulator", "forecasts")  # lowest first


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import statement of ``module``,
    at any depth (function-level imports count)."""
    tree = ast.parse(MODULES[module].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                # ``from pkg import submodule`` imports the submodule; ``from mod import name`` the module
                found.append((full, "", node.lineno) if full in MODULES else (base, alias.name, node.lineno))
    return found


def internal_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (a package import counts as its __init__)."""
    edges = {}
    for module in MODULES:
        targets = set()
        for target, _, _ in imports_of(module):
            while target and target not in MODULES:  # ``import sapphire.x.y`` -> nearest known module
                target = target.rpartition(".")[0]
            if target and target != module:
                targets.add(target)
        edges[module] = targets
    return edges


def test_the_walker_sees_every_package():
    assert {m.split(".")[0] for m in MODULES} == set(LAYERS)
    assert "sapphire.model" in MODULES and "forecasts.cli" in MODULES


def test_imports_flow_one_way():
    """A layer imports only itself and the layers below it."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for module in MODULES:
        own = rank[module.split(".")[0]]
        for target, _, line in imports_of(module):
            top = target.split(".")[0]
            if top in rank and rank[top] > own:
                upward.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_private_names_across_modules():
    """``from other_module import _name`` is never used between project modules."""
    private = []
    for module in MODULES:
        for target, name, line in imports_of(module):
            if (
                name.startswith("_")
                and not name.startswith("__")
                and target.split(".")[0] in LAYERS
                and target != module
            ):
                private.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}.{name}")
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(internal_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"a2"}, "a2": set(), "x": {"y"}, "y": {"x"}}, ["x", "y", "x"]),
    ],
)
def test_cycle_finder_known_answers(edges, expected):
    assert find_cycle(edges) == expected
