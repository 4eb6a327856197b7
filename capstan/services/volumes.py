"""Package volumes: ``./volumes/<name>`` disks and their ``<name>.yaml`` settings.

Capstan's layout (a package root with ``meta/package.yaml``); unlike Capstan,
``run --volume NAME`` reads the settings back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from capstan.core import proc
from capstan.core.errors import (
    CommandFailed,
    Conflict,
    ImageError,
    InputError,
    NotFound,
    UsageError,
)
from capstan.core.fs import atomic_write
from capstan.core.names import check_name, is_valid
from capstan.core.sizes import parse_size
from capstan.core.yamlfile import load_strict
from capstan.drivers.base import VOLUME_SETTINGS, Volume

__all__ = ["FORMATS", "VolumeInfo", "attachable", "create", "delete", "list_volumes",
           "other_file", "settings"]

#: accepted ``-f`` values and the qemu-img format each means
FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vdi": "vdi", "vhd": "vpc",
           "vpc": "vpc", "vhdx": "vhdx"}
_SETTINGS = ("format", "aio", "cache")
_PROBE_TIMEOUT = 60  # qemu-img info of a hostile image must not hang a run


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
    if check_name(name, "volume").endswith(".yaml"):
        raise UsageError(f"invalid volume name '{name}': it cannot end in .yaml")
    return _volumes_dir(package) / name


def settings(path: Path) -> dict[str, str]:
    """The settings in ``<volume>.yaml`` next to *path* (empty if there is none)."""
    meta = path.with_name(path.name + ".yaml")
    try:
        data = load_strict(meta) or {}
    except NotFound:
        return {}
    if not isinstance(data, dict) or set(data) - set(_SETTINGS):
        raise InputError(f"{meta}: expected only the keys {', '.join(_SETTINGS)}")
    found = {key: str(value).lower() for key, value in data.items() if value}
    for key, value in found.items():
        if value not in VOLUME_SETTINGS[key]:
            raise InputError(f"{meta}: {key} must be one of "
                             f"{', '.join(VOLUME_SETTINGS[key])}, not {value!r}")
    return found


def attachable(vol: Volume) -> Volume:
    """*vol* with its format probed by ``qemu-img info``, never guessed.

    Refused (:class:`ImageError`): a file that is not an image in one of
    :data:`VOLUME_SETTINGS` formats, a ``format=`` the probe contradicts, and an
    image that reads another file (backing file, qcow2 data file, vmdk extent).
    """
    if not vol.path.is_file():
        raise NotFound(f"no such volume: {vol.path}")
    try:
        out = proc.run(["qemu-img", "info", "--output=json", str(vol.path)],
                       timeout=_PROBE_TIMEOUT).stdout
        data = json.loads(out)
        fmt = str(data["format"])
    except CommandFailed as err:
        raise ImageError(f"volume {vol.path} is not a readable disk image: {err}") from err
    except (ValueError, KeyError, TypeError) as err:
        raise ImageError(f"volume {vol.path}: cannot read qemu-img's report") from err
    if fmt not in VOLUME_SETTINGS["format"].values():
        raise ImageError(f"volume {vol.path} is a {fmt} image: use one of "
                         f"{', '.join(sorted(set(VOLUME_SETTINGS['format'].values())))}")
    if vol.format is not None and vol.format != fmt:
        raise ImageError(f"volume {vol.path} is a {fmt} image, not {vol.format}")
    other = _other_file(vol.path, data)
    if other:
        raise ImageError(f"volume {vol.path} reads another file ({other}): a volume must "
                         "stand alone (qemu-img convert it to one file first)")
    return dataclasses.replace(vol, format=fmt)


def other_file(path: Path, fmt: str) -> str | None:
    """A file other than *path* that QEMU opens with the image *path* in format *fmt*
    (a backing file, qcow2 data file or vmdk extent, found by ``qemu-img info``), if any."""
    if fmt == "raw":
        return None
    try:
        data = json.loads(proc.run(["qemu-img", "info", "--output=json", "-f", fmt, str(path)],
                                   timeout=_PROBE_TIMEOUT).stdout)
    except CommandFailed as err:
        raise ImageError(f"{path} is not a readable {fmt} image: {err}") from err
    except ValueError as err:
        raise ImageError(f"{path}: cannot read qemu-img's report") from err
    return _other_file(path, data) if isinstance(data, dict) else None


def _other_file(path: Path, data: dict[str, Any]) -> str | None:
    """A file other than *path* that the image described by *data* reads, if any."""
    if data.get("backing-filename") or data.get("full-backing-filename"):
        return f"backing file {data.get('backing-filename')!r}"
    specific = data.get("format-specific", {}).get("data", {})
    if specific.get("data-file"):
        return f"data file {specific['data-file']!r}"
    for extent in specific.get("extents", []):
        name = Path(path.parent, str(extent.get("filename", "")))
        if not (name.is_file() and os.path.samefile(name, path)):
            return f"extent {extent.get('filename')!r}"
    return None


def _lock(root: Path, path: Path) -> FileLock:
    """The lock of the volumes directory holding *path*, under *root* (not in the
    package, where it would be packaged and another user could hold it)."""
    from capstan.core.fs import lock

    return lock(root, "volumes", str(path.parent.absolute()))


def create(package: Path, name: str, size: str = "1G", fmt: str = "raw", *,
           root: Path) -> VolumeInfo:
    """Create volume *name* of *size* in *package*; an existing one is refused."""
    path = _path(package, name)
    qemu_fmt = FORMATS.get(fmt or "raw")
    if qemu_fmt is None:
        raise UsageError(f"invalid volume format '{fmt}': use one of {', '.join(FORMATS)}")
    mib = max(1, parse_size(size) >> 20)
    path.parent.mkdir(mode=0o755, exist_ok=True)
    with _lock(root, path):
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


def delete(package: Path, name: str, *, root: Path) -> None:
    """Remove volume *name* and its settings file."""
    path = _path(package, name)
    with _lock(root, path):
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
            if p.is_file() and is_valid(p.name, "volume") and p.suffix != ".yaml"]


def _info(path: Path) -> VolumeInfo:
    from capstan.image.formats import info

    meta = info(path, settings(path).get("format"))
    return VolumeInfo(path.name, path, meta.format, meta.virtual_size, meta.actual_size)

