"""The modules of she_lib import one another without a circle, counting imports inside functions too.

The graph is read from the source (the AST of every module), not from an interpreter, so an import inside a
function that runs only on one path counts as much as one at the top. Imports under ``if TYPE_CHECKING:`` are left
out: they never run.
"""
import ast
from pathlib import Path

import she_lib

PACKAGE = Path(she_lib.__file__).parent


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, (ast.Name, ast.Attribute)) and (
        getattr(node.test, "id", None) or getattr(node.test, "attr", None)) == "TYPE_CHECKING"


def _imports(tree: ast.AST, modules: set[str]):
    """(module imported, line) for every she_lib import in ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
        names = []
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("she_lib")):
            path = (node.module or "").removeprefix("she_lib").lstrip(".") if node.level == 0 else node.module or ""
            names = [path.split(".")[0]] if path else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("she_lib.")]
        yield from ((n, node.lineno) for n in names if n in modules)


def import_graph(folder: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line of such an import}."""
    files = {p.stem: p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports(ast.parse(path.read_text()), set(files)):
            if target != name:
                edges.setdefault(target, line)
    return graph


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    """One circle [a, b, ..., a] of ``graph`` (depth-first search), or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_circle():
    graph = import_graph()
    assert {"evaluate", "cumpt", "genrm", "genrm_eval", "srpo"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_check_finds_a_circle_through_a_local_import(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import c\n")
    (tmp_path / "c.py").write_text("import she_lib.a\n")
    (tmp_path / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 1}, "d": {}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    (tmp_path / "c.py").write_text("")
    assert find_cycle(import_graph(tmp_path)) is None
