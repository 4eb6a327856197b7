"""Reading a composed OSv image on the host, in any qemu-img format."""

from __future__ import annotations

import hashlib
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from capstan.core.errors import ImageError
from capstan.core.fs import sweep, temp_dir
from capstan.image import cmdline, formats, mbr
from capstan.image.compose import KERNEL_LESS_START
from capstan.image.loader import KERNEL_OFFSET, read_head, sniff_format
from capstan.image.rofs import (
    BLOCK,
    DirEntry,
    Entry,
    FileEntry,
    SymlinkEntry,
)
from capstan.image.rofs_reader import RofsInode, RofsReader
from capstan.image.sources import Extent

__all__ = ["Change", "ImageSummary", "OsvImage", "TreeItem", "diff"]

_HEAD = 65536
_MAX_SYMLINKS = 16  # levels of symbolic links followed before giving up


@dataclass(frozen=True)
class ImageSummary:
    """What ``capstan image info`` reports."""

    path: str
    format: str
    layout: str
    virtual_size: int
    allocated_size: int
    cmdline: str
    count32: int
    loader_size: int
    partition_start: int
    partition_size: int
    filesystem: str
    files: int
    directories: int
    symlinks: int
    file_bytes: int


@dataclass(frozen=True)
class TreeItem:
    """One path of the image's ROFS."""

    path: str
    kind: str
    size: int
    target: str


def printable(name: str) -> str:
    """*name* (a guest path read from an image: any bytes) made safe to print: bytes that
    are not UTF-8 and control characters become backslash escapes."""
    raw = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw)


@dataclass(frozen=True)
class Change:
    """One difference between two images."""

    change: str
    path: str
    detail: str


class OsvImage:
    """An OSv image opened for reading; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp: Path | None = None
        self._files: list[BinaryIO] = []
        head = read_head(path, "image")
        sniffed = sniff_format(head)
        self.format = sniffed
        if sniffed != "raw":
            head = self._fetch(0, _HEAD).read(_HEAD)
        if len(head) < mbr.SECTOR or head[510:512] != b"\x55\xaa":
            raise ImageError(f"{path}: not an OSv image (no boot signature 55 AA)")
        self.sector0 = head[:512]
        self.partition = mbr.read_partition(self.sector0, 2)
        # kernel-less (osv-image-format.md, section 10): the filesystem starts at byte
        # 512, where a BIOS image has its command line; the VMM gives the command line
        self.kernel_less = self.partition is not None and \
            self.partition.start == KERNEL_LESS_START
        self.cmdline = "" if self.kernel_less else cmdline.read_area(
            head[cmdline.AREA_OFFSET:])
        (self.count32,) = struct.unpack_from("<H", head, 0x10)
        self._rofs: RofsReader | None = None
        self._part: tuple[BinaryIO, int, Path] | None = None

    def _fetch(self, start: int, length: int) -> BinaryIO:
        """A raw file holding *length* bytes of the image from *start*."""
        if self._tmp is None:  # owner-tokened: what a killed command left goes next time
            scratch = Path(tempfile.gettempdir())
            sweep(scratch)
            self._tmp = temp_dir(scratch / "capstan-inspect")
        target = self._tmp / f"range-{start}"
        formats.read_range(self.path, self.format, target, start, length)
        f = open(target, "rb")  # noqa: SIM115 - closed in close()
        self._files.append(f)
        return f

    def _partition_file(self) -> tuple[BinaryIO, int, int]:
        f, base, _ = self._partition()
        return f, base, self.partition.size if self.partition else 0

    def _partition(self) -> tuple[BinaryIO, int, Path]:
        """An open raw file holding partition 2, its offset there, and its size."""
        part = self.partition
        if part is None or part.size == 0:
            raise ImageError(f"{self.path}: no filesystem in partition 2")
        if self._part is None:
            if self.format == "raw":
                raw = open(self.path, "rb")  # noqa: SIM115 - closed in close()
                self._files.append(raw)
                self._part = (raw, part.start, self.path)
            else:
                f = self._fetch(part.start, part.size)
                self._part = (f, 0, Path(f.name))
        return self._part

    @property
    def rofs(self) -> RofsReader:
        """The ROFS of partition 2."""
        if self._rofs is None:
            self._rofs = RofsReader(*self._partition_file())
        return self._rofs

    def entries(self) -> list[Entry]:
        """The ROFS as image entries; files are extents of the partition (nothing copied)
        and stay readable while the image is open."""
        reader = self.rofs
        _, base, path = self._partition()
        size = self.partition.size if self.partition else 0
        out: list[Entry] = []
        for inode in reader.walk():
            if inode.path == "/":
                continue
            if inode.kind == "dir":
                out.append(DirEntry(inode.path))
            elif inode.kind == "symlink":
                out.append(SymlinkEntry(inode.path, reader.readlink(inode)))
            elif inode.kind == "file" and (inode.offset * BLOCK + inode.count) <= size:
                out.append(FileEntry(inode.path, inode.count, extent=Extent(
                    path, base + inode.offset * BLOCK, inode.count)))
            else:
                raise ImageError(f"{self.path}: {inode.path}: damaged ROFS inode")
        return out

    def partition_chunks(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Every byte of partition 2, in chunks."""
        f, base, size = self._partition_file()
        f.seek(base)
        while size > 0:
            data = f.read(min(chunk, size))
            if not data:
                raise ImageError(f"{self.path}: partition 2 lies outside the image")
            size -= len(data)
            yield data

    def items(self, top: str = "/") -> Iterator[TreeItem]:
        """Every path below *top* (included), depth-first."""
        reader = self.rofs
        start = reader.lookup(top)
        for inode in reader.walk():
            if inode.path == start.path or inode.path.startswith(start.path.rstrip("/") + "/"):
                yield self._item(inode)

    def _item(self, inode: RofsInode) -> TreeItem:
        path = printable(inode.path)
        if inode.kind == "symlink":
            return TreeItem(path, "symlink", 0, printable(self.rofs.readlink(inode)))
        size = inode.count if inode.kind == "file" else 0
        return TreeItem(path, inode.kind, size, "")

    def read(self, path: str) -> Iterator[bytes]:
        """The bytes of the file at guest *path*, in chunks (symlinks followed)."""
        inode = self._resolve(path)
        if inode.kind != "file":
            raise ImageError(f"{path} is a {inode.kind}, not a file")
        return self.rofs.iter_read(inode)

    def _resolve(self, path: str, depth: int = 0) -> RofsInode:
        inode = self.rofs.lookup(path)
        if inode.kind == "symlink":
            if depth > _MAX_SYMLINKS:
                raise ImageError(f"{path}: too many levels of symbolic links")
            target = self.rofs.readlink(inode)
            if not target.startswith("/"):
                target = path.rsplit("/", 1)[0] + "/" + target
            return self._resolve(_normalise(target), depth + 1)
        return inode

    def digest(self, path: str) -> str:
        """SHA-256 of the file at *path*."""
        h = hashlib.sha256()
        for chunk in self.rofs.iter_read(self.rofs.lookup(path)):
            h.update(chunk)
        return h.hexdigest()

    def summary(self) -> ImageSummary:
        """Format, sizes, command line, partition and ROFS counts."""
        probed = formats.info(self.path, "vpc" if self._is_fixed_vhd() else None)
        part = self.partition
        counts = {"file": 0, "dir": 0, "symlink": 0}
        file_bytes = 0
        fs = "none"
        if part is not None and part.size:
            fs = "rofs"
            try:
                for inode in self.rofs.walk():
                    counts[inode.kind] = counts.get(inode.kind, 0) + 1
                    file_bytes += inode.count if inode.kind == "file" else 0
            except ImageError:
                fs = "unknown (not ROFS)"
        return ImageSummary(
            path=str(self.path), format=probed.format,
            layout="kernel-less" if self.kernel_less else "bios",
            virtual_size=probed.virtual_size,
            allocated_size=probed.actual_size, cmdline=self.cmdline, count32=self.count32,
            loader_size=0 if self.kernel_less else KERNEL_OFFSET + self.count32 * 32768,
            partition_start=part.start if part else 0,
            partition_size=part.size if part else 0, filesystem=fs,
            files=counts["file"], directories=counts["dir"], symlinks=counts["symlink"],
            file_bytes=file_bytes,
        )

    def _is_fixed_vhd(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-512, 2)
            return f.read(8) == b"conectix"

    def close(self) -> None:
        """Release temporary copies."""
        for f in self._files:
            f.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> OsvImage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _normalise(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def diff(a: OsvImage, b: OsvImage) -> list[Change]:
    """Differences in command line, partition and files between two images."""
    changes: list[Change] = []
    if a.cmdline != b.cmdline:
        changes.append(Change("M", "(cmdline)", f"{a.cmdline!r} -> {b.cmdline!r}"))
    if a.partition != b.partition:
        changes.append(Change("M", "(partition 2)", f"{a.partition} -> {b.partition}"))
    left = {i.path: i for i in a.items()}
    right = {i.path: i for i in b.items()}
    for path in sorted(left.keys() | right.keys()):
        old, new = left.get(path), right.get(path)
        if new is None:
            changes.append(Change("-", path, old.kind if old else ""))
        elif old is None:
            changes.append(Change("+", path, new.kind))
        elif old.kind != new.kind or old.target != new.target:
            changes.append(Change("M", path, f"{old.kind} {old.target} -> {new.kind} {new.target}"))
        elif new.kind == "file" and (old.size != new.size or a.digest(path) != b.digest(path)):
            changes.append(Change("M", path, f"{old.size} -> {new.size} bytes"))
    return changes
