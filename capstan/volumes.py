"""Package volumes: ``./volumes/<name>`` disks and their ``<name>.yaml`` settings.

Capstan's layout (a package root with ``meta/package.yaml``); unlike Capstan,
``run --volume NAME`` reads the settings back.
"""

from __future__ import annotations

import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock

from capstan import proc
from capstan.errors import Conflict, InputError, NotFound, UsageError
from capstan.repository import atomic_write
from capstan.sizes import parse_size

__all__ = ["FORMATS", "VolumeInfo", "create", "delete", "list_volumes", "settings"]

#: accepted ``-f`` values and the qemu-img format each means
FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vdi": "vdi", "vhd": "vpc",
           "vpc": "vpc", "vhdx": "vhdx"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SETTINGS = ("format", "aio", "cache")


@dataclass(frozen=True)
class VolumeInfo:
    """One volume of a package."""

    name: str
    path: Path
    format: str
    size: int
    disk_size: int


def _volumes_dir(package: Path) -> Path:
    if not (package / "meta" / "package.yaml").is_file():
        raise InputError(f"{package.absolute()} is not a package root directory "
                         "(no meta/package.yaml): run 'capstan package init' first")
    return package / "volumes"


def _path(package: Path, name: str) -> Path:
    if not _NAME.fullmatch(name) or name.endswith(".yaml"):
        raise UsageError(f"invalid volume name '{name}': use letters, digits, '.', '_' and '-'")
    return _volumes_dir(package) / name


def settings(path: Path) -> dict[str, str]:
    """The settings in ``<volume>.yaml`` next to *path* (empty if there is none)."""
    meta = path.with_name(path.name + ".yaml")
    try:
        data = yaml.safe_load(meta.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{meta}: cannot read volume settings: {err}") from err
    if not isinstance(data, dict) or set(data) - set(_SETTINGS):
        raise InputError(f"{meta}: expected only the keys {', '.join(_SETTINGS)}")
    return {key: str(value) for key, value in data.items() if value}


def create(package: Path, name: str, size: str = "1G", fmt: str = "raw") -> VolumeInfo:
    """Create volume *name* of *size* in *package*; an existing one is refused."""
    path = _path(package, name)
    qemu_fmt = FORMATS.get(fmt or "raw")
    if qemu_fmt is None:
        raise UsageError(f"invalid volume format '{fmt}': use one of {', '.join(FORMATS)}")
    mib = max(1, parse_size(size) >> 20)
    path.parent.mkdir(mode=0o755, exist_ok=True)
    with FileLock(str(path.parent / ".lock")):
        if path.exists():
            raise Conflict(f"volume '{name}' already exists: {path}")
        tmp = path.with_name(f".{name}.creating")
        tmp.unlink(missing_ok=True)
        try:
            proc.run(["qemu-img", "create", "-q", "-f", qemu_fmt, str(tmp), f"{mib}M"])
            atomic_write(path.with_name(name + ".yaml"),
                         yaml.safe_dump({"format": qemu_fmt}).encode())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return _info(path)


def delete(package: Path, name: str) -> None:
    """Remove volume *name* and its settings file."""
    path = _path(package, name)
    with FileLock(str(path.parent / ".lock")) if path.parent.is_dir() else nullcontext():
        if not path.is_file():
            raise NotFound(f"no volume named '{name}' in {path.parent}")
        path.unlink()
        path.with_name(name + ".yaml").unlink(missing_ok=True)


def list_volumes(package: Path) -> list[VolumeInfo]:
    """Every volume of *package*, by name."""
    folder = _volumes_dir(package)
    if not folder.is_dir():
        return []
    return [_info(p) for p in sorted(folder.iterdir())
            if p.is_file() and _NAME.fullmatch(p.name) and p.suffix != ".yaml"]


def _info(path: Path) -> VolumeInfo:
    from capstan.image.formats import info

    meta = info(path, settings(path).get("format"))
    return VolumeInfo(path.name, path, meta.format, meta.virtual_size, meta.actual_size)

