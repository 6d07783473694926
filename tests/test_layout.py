"""The layout stays readable: no file over 450 lines, no class over 200 lines of code, and no
import circle among symtrain's modules (an import deferred into a function to dodge one counts)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "symtrain"
MAX_FILE_LINES = 450
MAX_CLASS_LINES = 200


def python_files() -> list[Path]:
    return sorted(
        p for folder in ("symtrain", "scripts", "tests", "docs") for p in (ROOT / folder).rglob("*.py")
    )


def test_no_file_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in python_files()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"split these by topic: {long}"


def docstring_lines(node: ast.AST) -> int:
    """Lines taken by the docstrings of a class and of everything defined in it."""
    total = 0
    for child in ast.walk(node):
        body = getattr(child, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                total += body[0].end_lineno - body[0].lineno + 1
    return total


def test_no_class_is_over_200_lines_of_code() -> None:
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1 - docstring_lines(node)
                if lines > MAX_CLASS_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert not long, f"give these classes' jobs to functions or smaller classes: {long}"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports(module: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """The symtrain modules ``module`` imports when it is imported, and those it imports later
    (inside functions). ``if TYPE_CHECKING:`` blocks import nothing at run time."""
    at_import: set[str] = set()
    later: set[str] = set()

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name in modules]
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(max(node.level - 1, 0)):
            package = package.rpartition(".")[0]
        name = (f"{package}.{node.module}" if node.module else package) if node.level else node.module or ""
        found = [name] if name in modules else []
        return found + [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in modules]

    def walk(statements: list[ast.stmt], deferred: bool) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                (later if deferred else at_import).update(t for t in targets(node) if t != module)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                walk(node.orelse, deferred)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(node.body, True)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    walk(getattr(node, field, None) or [], deferred)

    walk(ast.parse(path.read_text()).body, False)
    return at_import, later


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """An import path from start to goal through modules imported at import time, or None."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        step = []
        for here in frontier:
            for there in sorted(graph[here]):
                if there not in previous:
                    previous[there] = here
                    step.append(there)
        frontier = step
    if goal not in previous:
        return None
    chain = [goal]
    while previous[chain[-1]] is not None:
        chain.append(previous[chain[-1]])
    return chain[::-1]


def test_no_import_circle_among_symtrain_modules() -> None:
    modules = module_names()
    graph, deferred = {}, {}
    for name, path in modules.items():
        graph[name], deferred[name] = imports(name, path, modules)
    circles = []
    for name in sorted(modules):
        for target in sorted(graph[name] | deferred[name]):
            back = reaches(graph, target, name)
            if back and not name.startswith(target + "."):  # a package importing its own modules
                circles.append(" -> ".join([name, *back]))
    assert not circles, "import circles:\n" + "\n".join(circles)
