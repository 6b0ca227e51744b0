"""No module of tether imports a module that imports it, directly or round a longer
loop (issue 12). A cycle works only as long as the modules happen to load in one
order, and an import inside a function to dodge one is still one: both count here.
Only imports under ``if TYPE_CHECKING:`` are left out (they never run).

The graph is read from the source with ``ast``, nothing is imported. An edge goes
from a module to each tether module it names: ``import a.b`` names ``a.b``;
``from a import b`` names ``a.b`` when that is a module, else ``a`` (``b`` is then
an attribute of ``a``). Loading a parent package before its submodule is Python's
doing, not the importer's, and is not an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "tether"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` that can run (module level or in a
    function), skipping the body of ``if TYPE_CHECKING:`` (not its ``else``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child.test):
            for other in child.orelse:
                yield from _runtime_imports(ast.Module(body=[other], type_ignores=[]))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _runtime_imports(child)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The tether modules that module ``name`` imports when it runs."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
            continue
        if node.level:  # relative: from the package this module is in
            base = name.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in known:
                found.add(submodule)
            elif source in known:
                found.add(source)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan): each module of
    one can reach every other, so each takes part in an import loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def loop(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One import loop inside a strongly connected component, start to start."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back to the start
        node = frontier.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                return paths[node] + [start]
            if target not in paths:
                paths[target] = paths[node] + [target]
                frontier.append(target)
    raise AssertionError(f"no loop through {start} in {sorted(component)}")  # pragma: no cover


def test_no_module_imports_a_module_that_imports_it() -> None:
    graph = import_graph()
    assert len(graph) > 20 and "tether.client.client" in graph  # it did read the tree
    found = cycles(graph)
    assert found == [], "import cycles:\n" + "\n".join(
        f"{', '.join(sorted(c))}; for one: {' -> '.join(loop(graph, c))}" for c in found)


# -- the checker itself ------------------------------------------------------------------------


def _graph_of(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    known = {name for name in files}
    graph = {}
    for name, text in files.items():
        path = tmp_path / (name.replace(".", "_") + ("__init__.py" if name == "pkg" else ".py"))
        if name == "pkg":
            path = tmp_path / "pkg" / "__init__.py"
            path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        graph[name] = imports_of(name, path, known)
    return graph


def test_the_checker_sees_function_level_and_longer_cycles(tmp_path: Path) -> None:
    graph = _graph_of(tmp_path, {
        "pkg": "from pkg.a import A\n",
        "pkg.a": "from typing import TYPE_CHECKING\n"
                 "if TYPE_CHECKING:\n    from pkg.b import B\n"
                 "def f():\n    from pkg import b\n",
        "pkg.b": "import pkg.c\n",
        "pkg.c": "from pkg import a\n",
        "pkg.d": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n",
    })
    assert graph["pkg.a"] == {"pkg.b"}  # the function's import counts, TYPE_CHECKING not
    assert graph["pkg.d"] == set()
    assert cycles(graph) == [{"pkg.a", "pkg.b", "pkg.c"}]
    assert loop(graph, {"pkg.a", "pkg.b", "pkg.c"}) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_the_checker_resolves_relative_and_attribute_imports(tmp_path: Path) -> None:
    graph = _graph_of(tmp_path, {
        "pkg": "VERSION = 1\nfrom . import a\n",
        "pkg.a": "from . import b\nfrom pkg import VERSION\n",
        "pkg.b": "",
    })
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.b", "pkg"}  # VERSION is an attribute of pkg
    assert cycles(graph) == [{"pkg", "pkg.a"}]
