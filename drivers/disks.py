"""The disk service a driver is handed (:class:`DiskPreparer`) and its value types:
drivers never read, convert or write image files themselves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from capstan.drivers.model import InstanceSpec, Volume

__all__ = ["MAX_BACKING", "OVERLAY", "UPLOAD", "DiskDelta", "DiskFacts", "DiskForm", "DiskInfo",
           "DiskPreparer", "PreparedDisk"]


@dataclass(frozen=True)
class DiskForm:
    """The disk a driver boots: *format* with qemu-img ``-o`` *options*. A qcow2 disk
    that is not *standalone* is an overlay on the image; with *reuse_image* the image
    itself serves when there is no command line to write (an upload of its bytes).
    An overlay with *backing* names that absolute path (a qcow2 copy of the image on
    the host that runs the disk) as its backing file instead of the image."""

    format: str = "qcow2"
    options: tuple[str, ...] = ()
    standalone: bool = False
    reuse_image: bool = False
    backing: str | None = None


#: the longest backing file name a qcow2 header holds (:attr:`DiskForm.backing`)
MAX_BACKING = 1023

#: a qcow2 overlay on the image, the run's command line written into it
OVERLAY = DiskForm()
#: what a cloud uploads: the image itself, or an overlay holding the run's command line
UPLOAD = DiskForm(reuse_image=True)


@dataclass(frozen=True)
class PreparedDisk:
    """What :meth:`DiskPreparer.prepare` made: the disk, and the image's SHA-256."""

    path: Path
    digest: str


@dataclass(frozen=True)
class DiskFacts:
    """An image file's format and SHA-256 (cached by the service)."""

    format: str
    sha256: str


@dataclass(frozen=True)
class DiskDelta:
    """A run's disk as its image plus the blocks its command line changes: *image* (SHA-256
    *digest*) as it is, and (index, new content) of each block that writing the run's
    command line changes (none: the image itself is the run's disk)."""

    image: Path
    digest: str
    blocks: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class DiskInfo:
    """What ``qemu-img info`` says of a disk."""

    format: str
    virtual_size: int
    backing_file: str | None


class DiskPreparer(Protocol):
    """The disk service a driver is handed: it turns images into the disks drivers
    boot or upload. Drivers never read, convert or write image files themselves."""

    def prepare(self, spec: InstanceSpec, disk: Path, form: DiskForm = OVERLAY,
                ) -> PreparedDisk:
        """*spec*'s image as *disk* in *form*, with *spec*'s command line written in."""

    def delta(self, spec: InstanceSpec, block: int) -> DiskDelta:
        """*spec*'s image, its command line not written, and the *block*-byte blocks of
        its virtual disk that writing the command line changes."""

    def facts(self, image: Path) -> DiskFacts:
        """The format and SHA-256 of *image*."""

    def info(self, image: Path) -> DiskInfo:
        """``qemu-img info`` of *image*."""

    def export(self, image: Path, target: Path, kind: str) -> None:
        """*image* written to *target* as *kind* (``gce``: the tarball GCE imports)."""

    def attachable(self, volume: Volume) -> Volume:
        """*volume* probed: a standalone image of the format it names (ImageError else)."""
