"""The package's import structure: no circles, and no import from a lower layer to a higher one.

Layers, bottom to top (README "Layout"): the small leaves (files, metrics, download), config,
nn, models, data; then viz, inference and engine, deploy; then cli and app; the original's
import paths (utils, dataset, lib) are thin shims above everything. An import may go down or
stay in its own room; every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mit_semseg

PACKAGE_DIR = Path(mit_semseg.__file__).parent

# room -> rank; an import from room A to room B needs rank(A) >= rank(B)
RANKS = {
    "files": 0, "metrics": 0, "download": 0,
    "config": 1,
    "nn": 2,
    "models": 3,
    "data": 4,
    "viz": 5,
    "inference": 6, "engine": 6,
    "deploy": 7,
    "cli": 8, "app": 8,
    "utils": 9, "dataset": 9, "lib": 9,
}
# rooms of one rank that still must not import each other
FORBIDDEN = {("engine", "inference"), ("inference", "engine"), ("app", "cli")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (relative imports resolved, names of
    ``from X import name`` counted as ``X.name`` when that is a module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] \
                if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES}


MODULES = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


def test_every_room_has_a_rank():
    rooms = {_room(m) for m in MODULES} - {"package"}
    assert rooms <= set(RANKS), sorted(rooms - set(RANKS))


def test_no_import_circles():
    visiting, done = [], set()

    def visit(module):
        if module in done:
            return
        if module in visiting:
            cycle = visiting[visiting.index(module):] + [module]
            pytest.fail("import circle: " + " -> ".join(cycle))
        visiting.append(module)
        for target in sorted(GRAPH[module]):
            # a package's __init__ importing its own submodules is how packages expose names
            if not target.startswith(module + ".") or module not in MODULES:
                visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_imports_go_down_the_layers():
    upward = []
    for module, targets in GRAPH.items():
        source = _room(module)
        for target in targets:
            room = _room(target)
            if "package" in (source, room) or source == room:
                continue
            if RANKS[source] < RANKS[room] or (source, room) in FORBIDDEN:
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_few_modules_loose_at_the_package_top():
    loose = sorted(p.name for p in PACKAGE_DIR.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 5, loose
