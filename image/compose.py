"""Composing an OSv disk on the host: loader + command line + ROFS partition."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from capstan.core.errors import InputError, LocalIOError, NotFound
from capstan.core.fs import sweep, temp_dir
from capstan.image import cmdline, formats, mbr
from capstan.image.formats import DiskFormat
from capstan.image.loader import Loader
from capstan.image.rofs import Entry, RofsLayout, write_rofs

LOG = logging.getLogger(__name__)

__all__ = ["KERNEL_LESS_START", "ComposeResult", "DiskSpec", "compose", "publishing", "write_raw"]

KERNEL_LESS_START = 512


@dataclass(frozen=True)
class ComposeResult:
    """What :func:`compose` wrote."""

    path: Path
    disk_format: str
    virtual_size: int
    partition_start: int
    partition_size: int
    cmdline: str
    loader: str
    files: int
    directories: int
    symlinks: int
    file_bytes: int


@dataclass(frozen=True)
class DiskSpec:
    """The disk around the files: *loader* (None: OSv's kernel-less layout), the
    command line *cmdline*, the format, and a minimum virtual *size* (0: just enough)."""

    loader: Loader | None
    cmdline: str = ""
    disk_format: DiskFormat = DiskFormat.QCOW2
    size: int = 0


def write_raw(out: BinaryIO, entries: Sequence[Entry], disk: DiskSpec) -> tuple[int, RofsLayout]:
    """Write the raw disk into *out*; return its virtual size and the ROFS layout.

    With no loader the disk has OSv's kernel-less layout (osv-image-format.md,
    section 10): a sector holding only entry 2 and ``55 AA``, the filesystem
    from byte 512, and no command line (the VMM gives it). The size is aligned
    to the format's alignment.
    """
    loader, min_size = disk.loader, disk.size
    start = loader.partition_start if loader else KERNEL_LESS_START
    layout = write_rofs(entries, out, base=start)
    needed = mbr.align_up(start + layout.size, disk.disk_format.alignment)
    if min_size and min_size < needed:
        raise InputError(
            f"size {min_size} bytes is too small for this content: "
            f"at least {needed} bytes ({-(-needed // (1024 * 1024))}M) are needed")
    virtual = mbr.align_up(max(needed, min_size), disk.disk_format.alignment)
    sector0 = bytearray(loader.data[:512] if loader else bytes(510) + b"\x55\xaa")
    mbr.set_partition(sector0, 2, start, layout.size)
    out.seek(0)
    if loader is None:
        out.write(sector0)
    else:
        out.write(bytes(sector0) + cmdline.area_bytes(disk.cmdline))
        out.write(loader.data[32768:])
    out.truncate(virtual)
    return virtual, layout


def compose(entries: Sequence[Entry], disk: DiskSpec, output: Path) -> ComposeResult:
    """Write an OSv image of *entries* to *output*, all or nothing; kernel-less
    (no command line) when the *disk* has no loader."""
    loader, disk_format = disk.loader, disk.disk_format
    if loader is None:
        disk = replace(disk, cmdline="")
    cmdline.validate(disk.cmdline)
    with publishing(output) as tmp:
        raw = tmp / (output.name if disk_format is DiskFormat.RAW else "disk.raw")
        with open(raw, "w+b") as f:
            virtual, layout = write_raw(f, entries, disk)
        if disk_format is not DiskFormat.RAW:
            formats.convert(raw, tmp / output.name, disk_format)
            raw.unlink()
    LOG.debug("composed %s (%s, %d bytes)", output, disk_format.label, virtual)
    return ComposeResult(
        path=output, disk_format=disk_format.label, virtual_size=virtual,
        partition_start=loader.partition_start if loader else KERNEL_LESS_START,
        partition_size=layout.size, cmdline=disk.cmdline,
        loader=str(loader.source) if loader else "none (kernel-less)", files=layout.files,
        directories=layout.directories, symlinks=layout.symlinks,
        file_bytes=layout.file_bytes,
    )


@contextlib.contextmanager
def publishing(output: Path) -> Iterator[Path]:
    """A scratch directory beside *output*; its files replace theirs on success.

    Files are renamed data extents first (``-flat.vmdk``), descriptors last, so
    a reader never sees a descriptor without its data. On error nothing is kept;
    the scratch of a killed process is swept by the next compose in that directory.
    """
    parent = output.parent
    if not parent.is_dir():
        raise NotFound(f"output directory does not exist: {parent}")
    sweep(parent)
    tmp = temp_dir(output)
    try:
        yield tmp
        for item in sorted(tmp.iterdir(), key=lambda p: not p.name.endswith("-flat.vmdk")):
            os.replace(item, parent / item.name)
    except OSError as err:
        raise LocalIOError(f"cannot write {output}: {err.strerror}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
