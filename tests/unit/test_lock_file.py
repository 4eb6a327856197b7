"""``capstan.lock`` is written as JSON (YAML that needs no YAML writer), and only when the
pins change: a compose of unchanged packages leaves the file as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from capstan.core.errors import InputError
from capstan.core.yamlfile import load_strict
from capstan.packages.resolve import Resolved
from capstan.services.images import _check_lock

A = Resolved("osv.bootstrap", "1.0", "a" * 64, Path("/nowhere/osv.bootstrap.mpm"))


def test_the_lock_is_new_text_only_when_the_pins_change(tmp_path: Path) -> None:
    text = _check_lock(tmp_path, [A])
    assert text is not None
    assert load_strict_text(tmp_path, text) == {
        "lock_version": 1, "packages": {"osv.bootstrap": {"version": "1.0", "sha256": "a" * 64}}}
    (tmp_path / "capstan.lock").write_bytes(text)
    assert _check_lock(tmp_path, [A]) is None  # unchanged: not written again
    (tmp_path / "capstan.lock").write_text(  # the block YAML of earlier versions still holds
        "lock_version: 1\npackages:\n  osv.bootstrap:\n    sha256: " + "a" * 64 +
        "\n    version: '1.0'\n")
    assert _check_lock(tmp_path, [A]) == text
    changed = Resolved("osv.bootstrap", "1.1", "b" * 64, A.path)
    with pytest.raises(InputError, match=r"pins osv\.bootstrap at sha256 a+ but"):
        _check_lock(tmp_path, [changed])


def load_strict_text(folder: Path, text: bytes) -> object:
    path = folder / "parsed.yaml"
    path.write_bytes(text)
    return load_strict(path)


def test_temporaries_of_other_commands_are_never_package_content(tmp_path: Path) -> None:
    """A concurrent compose writing capstan.lock (or a build writing the .mpm) leaves a
    temporary in the package for a moment: a compose walking it then must not take it."""
    from capstan.core.fs import TEMP_PREFIX
    from capstan.packages.manifest import ignore_rules, walk_package

    package = tmp_path / "package"
    package.mkdir()
    (package / "app").write_text("app")
    (package / f"{TEMP_PREFIX}123-456.abc.capstan.lock").write_text("{}")
    (package / f"{TEMP_PREFIX}123-456.def.pkg").mkdir()
    (package / f"{TEMP_PREFIX}123-456.def.pkg" / "inside").write_text("x")
    assert [rel for rel, _ in walk_package(package, ignore_rules(package))] == ["/app"]
