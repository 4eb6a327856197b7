"""docs/api.md's examples run: every ```python block, in order, in one namespace, in an
empty working directory and a fresh CAPSTAN_ROOT (the probe loader, under TCG)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(text: str) -> list[tuple[int, str]]:
    """(line of the block's first code line, code) of each ```python block of *text*."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_page_has_an_example_for_each_service() -> None:
    code = "".join(c for _, c in blocks(API.read_text()))
    for service in ("images", "repository", "instances", "volumes", "packages", "fleet",
                    "doctor"):
        assert f"from capstan.services import {service}" in code, service


def test_every_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capstan_root: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace: dict[str, object] = {"__name__": "api_docs"}
    for line, code in blocks(API.read_text()):
        tree = ast.parse(code, str(API))
        ast.increment_lineno(tree, line - 1)  # tracebacks point into docs/api.md
        exec(compile(tree, str(API), "exec"), namespace)  # our own page
    assert not (capstan_root / "instances" / "qemu" / "web1").exists()
