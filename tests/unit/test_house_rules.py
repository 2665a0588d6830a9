"""The structure a newcomer relies on, checked on the source so it cannot erode one change at a time.

- One way into the store: only ``store/`` imports SQLAlchemy, holds an engine or writes SQL; everything else calls
  the store's methods (``TaskStore``), so a query is found, tested and migrated in one place.
- Rooms small enough to read: no module of ``src/`` over ``MAX_MODULE_LINES`` lines.
- Scripts that run as they are named: Python puts a script's own folder first on the import path, so a file in
  ``bench/`` or ``scripts/`` named like a standard-library module replaces that module for every script beside it
  (``bench/queue.py`` once broke the benches whose imports reach ``queue``).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import coherence_network

ROOT = Path(coherence_network.__file__).parent
SCRIPT_FOLDERS = [ROOT.parents[1] / name for name in ("bench", "scripts")]
STORE = ROOT / "store"
MAX_MODULE_LINES = 450
# SQL as text: a statement keyword followed by what only SQL puts after it.
_SQL = re.compile(r"\b(SELECT\s+[\w*]+(\s*,\s*\w+)*\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                  r"CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE|SHOW\s+[a-z]+_[a-z_]+)\b", re.IGNORECASE)


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _outside_store() -> list[Path]:
    return [p for p in _sources() if STORE not in p.parents]


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):  # imports in functions too: a lazy import is still a way in
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _strings(tree: ast.AST) -> list[str]:
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_only_the_store_imports_sqlalchemy_or_touches_an_engine() -> None:
    offenders = {}
    for path in _outside_store():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = sorted(n for n in _imports(tree) if n == "sqlalchemy" or n.startswith(("sqlalchemy.", "psycopg")))
        found += sorted({f".{node.attr}" for node in ast.walk(tree)
                         if isinstance(node, ast.Attribute) and node.attr in ("engine", "_engine")})
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, offenders


def test_no_sql_text_outside_the_store() -> None:
    offenders = {str(path.relative_to(ROOT)): hits for path in _outside_store()
                 if (hits := [s[:80] for s in _strings(ast.parse(path.read_text(encoding="utf-8"))) if _SQL.search(s)])}
    assert not offenders, offenders


def test_the_sql_pattern_finds_sql_and_passes_prose() -> None:
    assert _SQL.search("SELECT id FROM tasks") and _SQL.search("show transaction_read_only")
    assert _SQL.search("delete from tasks where id = 1") and _SQL.search("UPDATE tasks SET status = 'x'")
    assert not _SQL.search("select a task from the list, then update its status and delete nothing")


def test_no_module_is_over_the_line_limit() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"over {MAX_MODULE_LINES} lines: {long}"


def test_no_script_is_named_like_a_standard_library_module() -> None:
    shadowing = sorted(str(path.relative_to(ROOT.parents[1])) for folder in SCRIPT_FOLDERS
                       for path in folder.glob("*.py") if path.stem in sys.stdlib_module_names)
    assert all(folder.is_dir() for folder in SCRIPT_FOLDERS)
    assert not shadowing, f"{shadowing}: each would replace the standard library's module for the scripts beside it"
