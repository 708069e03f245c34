"""How she_lib's modules import: no circle among them, and an import inside a function only where it keeps a module
light.

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


# packages worth loading only where they are used (seconds to import, or optional)
HEAVY = {"torch", "transformers", "trl", "peft", "unsloth", "datasets", "accelerate", "safetensors", "vllm",
         "matplotlib", "ipywidgets", "papermill"}
# she_lib imports kept inside functions for another reason than weight
LOCAL_BY_DESIGN = {(m, "trl_compat"): "importing trl_compat imports and patches TRL: only where a trainer is built"
                   for m in ("sft", "dpo", "rl")}


def _top_level(tree: ast.Module):
    """The import statements that run when the module is imported (top level, also inside a top-level if / try)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)) and not _type_checking_only(node):
            stack.extend(ast.iter_child_nodes(node))


def _packages(node) -> set[str]:
    """Third-party / standard-library top packages an import statement names."""
    if isinstance(node, ast.ImportFrom):
        return set() if node.level or node.module.startswith("she_lib") else {node.module.split(".")[0]}
    return {a.name.split(".")[0] for a in node.names if not a.name.startswith("she_lib")}


def heavy_on_import(folder: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the HEAVY packages that ``import she_lib.<module>`` loads, through its own top-level imports and
    those of the she_lib modules they import."""
    trees = {p.stem: ast.parse(p.read_text()) for p in folder.glob("*.py") if p.stem != "__init__"}
    own, uses = {}, {}
    for name, tree in trees.items():
        nodes = list(_top_level(tree))
        own[name] = set().union(*map(_packages, nodes)) & HEAVY if nodes else set()
        uses[name] = {t for n in nodes for t, _ in _imports(n, set(trees))}
    out = {}
    for name in trees:
        seen, todo = {name}, [name]
        while todo:
            for t in uses[todo.pop()] - seen:
                seen.add(t)
                todo.append(t)
        out[name] = set().union(*(own[m] for m in seen))
    return out


def local_imports(folder: Path = PACKAGE):
    """(module, line, she_lib module or None, third-party packages) of every import inside a function."""
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    for name in sorted(modules):
        tree = ast.parse((folder / f"{name}.py").read_text())
        top = {id(n) for n in _top_level(tree)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                yield from ((name, node.lineno, t, set()) for t, _ in _imports(node, modules))
                if _packages(node):
                    yield name, node.lineno, None, _packages(node)


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


def test_imports_inside_functions_keep_a_module_light():
    """An import inside a function loads a HEAVY package the module does not load already (or is named in
    LOCAL_BY_DESIGN with its reason); every other import belongs at the top of the module."""
    heavy, type_checking = heavy_on_import(), set()
    for name in heavy:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        type_checking |= {(name, n.lineno) for node in tree.body if _type_checking_only(node) for n in ast.walk(node)
                          if isinstance(n, (ast.Import, ast.ImportFrom))}
    wrong = []
    for name, line, target, packages in local_imports():
        if (name, line) in type_checking:
            continue
        adds = heavy[target] - heavy[name] if target else packages & HEAVY - heavy[name]
        if not adds and (name, target) not in LOCAL_BY_DESIGN:
            wrong.append(f"she_lib/{name}.py:{line} imports {target or ', '.join(sorted(packages))}")
    assert not wrong, "imports that belong at the top of their module:\n" + "\n".join(wrong)


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
