"""Disk formats, and every call pycapstan makes to ``qemu-img``."""

from __future__ import annotations

import enum
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from capstan.core import proc
from capstan.core.errors import CommandFailed, ImageError, UsageError

LOG = logging.getLogger(__name__)

__all__ = ["DiskFormat", "ImageInfo", "convert", "gce_tarball", "info", "read_range"]

MIB = 1024 * 1024
GIB = 1024 * MIB


class DiskFormat(enum.Enum):
    """An output disk format: ``qemu-img`` driver, options and file suffix."""

    QCOW2 = ("qcow2", "qcow2", (), "qcow2")
    RAW = ("raw", "raw", (), "raw")
    VMDK = ("vmdk", "vmdk", ("subformat=monolithicSparse",), "vmdk")
    VMDK_STREAM = ("vmdk-stream", "vmdk", ("subformat=streamOptimized",), "vmdk")
    VMDK_FLAT = ("vmdk-flat", "vmdk", ("subformat=monolithicFlat",), "vmdk")
    VDI = ("vdi", "vdi", (), "vdi")
    VHD = ("vhd", "vpc", ("subformat=fixed", "force_size=on"), "vhd")
    VHDX = ("vhdx", "vhdx", (), "vhdx")
    GCE = ("gce", "raw", (), "tar.gz")  # disk.raw in a sparse GNU tar, gzipped

    def __init__(self, label: str, driver: str, options: tuple[str, ...],
                 suffix: str) -> None:
        self.label = label
        self.driver = driver
        self.options = options
        self.suffix = suffix

    @classmethod
    def parse(cls, text: str) -> DiskFormat:
        """The format named *text* (``vmdk-sparse`` and ``vpc`` are aliases)."""
        name = {"vmdk-sparse": "vmdk", "vpc": "vhd", "img": "raw"}.get(
            text.lower(), text.lower())
        for fmt in cls:
            if fmt.label == name:
                return fmt
        names = ", ".join(f.label for f in cls)
        raise UsageError(f"unknown disk format '{text}' (choose from {names})")

    @property
    def archive(self) -> bool:
        """Whether this is an archive around a raw disk (GCE) rather than a disk QEMU opens."""
        return self is DiskFormat.GCE

    @property
    def alignment(self) -> int:
        """The virtual-size granularity this format needs (VHD: 1 MiB, GCE: 1 GiB)."""
        return {DiskFormat.VHD: MIB, DiskFormat.GCE: GIB}.get(self, 512)


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says of a file."""

    path: Path
    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None


def info(path: Path, fmt: str | None = None) -> ImageInfo:
    """Probe *path* with ``qemu-img info`` (format given or probed)."""
    argv = ["qemu-img", "info", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    try:
        out = proc.run([*argv, str(path)]).stdout
    except CommandFailed as err:
        raise ImageError(f"{path}: not a readable disk image ({err.stderr.strip()})") from err
    data = json.loads(out)
    return ImageInfo(
        path=path,
        format=data["format"],
        virtual_size=int(data["virtual-size"]),
        actual_size=int(data.get("actual-size", 0)),
        backing_file=data.get("backing-filename"),
    )


def convert(source: Path, target: Path, fmt: DiskFormat, source_fmt: str = "raw") -> None:
    """Convert *source* to *target* in *fmt*."""
    if fmt is DiskFormat.GCE:
        _convert_gce(source, target, source_fmt)
        return
    argv = ["qemu-img", "convert", "-f", source_fmt, "-O", fmt.driver]
    if fmt.options:
        argv += ["-o", ",".join(fmt.options)]
    proc.run([*argv, str(source), str(target)])


def _convert_gce(source: Path, target: Path, source_fmt: str) -> None:
    """*source* as a GCE tarball: raw, its size rounded up to whole GiB, then tarred."""
    if source_fmt == "raw" and source.name == "disk.raw" and source.stat().st_size % GIB == 0:
        gce_tarball(source, target)
        return
    with tempfile.TemporaryDirectory(prefix=".capstan-gce-", dir=target.parent) as tmp:
        raw = Path(tmp) / "disk.raw"
        proc.run(["qemu-img", "convert", "-q", "-f", source_fmt, "-O", "raw", str(source),
                  str(raw)])
        size = raw.stat().st_size
        os.truncate(raw, -(-size // GIB) * GIB)
        gce_tarball(raw, target)


def gce_tarball(raw: Path, target: Path) -> None:
    """Write the ``.tar.gz`` Compute Engine imports: the file *raw* (named ``disk.raw``,
    a whole number of GiB) as the only member, sparse, in the oldgnu format GCE documents."""
    if raw.name != "disk.raw":
        raise ValueError("a GCE tarball holds a file named disk.raw")
    proc.run(["tar", "--format=oldgnu", "--sparse", "--gzip", "--create",
              "--owner=0", "--group=0", "--numeric-owner", "--mode=0644", "--mtime=@0",
              f"--file={target}", f"--directory={raw.parent}", "--", "disk.raw"])


def read_range(path: Path, fmt: str, target: Path, start: int, length: int) -> None:
    """Copy *length* bytes from *start* of image *path* into raw file *target*."""
    bs = 1
    for candidate in (MIB, 65536, 512):
        if start % candidate == 0 and length % candidate == 0:
            bs = candidate
            break
    if bs == 1:
        raise ValueError("image ranges must be 512-byte aligned")
    proc.run([
        "qemu-img", "dd", "-f", fmt, "-O", "raw", f"bs={bs}",
        # qemu-img dd counts blocks from the start of the image, not from skip.
        f"skip={start // bs}", f"count={(start + length) // bs}",
        f"if={path}", f"of={target}",
    ])


def write_range(path: Path, fmt: str, data: bytes, start: int) -> None:
    """Write *data* at byte *start* of image *path*, in place, whatever its format."""
    fd, scratch = tempfile.mkstemp(prefix="capstan-range-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        proc.run(["qemu-io", "-f", fmt, "-c", f"write -s {scratch} {start} {len(data)}",
                  str(path)])
    finally:
        os.unlink(scratch)
