"""The import graph DESIGN.md draws, read from the source with `ast`.

`upstream` imports no project package and no database layer; `killboard` imports no other
app (it may use `upstream` and `config`); `backfill` and `enrichment` never import each
other, they meet through `killboard`, `upstream` and task names. Every import counts,
including those inside functions and under `TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every top-level package of the project: the apps, config, upstream, tests and the tools.
PROJECT_PACKAGES = frozenset(path.parent.name for path in ROOT.glob("*/__init__.py"))


def imports(package: str) -> Iterator[tuple[str, list[str]]]:
    """(`file:line`, modules) for every import statement in the package's Python files.

    `from a import b` gives both `a` and `a.b`: b may be a module.
    """
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    for path in files:
        relative = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(relative))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield f"{relative}:{node.lineno}", [alias.name]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, relative)
                yield f"{relative}:{node.lineno}", [base, *(f"{base}.{a.name}" for a in node.names)]


def _absolute(node: ast.ImportFrom, relative: Path) -> str:
    """The module a `from ... import` reads from, with relative imports resolved."""
    if not node.level:
        return node.module or ""
    # In a/b/c.py, `from . import x` reads a.b; each further dot goes one package up.
    packages = relative.parent.parts[: len(relative.parent.parts) - node.level + 1]
    return ".".join([*packages, node.module] if node.module else packages)


def within(names: Iterable[str]) -> Callable[[str], bool]:
    """Whether a module is one of `names` or inside one of them."""
    names = tuple(names)
    return lambda module: any(module == name or module.startswith(name + ".") for name in names)


def assert_no_import(package: str, forbidden: Callable[[str], bool]) -> None:
    """Fail with `file:line imports module`, one a line, for each forbidden import."""
    found = []
    for where, modules in imports(package):
        bad = [module for module in modules if forbidden(module)]
        if bad:
            found.append(f"{where} imports {bad[0]}")
    assert not found, "\n".join(["forbidden imports:", *found])


def test_backfill_imports_nothing_from_enrichment() -> None:
    assert_no_import("backfill", within({"enrichment"}))


def test_enrichment_imports_nothing_from_backfill() -> None:
    assert_no_import("enrichment", within({"backfill"}))


def test_upstream_imports_no_project_package() -> None:
    assert_no_import("upstream", within(PROJECT_PACKAGES - {"upstream"}))


def test_upstream_imports_no_database_layer_and_no_models() -> None:
    database = within({"django.db", "django.contrib"})
    assert_no_import("upstream", lambda m: database(m) or m.endswith(".models"))


def test_killboard_imports_no_other_app_but_upstream_and_config() -> None:
    others = PROJECT_PACKAGES - {"killboard", "upstream", "config"}
    assert_no_import("killboard", within(others))
