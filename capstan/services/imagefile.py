"""One image file: open and inspect it, compare two, convert or export one.

The image commands see this module only; :mod:`capstan.image` does the work.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from capstan.core.config import Config
from capstan.image import formats
from capstan.image.compose import publishing
from capstan.image.formats import DiskFormat, ImageInfo
from capstan.image.inspect import Change, OsvImage, TreeItem
from capstan.image.inspect import diff as _diff
from capstan.image.ova import Appliance, export_ova
from capstan.services.instances import memory_mib
from capstan.services.store import LocalRepository

__all__ = ["Change", "DiskFormat", "Exported", "ImageInfo", "OsvImage", "OvaOptions", "TreeItem",
           "convert", "diff", "disk_format", "export", "open_image"]


@dataclass(frozen=True)
class Exported:
    """A package written for another hypervisor or cloud."""

    path: Path
    capacity: int
    members: tuple[str, ...]


def disk_format(text: str) -> DiskFormat:
    """A ``--disk-format`` value."""
    return DiskFormat.parse(text)


def open_image(config: Config, ref: str) -> OsvImage:
    """IMAGE, a file path or a name in the local repository, opened for reading."""
    return OsvImage(LocalRepository(config.root).resolve(ref, "qemu"))


def diff(config: Config, ref_a: str, ref_b: str) -> list[Change]:
    """How image *ref_b* differs from *ref_a* (command line, partition, files)."""
    with open_image(config, ref_a) as a, open_image(config, ref_b) as b:
        return _diff(a, b)


def _rounded(size: int) -> int:
    """*size* rounded up to whole GiB, as Compute Engine counts a disk."""
    return -(-size // formats.GIB) * formats.GIB


def convert(config: Config, ref: str, target: Path, fmt: DiskFormat) -> ImageInfo:
    """Write image *ref* to *target* in *fmt*; what was written."""
    with open_image(config, ref) as img:
        source, source_fmt = img.path, img.format
    with publishing(target) as tmp:
        formats.convert(source, tmp / target.name, fmt, source_fmt)
    if fmt.archive:  # a tarball: describe the disk inside
        size = formats.info(source, source_fmt).virtual_size
        return ImageInfo(target, "gce", _rounded(size), target.stat().st_size, None)
    return formats.info(target, fmt.driver)


@dataclass(frozen=True)
class OvaOptions:
    """The VM an OVA export describes: its *name* (None: the target's stem), *memory*
    (``1G``) and *cpus*."""

    name: str | None = None
    memory: str = "1G"
    cpus: int = 2


def export(config: Config, ref: str, target: Path, kind: str,
           ova: OvaOptions = OvaOptions()) -> Exported:
    """Export image *ref* as an OVA (OVF + VMDK + manifest) or, *kind* ``gce``, as the
    ``disk.raw`` tarball Compute Engine imports."""
    mib = memory_mib(ova.memory)
    with open_image(config, ref) as img:
        source, source_fmt = img.path, img.format
        if kind == "gce":
            with publishing(target) as tmp:
                formats.convert(source, tmp / target.name, DiskFormat.GCE, source_fmt)
            size = formats.info(source, source_fmt).virtual_size
            return Exported(target, _rounded(size), ("disk.raw",))
        with publishing(target) as tmp, tempfile.TemporaryDirectory(
                prefix=".capstan-ova-", dir=target.parent) as parts:
            result = export_ova(source, source_fmt, tmp / target.name, Path(parts),
                                Appliance(ova.name or target.stem, mib, ova.cpus))
    return Exported(target, result.capacity, tuple(result.members))
