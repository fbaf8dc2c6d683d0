"""The architecture rules, checked from the source instead of held by discipline.

- core/ never imports streamlit (the engine runs headless: CLI, benches, Ray workers).
- SQL and the duckdb module live only in the store package (core/store/).
- pages/, ui/ and app.py never import duckdb (pages call core, never the database).
- No import cycles anywhere in core/, function-level (lazy) imports included: a lazy import
  hides a cycle from Python's loader but not from whoever has to untangle it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
STORE = CORE / "store"
UI_FILES = [ROOT / "app.py", *sorted((ROOT / "pages").rglob("*.py")), *sorted((ROOT / "ui").rglob("*.py"))]
# An SQL statement at the start of a string: a keyword, then what only SQL puts after it.
_SQL = re.compile(
    r"^\s*(SELECT\s+[\w*(]|INSERT\s+INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|CREATE\s+(TABLE|INDEX|VIEW)\b"
    r"|DROP\s+(TABLE|INDEX|VIEW)\b|ALTER\s+TABLE\b|WITH\s+\w+\s+AS\s*\()"
)


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import in the file, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, [a.name for a in node.names], node.lineno


def _strings(path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value, node.lineno


def test_core_never_imports_streamlit() -> None:
    hits = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in _python_files(CORE)
        for module, _, line in _imports(p)
        if module.split(".")[0] == "streamlit"
    ]
    assert hits == [], f"core/ imports streamlit at {hits}"


def test_duckdb_is_imported_only_by_the_store_package() -> None:
    outside = [p for p in _python_files(CORE) if STORE not in p.parents] + UI_FILES
    hits = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in outside
        for module, _, line in _imports(p)
        if module.split(".")[0] == "duckdb"
    ]
    assert hits == [], f"duckdb imported outside core/store/ at {hits}"


def test_sql_lives_only_in_the_store_package() -> None:
    outside = [p for p in _python_files(CORE) if STORE not in p.parents] + UI_FILES
    hits = [
        f"{p.relative_to(ROOT)}:{line}: {text.strip()[:40]!r}"
        for p in outside
        for text, line in _strings(p)
        if _SQL.match(text)
    ]
    assert hits == [], f"SQL outside core/store/ at {hits}"


def test_the_sql_detector_recognises_sql() -> None:
    # Guards the test above against a pattern that matches nothing.
    store_sql = [text for p in _python_files(STORE) for text, _ in _strings(p) if _SQL.match(text)]
    assert len(store_sql) >= 10
    assert not _SQL.match("Select the images to compare") and not _SQL.match("update the map")


def _core_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _python_files(CORE)}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            for target in targets:
                # A package's own submodules are its parts, not a dependency back on it.
                if target in modules and target != name and not target.startswith(name + "."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_cycles_in_core() -> None:
    assert _cycles(_core_graph()) == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected
