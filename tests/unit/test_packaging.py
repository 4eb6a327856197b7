"""Packaging: capstan.drivers and capstan.image load once, from the install; the wheel is whole.

``drivers/`` and ``image/`` are installed as ``capstan.drivers`` and ``capstan.image``. The
suite must test what is installed: an editable install maps them back to the source tree, a
non-editable one to site-packages, and neither may be shadowed by the repository's own
``capstan/`` nor loaded a second time as top-level ``drivers`` or ``image``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

import capstan
import capstan.drivers.base
import capstan.image.probe

REPO = Path(__file__).resolve().parents[2]
# Source directory -> the package directory it becomes in the wheel.
MAPPING = {"capstan": "capstan", "drivers": "capstan/drivers", "image": "capstan/image",
           "etc": "capstan/etc"}


def _installed_capstan() -> Path:
    """Where the installed pycapstan's ``capstan`` package is (the source tree if editable)."""
    dist = distribution("pycapstan")
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable", False):
        return REPO / "capstan"
    return Path(str(dist.locate_file("capstan"))).resolve()


def _where(module: object) -> Path:
    return Path(str(getattr(module, "__file__", ""))).resolve().parent


def test_capstan_is_the_installed_package() -> None:
    root = _installed_capstan()
    assert _where(capstan) == root
    editable = root == REPO / "capstan"
    assert _where(capstan.drivers) == (REPO / "drivers" if editable else root / "drivers")
    assert _where(capstan.image) == (REPO / "image" if editable else root / "image")


def test_each_module_is_loaded_once() -> None:
    """No module of the source tree is loaded under a name other than its capstan.* one."""
    sources = {REPO / "drivers": "capstan.drivers", REPO / "image": "capstan.image",
               REPO / "capstan": "capstan"}
    for name, module in list(sys.modules.items()):
        path = Path(str(getattr(module, "__file__", None) or "/")).resolve()
        for src, package in sources.items():
            if path.is_relative_to(src):
                assert name == package or name.startswith(f"{package}."), (name, path)
    assert "drivers" not in sys.modules and "image" not in sys.modules


def test_a_child_python_imports_the_same_package() -> None:
    """`python -m`/`-c` children run from the repository root still get the install."""
    code = ("import capstan.drivers.base as b, capstan.image.probe as p;"
            "print(b.__file__, p.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == [capstan.drivers.base.__file__, capstan.image.probe.__file__]


@pytest.mark.parametrize("name", ["drivers", "drivers.base", "image", "image.probe"])
def test_mapped_packages_refuse_their_source_names(name: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    top = name.split(".")[0]
    assert done.returncode == 1
    assert f"ImportError: {top}/ is the package capstan.{top}, not {top}" in done.stderr


def _wheel(tmp_path: Path) -> Path:
    """The wheel CI built (``$PYCAPSTAN_WHEEL``), else one built from a copy of the tree."""
    if os.environ.get("PYCAPSTAN_WHEEL"):
        return Path(os.environ["PYCAPSTAN_WHEEL"])
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in [*MAPPING, "pyproject.toml", "setup.cfg", "README.md"]:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    tmp_path / "dist", src], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("pycapstan-*.whl")
    return wheel


def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    expected = set()
    for src, dest in MAPPING.items():
        for path in (REPO / src).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                expected.add(f"{dest}/{path.relative_to(REPO / src).as_posix()}")
    assert {"capstan/py.typed", "capstan/image/probe/probe-loader.asm",
            "capstan/image/probe/probe-loader.bin", "capstan/image/probe/probe-kernel.asm",
            "capstan/image/probe/probe-kernel.elf", "capstan/etc/config.yaml"} <= expected
    with zipfile.ZipFile(_wheel(tmp_path)) as wheel:
        shipped = {n for n in wheel.namelist() if ".dist-info/" not in n}
        probes = {name: wheel.read(f"capstan/image/probe/{name}")
                  for name in ("probe-loader.bin", "probe-kernel.elf")}
    assert shipped == expected
    for name, data in probes.items():
        assert data == (REPO / "image" / "probe" / name).read_bytes()
