"""The package's import graph: no cycles among posttrain modules, no private names across them.

The graph is read from the source with ``ast``, not by importing: every ``import``
and ``from ... import`` counts, at module level or inside a function (a lazy import
is still a dependency: it only hides the cycle until the function runs), except
those under ``if TYPE_CHECKING:``, which never run. ``from posttrain.a import b``
is an edge to ``posttrain.a.b`` when that is a module, else to ``posttrain.a``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import posttrain

ROOT = Path(posttrain.__file__).resolve().parent

# Edges (importer, imported) known to close a cycle, each in a file another change
# owns at the moment. Remove an entry once its cycle is gone; the test fails on a
# stale entry so the list cannot outlive its reason.
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def imports_of(module: str) -> Iterator[tuple[str, str, int]]:
    """(imported module, imported name or "", line) of every posttrain import in ``module``."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, "", node.lineno
            continue
        target = _absolute(module, node)
        if target not in MODULES:
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            yield (sub, "", node.lineno) if sub in MODULES else (target, alias.name, node.lineno)


def import_graph() -> dict[str, set[str]]:
    return {m: {target for target, _, _ in imports_of(m) if target != m} for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # models/io.py loads adapter directories without importing models/lora.py
    assert "posttrain.models.lora" not in import_graph()["posttrain.models.io"]
    assert "posttrain.models.io" in import_graph()["posttrain.models.lora"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    for a, b in ALLOWED_CYCLE_EDGES:
        assert b in graph.get(a, set()), f"stale allow-list entry: {a} no longer imports {b}"
        graph[a].discard(b)
    found = cycles(graph)
    assert not found, "import cycles among posttrain modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_names_across_modules() -> None:
    crossings = [
        f"{MODULES[m].relative_to(ROOT.parent)}:{line}: from {target} import {name}"
        for m in MODULES
        for target, name, line in imports_of(m)
        if name.startswith("_") and not name.startswith("__") and target != m
    ]
    assert not crossings, "private names imported across modules:\n" + "\n".join(crossings)


def test_recipes_are_the_top_layer() -> None:
    """Library code never imports a recipe: only the command line (and other recipes) do."""
    upward = [
        f"{m} -> {t}"
        for m, targets in import_graph().items()
        if not m.startswith("posttrain.recipes") and m != "posttrain.cli"
        for t in sorted(targets)
        if t.startswith("posttrain.recipes")
    ]
    assert not upward, "library modules importing recipes:\n" + "\n".join(upward)
