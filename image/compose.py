"""Composing an OSv disk on the host: loader + command line + ROFS partition."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from capstan.core.errors import InputError, LocalIOError, NotFound
from capstan.core.fs import replace_file, sweep, temp_dir, write_error
from capstan.image import cmdline, formats, mbr, qcow2, recompose
from capstan.image.formats import DiskFormat
from capstan.image.loader import Loader
from capstan.image.rofs import Entry, Reuse, RofsLayout, RofsPlan

LOG = logging.getLogger(__name__)

__all__ = ["KERNEL_LESS_START", "ComposeResult", "DiskPlan", "DiskSpec", "compose", "plan_disk",
           "publishing", "write_disk", "write_qcow2", "write_raw"]

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


@dataclass(frozen=True)
class DiskPlan:
    """A disk laid out before it is written: the *spec*, the ROFS at byte *start*."""

    spec: DiskSpec
    start: int
    rofs: RofsPlan
    virtual: int

    def extents(self) -> list[tuple[int, int]]:
        """The (start, length) byte ranges that hold data; the rest of the disk is zero."""
        loader = self.spec.loader
        return [(0, loader.size if loader else KERNEL_LESS_START), (self.start, self.rofs.size)]


def plan_disk(entries: Sequence[Entry], disk: DiskSpec) -> DiskPlan:
    """Lay out the disk of *entries*; InputError when the *disk*'s size cannot hold it.

    With no loader the disk has OSv's kernel-less layout (osv-image-format.md,
    section 10): a sector holding only entry 2 and ``55 AA``, the filesystem
    from byte 512, and no command line (the VMM gives it). The size is aligned
    to the format's alignment.
    """
    loader, min_size = disk.loader, disk.size
    start = loader.partition_start if loader else KERNEL_LESS_START
    rofs = RofsPlan(entries)
    needed = mbr.align_up(start + rofs.size, disk.disk_format.alignment)
    if min_size and min_size < needed:
        raise InputError(
            f"size {min_size} bytes is too small for this content: "
            f"at least {needed} bytes ({-(-needed // (1024 * 1024))}M) are needed")
    virtual = mbr.align_up(max(needed, min_size), disk.disk_format.alignment)
    if virtual > qcow2.MAX_VIRTUAL_SIZE:
        raise InputError(f"a disk of {virtual} bytes is larger than QEMU opens "
                         f"({qcow2.MAX_VIRTUAL_SIZE >> 40}T)")
    return DiskPlan(disk, start, rofs, virtual)


def write_disk(out: BinaryIO, plan: DiskPlan, host: Callable[[int], int],
               reuse: Reuse | None = None) -> RofsLayout:
    """Write the bytes of *plan* into *out*, disk byte v at file offset ``host(v)``; with
    *reuse*, files *out* already holds are left (see :meth:`RofsPlan.write`)."""
    loader = plan.spec.loader
    sector0 = bytearray(loader.data[:512] if loader else bytes(510) + b"\x55\xaa")
    mbr.set_partition(sector0, 2, plan.start, plan.rofs.size)
    out.seek(host(0))
    if loader is None:
        out.write(sector0)
    else:
        out.write(bytes(sector0) + cmdline.area_bytes(plan.spec.cmdline))
        out.write(loader.data[32768:])
    return plan.rofs.write(out, host(plan.start), reuse)


def write_raw(out: BinaryIO, entries: Sequence[Entry], disk: DiskSpec) -> tuple[int, RofsLayout]:
    """Write the raw (sparse) disk into *out*; return its virtual size and the ROFS layout."""
    plan = plan_disk(entries, disk)
    layout = write_disk(out, plan, lambda virtual: virtual)
    out.truncate(plan.virtual)
    return plan.virtual, layout


def write_qcow2(out: BinaryIO, entries: Sequence[Entry],
                disk: DiskSpec) -> tuple[int, RofsLayout]:
    """Write the disk as qcow2 into *out*, directly; return its virtual size and layout."""
    plan = plan_disk(entries, disk)
    layout = qcow2.plan(plan.virtual, plan.extents())
    qcow2.write_metadata(out.fileno(), layout)
    return plan.virtual, write_disk(out, plan, layout.host)


def _write_plan(out: BinaryIO, plan: DiskPlan, reuse: Reuse | None = None) -> RofsLayout:
    """Write *plan* into *out* as raw (sparse) or qcow2, as its spec says."""
    if plan.spec.disk_format is DiskFormat.QCOW2:
        layout = qcow2.plan(plan.virtual, plan.extents())
        qcow2.write_metadata(out.fileno(), layout)
        return write_disk(out, plan, layout.host, reuse)
    out.truncate(plan.virtual)
    return write_disk(out, plan, lambda virtual: virtual, reuse)


def _compose_cached(entries: Sequence[Entry], disk: DiskSpec, output: Path,
                    root: Path) -> tuple[int, RofsLayout]:
    """Compose *output* through its recompose state below *root* (see recompose.py)."""
    if not output.parent.is_dir():
        raise NotFound(f"output directory does not exist: {output.parent}")
    sweep(output.parent)
    plan = plan_disk(entries, disk)
    loader = plan.spec.loader
    key = [plan.spec.disk_format.label, plan.virtual, plan.start, plan.rofs.size,
           loader.size if loader else 0]
    with recompose.OutputCache(root, output, key) as state:
        try:
            with state.image(plan.rofs.pending) as (f, reuse):
                layout = _write_plan(f, plan, reuse)
        except OSError as err:
            raise write_error(output, err) from err
        state.publish(plan.rofs.pending)
    return plan.virtual, layout


def compose(entries: Sequence[Entry], disk: DiskSpec, output: Path,
            root: Path | None = None) -> ComposeResult:
    """Write an OSv image of *entries* to *output*, all or nothing; kernel-less
    (no command line) when the *disk* has no loader. With ``$CAPSTAN_ROOT`` *root*, raw
    and qcow2 are recomposed in place of the output's previous image (recompose.py)."""
    loader, disk_format = disk.loader, disk.disk_format
    if loader is None:
        disk = replace(disk, cmdline="")
    cmdline.validate(disk.cmdline)
    if root is not None and disk_format in (DiskFormat.RAW, DiskFormat.QCOW2):
        virtual, layout = _compose_cached(entries, disk, output, root)
        return _result(output, disk, virtual, layout)
    with publishing(output) as tmp:
        direct = disk_format in (DiskFormat.RAW, DiskFormat.QCOW2)
        raw = tmp / (output.name if direct else "disk.raw")
        with open(raw, "w+b") as f:
            write = write_qcow2 if disk_format is DiskFormat.QCOW2 else write_raw
            virtual, layout = write(f, entries, disk)
        if not direct:
            formats.convert(raw, tmp / output.name, disk_format)
            raw.unlink()
    return _result(output, disk, virtual, layout)


def _result(output: Path, disk: DiskSpec, virtual: int, layout: RofsLayout) -> ComposeResult:
    loader, disk_format = disk.loader, disk.disk_format
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
            replace_file(item, parent / item.name)
    except OSError as err:
        raise LocalIOError(f"cannot write {output}: {err.strerror}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
