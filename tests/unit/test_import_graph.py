"""The modules of src/coherence_network import each other without a circle.

A circle makes the import order matter: the module imported first sees the other one half-initialized, and a
name it takes from it at import time is not there yet ("partially initialized module"). Which module a process
imports first depends on its entry point (the CLI, uvicorn's app factory, the supervised wrapper, a test), so a
circle fails in one of them and not the others.

The graph is read from the source with ``ast``, without importing anything. It holds the imports that run when the
module is imported: the module's own body and its class bodies, inside ``if``/``try``/``with`` too. Not counted:
- imports inside functions: they run when the function is called, after every module is loaded (deliberate lazy
  imports, e.g. the CLI importing httpx only for the commands that call the API);
- imports under ``if TYPE_CHECKING:``: they never run; a type checker resolves them lazily;
- imports under ``if __name__ == "__main__":``: they run only in ``python -m <module>``, whose module is
  ``__main__``, a different module object from the one others import.
Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so those packages count as imported too,
except the importer's own enclosing packages (they are already being imported when it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import coherence_network

PACKAGE = "coherence_network"
ROOT = Path(coherence_network.__file__).parent


def _module_names() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name, for its __init__.py)."""
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _never_on_import(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``__name__ == "__main__"``: a block that does not run when the module is imported."""
    if isinstance(test, ast.Name | ast.Attribute):
        return (test.id if isinstance(test, ast.Name) else test.attr) == "TYPE_CHECKING"
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and isinstance(test.ops[0], ast.Eq) and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _import_nodes(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when this body runs at import time (not in functions, not TYPE_CHECKING)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _never_on_import(node.test):
                found += _import_nodes(node.body)
            found += _import_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _import_nodes(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            found += _import_nodes(node.body)
    return found


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that importing ``module`` imports (see the module docstring for what counts)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        targets.add(base)
        targets.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    enclosing = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    found = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # the target and the packages it is in
            name = ".".join(parts[:i])
            if name in modules and name not in enclosing and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {module: _imported(module, path, modules) for module, path in sorted(modules.items())}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as the modules along it (first == last), or None: depth-first, white/grey/black."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_a_circle_and_passes_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_the_imports_that_run_at_import_time() -> None:
    graph = import_graph()
    assert "coherence_network.settings" in graph["coherence_network.api.app"]
    assert "coherence_network.store" in graph["coherence_network.api.metrics"]
    # health reads its types from the store under TYPE_CHECKING only: the monitor and the CLI grade health from what
    # the API answers, without loading SQLAlchemy (half of the monitor's start)
    assert not {name for name in graph["coherence_network.health"] if name.startswith("coherence_network.store")}
    # not edges: an import inside a function (the CLI's commands import the pidfiles module), under TYPE_CHECKING
    # (the CLI's client); the package's own modules and the packages they are in are edges
    cli = {name for name in graph if name == "coherence_network.cli" or name.startswith("coherence_network.cli.")}
    assert cli > {"coherence_network.cli", "coherence_network.cli.app", "coherence_network.cli.supervised"}
    for module in cli - {"coherence_network.cli.supervised", "coherence_network.cli.__main__"}:
        assert not {"coherence_network.pidfiles", "coherence_network.client"} & graph[module], module
    assert "coherence_network.cli.app" in graph["coherence_network.cli"]
    # the supervised wrapper imports both; pidfiles imports no part of the CLI, not even under __main__
    assert {"coherence_network.pidfiles", "coherence_network.cli.app"} <= graph["coherence_network.cli.supervised"]
    assert not cli & graph["coherence_network.pidfiles"]
    assert "__main__" not in (Path(coherence_network.__file__).parent / "pidfiles.py").read_text(encoding="utf-8")


def test_src_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
