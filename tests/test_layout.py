"""The core's layout: no module-level import cycle inside ``kdistill``.

Each module's imports that run when it is imported (module level, including ``if``/``try`` blocks, but not
``if TYPE_CHECKING:`` or imports inside functions) form a graph; it must have no cycle. An import of a module's own
parent package is left out: Python runs the parent first whatever the module says.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _module_level_imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in (ROOT / "kdistill").rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported = _module_level_imports(ast.parse(path.read_text()))
        graph[name] = {m for m in imported if m in paths and m != name and not name.startswith(m + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_checker_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_cycle_in_the_core():
    graph = import_graph()
    assert "kdistill.rl.trainer" in graph and "kdistill.cli.app" in graph  # the walk saw the packages
    assert find_cycles(graph) == [], " ; ".join(" -> ".join(c) for c in find_cycles(graph))
