"""Parsed YAML kept by content hash: only exact JSON values, fresh copies, no parser loaded
for unchanged files (settings and a package compose alike)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from capstan.core import yamlfile
from capstan.core.errors import InputError


@pytest.fixture
def kept(capstan_root: Path) -> Path:
    yamlfile.cache_in(capstan_root / "cache")
    return capstan_root / "cache" / "yaml.json"


def entries(kept: Path) -> dict[str, object]:
    return json.loads(kept.read_text())["entries"] if kept.exists() else {}


@pytest.mark.parametrize(("text", "value", "cached"), [
    ("a: 1\nb: [x, true, null, 1.5]\n", {"a": 1, "b": ["x", True, None, 1.5]}, True),
    ("a: 1.0\n", {"a": 1.0}, True),
    ("when: 2024-01-02\n", {"when": dt.date(2024, 1, 2)}, False),
    ("1: one\n", {1: "one"}, False),
    ("true: yes\n", {True: True}, False),
    ("x: .nan\n", None, False),
    ("- !!binary aGk=\n", [b"hi"], False),
])
def test_only_values_json_gives_back_exactly_are_kept(kept: Path, text: str, value: object,
                                                      cached: bool) -> None:
    first = yamlfile.load_text(text, "t.yaml")
    if value is not None:
        assert first == value
    assert bool(entries(kept)) == cached
    again = yamlfile.load_text(text, "t.yaml")
    assert type(again) is type(first) and (value is None or again == value)
    if cached:  # types survive: 1.0 stays a float
        assert [type(v) for v in again.values()] == [type(v) for v in first.values()]


def test_kept_values_are_fresh_copies_and_strict_is_kept_apart(kept: Path) -> None:
    data = yamlfile.load_text("a: [1]\n", "t.yaml")
    data["a"].append(2)
    assert yamlfile.load_text("a: [1]\n", "t.yaml") == {"a": [1]}
    assert yamlfile.load_text("a: 1\na: 2\n", "t.yaml") == {"a": 2}
    with pytest.raises(InputError, match="duplicate key 'a'"):
        yamlfile.load_text("a: 1\na: 2\n", "t.yaml", strict=True)
    with pytest.raises(InputError, match="larger than"):  # bounds come before the cache
        yamlfile.load_text("a: " + "x" * yamlfile.MAX_BYTES, "t.yaml")


def test_dump_is_pyyaml_s_and_kept(kept: Path) -> None:
    data = {"lock_version": 1, "packages": {"b": {"sha256": "00", "version": "1.0"}}}
    assert yamlfile.dump(data, sort_keys=True) == yaml.safe_dump(data, sort_keys=True)
    assert yamlfile.dump(data, sort_keys=True) == yaml.safe_dump(data, sort_keys=True)
    assert any(k.startswith("dump:") for k in entries(kept))
    assert yamlfile.dump({1: "x"}) == yaml.safe_dump({1: "x"}, sort_keys=False)
    assert yamlfile.dump({"1": "x"}) == yaml.safe_dump({"1": "x"}, sort_keys=False)


def test_the_cache_is_bounded(kept: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlfile, "MAX_KEPT", 3)
    for n in range(5):
        yamlfile.load_text(f"n: {n}\n", "t.yaml")
    assert len(entries(kept)) == 3
    yamlfile.load_text("big: " + "x" * (100 << 10), "t.yaml")  # parsed, not kept
    assert len(entries(kept)) == 3
    assert kept.stat().st_mode & 0o777 == 0o600


def test_a_second_package_compose_loads_no_yaml_parser(cli, tmp_path: Path) -> None:
    for name, extra in (("osv.bootstrap", ""), ("my.lib", "")):
        pkg = tmp_path / name
        (pkg / "meta").mkdir(parents=True)
        (pkg / "meta" / "package.yaml").write_text(f"name: {name}\ntitle: t\nauthor: a\n{extra}")
        (pkg / "meta" / "run.yaml").write_text("runtime: native\nconfig_set:\n"
                                               f"  {name.replace('.', '_')}:\n    bootcmd: /x\n")
        (pkg / "x").write_text(name)
        assert cli("package", "import", "-C", pkg).code == 0
    app = tmp_path / "app"
    (app / "meta").mkdir(parents=True)
    (app / "meta" / "package.yaml").write_text("name: app\ntitle: t\nauthor: a\n"
                                               "require: [my.lib]\n")
    (app / "meta" / "run.yaml").write_text("runtime: native\nconfig_set:\n  default:\n"
                                           "    bootcmd: /x\n")
    code = ("import sys\nfrom capstan.shell import main\n"
            f"assert main(['package', 'compose', '-C', {str(app)!r}, '-l', 'probe-loader',"
            f" '-o', {str(tmp_path / 'a.qcow2')!r}]) == 0\n"
            "print('YAML', 'yaml' in sys.modules)\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)]
    assert "YAML True" in runs[0] and "YAML False" in runs[2], runs  # the 1st wrote a lock
    (app / "meta" / "package.yaml").write_text("name: app\ntitle: t\nauthor: a\n"
                                               "require: [my.lib, nope]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert "package nope is not in your local repository" in done.stderr  # edits are seen
