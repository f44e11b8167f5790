"""No import cycles among the project's own modules.

A cycle works only as long as every module in it happens to be imported in the right order
(or one side hides its import in a function, under ``TYPE_CHECKING``, or at the bottom of
the file): it breaks the day someone imports the other end first. So every import statement
counts here, wherever it stands in the module, and a cycle is a failure.

The graph is read with ``ast`` (nothing is imported). ``import a.b`` and ``from a import b``
are edges to the module ``a.b`` (or to the package ``a`` where ``b`` is a name in it); the
implicit import of parent packages is not an edge, since a package's ``__init__`` that
re-exports its submodules is the usual pattern, not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("controller", "agents", "policies", "adapters")

# Known cycles, each as the sorted tuple of its modules. Delete an entry once it is gone.
KNOWN_CYCLES: set[tuple[str, ...]] = set()  # none: keep it that way


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name)."""
    names: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names[".".join(parts)] = path
    return names


def _imported(
    node: ast.Import | ast.ImportFrom, here: str, is_package: bool, names: set[str]
) -> set[str]:
    """The project modules one import statement loads (itself excluded)."""
    if isinstance(node, ast.Import):
        targets = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            anchor = here.split(".") if is_package else here.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        # `from a import b`: the submodule a.b where there is one, else a name in a
        subs = {f"{base}.{alias.name}" for alias in node.names}
        targets = {t if t in names else base for t in subs}
    return {t for t in targets if t in names and t != here}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body."""
    names = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _imported(node, name, is_package, set(names))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

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
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "adapters.store.db" in graph and "controller.cli" in graph  # the walk found them
    unexpected = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert unexpected == [], f"import cycles: {unexpected}"


def test_the_walker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """A cycle hidden in a function body and under TYPE_CHECKING is still a cycle."""
    pkg = tmp_path / "adapters"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from adapters import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import x\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import adapters.a\n"
    )
    (pkg / "d.py").write_text("import adapters\nfrom adapters.a import thing\nfrom . import b\n")
    graph = import_graph(tmp_path)
    assert graph["adapters.b"] == {"adapters.c"}
    assert graph["adapters.d"] == {"adapters", "adapters.a", "adapters.b"}
    assert cycles(graph) == [("adapters.a", "adapters.b", "adapters.c")]
