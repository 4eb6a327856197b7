"""Layering: imports only point down, and no two modules import each other.

Floors, top to bottom: the CLI (``capstan.shell``) -> ``capstan.commands`` ->
``capstan.services`` -> {``capstan.packages``, ``capstan.remotes``, ``capstan.drivers``,
``capstan.image``} -> ``capstan.core``. Commands see services (and core) only. Drivers never
import ``capstan.image`` or a service; ``capstan.image`` knows nothing of packages,
remotes, services or drivers. Every import counts: at module level, inside functions
(lazy imports) and under ``TYPE_CHECKING``; only the last are left out of the cycle check,
as they never run.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = {"capstan": REPO / "capstan", "capstan.drivers": REPO / "drivers",
           "capstan.image": REPO / "image"}

def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if package == "capstan" and parts[0] in ("drivers", "image"):
                continue  # not shipped from here (ruff bans these names too)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _targets(node: ast.AST) -> Iterator[str]:
    """The capstan modules an import statement names."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names if a.name.split(".")[0] == "capstan")
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
            node.module.split(".")[0] == "capstan":
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            yield full if full in MODULES else node.module


def _type_only(tree: ast.Module) -> set[ast.AST]:
    """The statements under ``if TYPE_CHECKING:``."""
    return {node for block in ast.walk(tree) if isinstance(block, ast.If)
            and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
            for stmt in block.body for node in ast.walk(stmt)}


@cache
def imports(module: str, *, typing: bool = True) -> frozenset[str]:
    """Every capstan module *module* imports, wherever the import statement is (*typing*:
    those under ``TYPE_CHECKING`` too)."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    skip = set() if typing else _type_only(tree)
    return frozenset(t for node in ast.walk(tree) if node not in skip
                     for t in _targets(node) if t != module)


def floor(module: str) -> str:
    """The floor *module* lives on."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "core":
        return "core"
    if parts[1] in ("packages", "remotes", "drivers", "image"):
        return parts[1]
    if parts[1] in ("services", "commands"):
        return parts[1]
    return "cli"  # capstan.shell, capstan.__main__


DOMAIN = {"packages", "remotes", "drivers", "image"}
MAY_IMPORT = {
    "cli": {"cli", "commands", "services", *DOMAIN, "core"},
    # the shell only for typing the cliff app (under TYPE_CHECKING)
    "commands": {"commands", "services", "core", "cli"},
    "services": {"services", *DOMAIN, "core"},
    "packages": {"packages", "image", "core"},
    "remotes": {"remotes", "core"},
    "drivers": {"drivers", "remotes", "core"},
    "image": {"image", "core"},
    "core": {"core"},
}


def test_the_walk_sees_every_floor() -> None:
    assert {floor(m) for m in MODULES} == set(MAY_IMPORT)
    assert imports("capstan.commands.instance")  # the walk finds lazy imports


def test_imports_point_down() -> None:
    wrong = sorted((m, t) for m in MODULES for t in imports(m)
                   if floor(t) not in MAY_IMPORT[floor(m)])
    assert wrong == [], "upward or sideways imports: " + ", ".join(
        f"{m} -> {t}" for m, t in wrong)


def _cycles() -> list[list[str]]:
    """Import cycles among the modules, on the imports that run: one found, or none."""
    graph = {m: {t for t in imports(m, typing=False) if t in MODULES} for m in MODULES}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        return [err.args[1]]
    return []


def test_no_import_cycles() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("module", ["capstan.commands.image", "capstan.commands.instance",
                                    "capstan.commands.package", "capstan.commands.repo"])
def test_commands_see_no_image_driver_or_package_code(module: str) -> None:
    assert {floor(t) for t in imports(module)} <= {"commands", "services", "core", "cli"}




def test_no_module_over_about_400_lines() -> None:
    long = sorted(m for m, path in MODULES.items()
                  if len(path.read_text().splitlines()) > 420)
    assert long == []


MAX_FUNCTION_LINES = 50


def test_no_function_over_50_lines() -> None:
    """From ``def`` to its last line, decorators left out (issue 15, section 2)."""
    long = sorted(f"{m}.{node.name} (line {node.lineno}: {node.end_lineno - node.lineno + 1})"
                  for m, path in MODULES.items()
                  for node in ast.walk(ast.parse(path.read_text(), str(path)))
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.end_lineno is not None
                  and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES)
    assert long == []
