"""Import graph of a package from its source (every import statement, lazy ones included):
cycles (strongly connected components) and modules over a line limit. The same rules as the
team's pre-commit checker."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_files(root: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        files[".".join(p for p in rel.parts if p != "__init__")] = path
    return files


def import_edges(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a package's own ``__init__`` excluded)."""
    mods, package = module_files(root), root.name
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = module.split(".")
                    parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != module and not module.startswith(target + ".") and target != package:
                    edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Every strongly connected component of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in edges:
        if v not in index:
            visit(v)
    return sorted(found)


def oversized(root: Path, limit: int) -> dict[str, int]:
    return {str(path.relative_to(root.parent)): n for path in module_files(root).values()
            if (n := len(path.read_text().splitlines())) > limit}
