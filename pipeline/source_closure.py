"""The project source files a module runs: its import closure, found by parsing, never by importing.

DVC stages declare the code they depend on, and a training checkpoint records a hash of the code
it was made with; both should follow what the code really imports, so that editing one stage's
code re-runs only the stages (and invalidates only the checkpoints) that use it.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

# The top-level packages of this repository; imports of anything else are third-party.
PROJECT_PACKAGES = ("pipeline", "stages")
# The folder holding the project packages (the repository root, or site-packages when installed).
SOURCE_ROOT = Path(__file__).parents[1]


def import_closure(module: str, root: Path = SOURCE_ROOT) -> list[Path]:
    """Every project .py file under `root` that importing `module` can run, sorted.

    Follows `import` and `from ... import` statements anywhere in a file, function-local (lazy)
    ones included, except under `if TYPE_CHECKING:`, which never runs. A package's `__init__.py`
    counts whenever something is imported through it.
    """
    if _module_file(module, root) is None:  # a misspelt or moved module must not give an empty closure
        raise ValueError(f"{module!r} is not a module of {', '.join(PROJECT_PACKAGES)} under {root}")
    found: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        for imported in (*_parent_packages(name), name):
            path = _module_file(imported, root)
            if path is None or imported in found:
                continue
            found[imported] = path
            pending.extend(_imported_modules(imported, path))
    return sorted(found.values())


def _module_file(module: str, root: Path) -> Path | None:
    """The file defining project module `module` (a package's `__init__.py`); None for any other module."""
    parts = module.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parent_packages(module: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b']: importing a module first runs the packages it is in."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def _imported_modules(module: str, path: Path) -> Iterator[str]:
    """The modules `path` (module `module`) imports; `from p import name` also yields `p.name`,
    which is kept only where it is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for statement in _run_time_imports(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(statement, ast.Import):
            yield from (alias.name for alias in statement.names)
            continue
        base = _absolute_base(statement, package)
        yield base
        yield from (f"{base}.{alias.name}" for alias in statement.names if alias.name != "*")


def _absolute_base(statement: ast.ImportFrom, package: str) -> str:
    """The absolute module of a `from ... import`, resolving relative imports against `package`."""
    if not statement.level:
        return statement.module or ""
    parts = package.split(".")
    anchor = ".".join(parts[: len(parts) - statement.level + 1])
    return f"{anchor}.{statement.module}" if statement.module else anchor


def _run_time_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements in `node`, leaving out the bodies of `if TYPE_CHECKING:`."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    type_checking = isinstance(node, ast.If) and _is_type_checking(node.test)
    for child in node.orelse if type_checking else ast.iter_child_nodes(node):
        yield from _run_time_imports(child)


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
