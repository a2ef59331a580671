"""What an image must hold, derived from the code: the project files (outside ``.venv``) that the
modules reachable from an entry module refer to, through ``PROJECT_ROOT / "..."`` chains,
``settings.feature_repo`` and module constants built from them."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from mlops_assets.settings import PROJECT_ROOT
from tests.platform.import_graph import import_edges, module_files

PACKAGE = PROJECT_ROOT / "mlops_assets"


def reachable_modules(entry: str) -> set[str]:
    """``entry`` and every module of the package it imports, transitively (lazy imports included)."""
    edges = import_edges(PACKAGE)
    seen, todo = set(), [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(edges.get(module, ()))
    return seen


def _base(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The project-relative path an expression starts from, if it is one we know."""
    if isinstance(node, ast.Name):
        return "" if node.id == "PROJECT_ROOT" else constants.get(node.id)
    if isinstance(node, ast.Attribute):
        if node.attr == "feature_repo":
            return "feature_repo"
        if node.attr == "parent":
            inner = _base(node.value, constants)
            if not inner:  # unknown, or the project root itself (nothing above it is in an image)
                return None
            parent = str(Path(inner).parent)
            return "" if parent == "." else parent
    return None


def _path_of(node: ast.expr, constants: dict[str, str]) -> str | None:
    """``base / "a" / "b" / variable`` -> ``base/a/b`` (constants up to the first non-constant)."""
    parts: list[ast.expr] = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        parts.append(node.right)
        node = node.left
    base = _base(node, constants)
    if base is None:
        return None
    path = Path(base) if base else Path()
    for part in reversed(parts):
        if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
            break
        path /= part.value
    return str(path)


def referenced_paths(modules: set[str]) -> set[str]:
    files = module_files(PACKAGE)
    found: set[str] = set()
    for module in modules:
        tree = ast.parse(files[module].read_text())
        constants: dict[str, str] = {}
        for node in tree.body:  # module constants such as KSERVE_DIR = PROJECT_ROOT / "deploy" / "kserve"
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                path = _path_of(node.value, constants)
                if path is not None:
                    constants[node.targets[0].id] = path
        # only whole chains: ``a / "b" / "c"`` is one path, not also ``a / "b"``
        inner = {id(n.left) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
        inner |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "parent"}
        for node in ast.walk(tree):
            if isinstance(node, (ast.BinOp, ast.Attribute, ast.Name)) and id(node) not in inner:
                path = _path_of(node, constants)
                if path not in (None, "", "."):
                    found.add(path)
    return {p for p in found if _tracked(p)}


def _tracked(path: str) -> bool:
    """A file or folder of the repository (not state such as .mlops, which is never in an image)."""
    listed = subprocess.run(["git", "-C", str(PROJECT_ROOT), "ls-files", "--", path], capture_output=True,
                            text=True, check=True).stdout
    return bool(listed.strip())


def needed_paths(entry: str) -> set[str]:
    """The package itself plus every project path the code reachable from ``entry`` refers to,
    reduced to the outermost ones (``deploy/kserve`` covers ``deploy/kserve/base/...``)."""
    paths = referenced_paths(reachable_modules(entry)) | {"mlops_assets"}
    return {p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def copies(path: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    result = []
    for instruction, args in dockerfile_instructions(path):
        if instruction == "COPY":
            words = [w for w in args.split() if not w.startswith("--")]
            result.append((words[:-1], words[-1]))
    return result
