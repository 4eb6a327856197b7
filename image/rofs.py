"""ROFS, OSv's read-only root filesystem: the writer (the reader is rofs_reader.py).

The writer is byte-identical to OSv's ``scripts/gen-rofs-img.py`` for the same
ordered entry list (osv-image-format.md, section 6), except that names and
symlink targets are always measured in bytes, so non-ASCII names work.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from capstan.core.errors import Conflict, InputError, LocalIOError
from capstan.image.sources import (
    Contents,
    Extent,
    HostFiles,
    Span,
    data_spans,
    preallocate,
    zero_range,
)

__all__ = [
    "BLOCK",
    "INODE",
    "MAGIC",
    "SUPERBLOCK",
    "DirEntry",
    "Entry",
    "FileEntry",
    "RofsLayout",
    "RofsPlan",
    "SymlinkEntry",
    "components",
    "write_rofs",
]

BLOCK = 512
MAGIC = 0xDEADBEAD
VERSION = 1
MODE_DIR = 0x4000
MODE_FILE = 0x8000
MODE_LINK = 0xA000
_SECTOR = 512  # the unit of st_blocks
SUPERBLOCK = struct.Struct("<8Q")
INODE = struct.Struct("<4Q")
_MAX_NAME = 0xFFFF


@dataclass(frozen=True)
class FileEntry:
    """A regular file at guest *path*, with its bytes in host file *source*, in *data* or
    in *extent*; *mode* (permission bits) when not the source's."""

    path: str
    size: int
    source: Path | None = None
    data: bytes | None = None
    extent: Extent | None = None
    mode: int | None = None


@dataclass(frozen=True)
class SymlinkEntry:
    """A symbolic link at guest *path* pointing to *target*."""

    path: str
    target: str


@dataclass(frozen=True)
class DirEntry:
    """An (empty unless other entries fill it) directory at guest *path*."""

    path: str


Entry = FileEntry | SymlinkEntry | DirEntry
Reuse = Callable[[int, FileEntry], bool]


@dataclass
class _Dir:
    children: dict[bytes, _Dir | FileEntry | SymlinkEntry] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class RofsLayout:
    """Numbers describing a written ROFS image."""

    size: int
    data_blocks: int
    inodes: int
    files: int
    directories: int
    symlinks: int
    file_bytes: int


def components(path: str) -> list[bytes]:
    """The checked names of absolute guest *path*, as bytes; InputError for an invalid one."""
    if not path.startswith("/"):
        raise InputError(f"guest path must be absolute: {path!r}")
    parts = [p for p in path.split("/") if p]
    out = []
    for part in parts:
        raw = part.encode("utf-8", "surrogateescape")
        if part in (".", "..") or b"\0" in raw or len(raw) > _MAX_NAME:
            raise InputError(f"invalid name {part!r} in guest path {path!r}")
        out.append(raw)
    return out


def _build_tree(entries: Sequence[Entry]) -> _Dir:
    root = _Dir()
    for entry in entries:
        names = components(entry.path)
        if not names and not isinstance(entry, DirEntry):
            raise InputError(f"the root cannot be a file or link: {entry.path!r}")
        parents = names if isinstance(entry, DirEntry) else names[:-1]
        node = root
        for depth, name in enumerate(parents):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Dir()
            elif not isinstance(child, _Dir):
                here = "/" + b"/".join(names[: depth + 1]).decode(errors="replace")
                raise Conflict(f"path conflict: {entry.path} needs directory {here}, "
                               "which is a file or link")
            node = child
        if isinstance(entry, DirEntry):
            continue
        if isinstance(node.children.get(names[-1]), _Dir):
            raise Conflict(f"path conflict: {entry.path} is a directory and a file or link")
        node.children[names[-1]] = entry
    return root


class RofsPlan:
    """A ROFS laid out for an entry list: its size is known before a byte is written."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.block = 1
        self.entries = bytearray()
        self.entry_count = 0
        self.links = bytearray()
        self.link_count = 0
        self.inodes: list[tuple[int, int, int]] = []
        self.files = self.dirs = self.file_bytes = 0
        self.pending: list[tuple[int, FileEntry]] = []  # (offset in the partition, file)
        self.inodes.append((MODE_DIR, 0, 0))
        self.inodes[0] = (MODE_DIR, *self.visit(_build_tree(entries)))
        inode_table = b"".join(INODE.pack(mode, number, offset, count) for number, (
            mode, offset, count) in enumerate(self.inodes, start=1))
        self.tables = bytes(self.entries) + bytes(self.links) + inode_table
        self.size = self.block * BLOCK + len(self.tables) + BLOCK - len(self.tables) % BLOCK

    def visit(self, directory: _Dir) -> tuple[int, int]:
        self.dirs += 1
        numbered = []
        for name, child in directory.children.items():
            self.inodes.append((0, 0, 0))
            ino = len(self.inodes)
            numbered.append((name, ino))
            if isinstance(child, _Dir):
                first, count = self.visit(child)
                self.inodes[ino - 1] = (MODE_DIR, first, count)
            elif isinstance(child, SymlinkEntry):
                target = child.target.encode("utf-8", "surrogateescape")
                if not target or len(target) > _MAX_NAME or b"\0" in target:
                    raise InputError(f"invalid symlink target for {child.path}")
                self.inodes[ino - 1] = (MODE_LINK, self.link_count, 1)
                self.links += struct.pack("<H", len(target)) + target
                self.link_count += 1
            else:
                self.inodes[ino - 1] = (MODE_FILE, self.block, child.size)
                self._write_file(child)
        first = self.entry_count
        for name, ino in numbered:
            self.entries += struct.pack("<QH", ino, len(name)) + name
        self.entry_count += len(numbered)
        return first, len(numbered)

    def _write_file(self, entry: FileEntry) -> None:
        """Place *entry* at the next block; its bytes are written by :meth:`contents`."""
        self.pending.append((self.block * BLOCK, entry))
        self.files += 1
        self.file_bytes += entry.size
        self.block += -(-entry.size // BLOCK)

    def write(self, out: BinaryIO, base: int, reuse: Reuse | None = None) -> RofsLayout:
        """Write the filesystem into *out* at byte *base*: tables, then every file's bytes
        (archive members in archive order, one pass each). With *reuse*, *out* holds an
        earlier image: a file at a partition offset for which ``reuse(offset, entry)`` says
        so is left as it is, the others are written with their padding zeroed."""
        self._write_tables(out, base)

        def order(item: tuple[int, FileEntry]) -> tuple[str, int]:
            extent = item[1].extent
            return (str(extent.path), extent.offset) if extent else ("", item[0])

        copies: list[tuple[int, FileEntry]] = []  # host bytes: copied last, in source order
        with Contents() as reader:
            for offset, entry in sorted(self.pending, key=order):
                if reuse is not None and reuse(offset, entry):
                    continue
                if reuse is not None and entry.size % BLOCK:
                    out.seek(base + offset + entry.size)
                    out.write(bytes(-entry.size % BLOCK))
                if _streamed(entry):
                    _copy_streamed(entry, out, base + offset, reader)
                else:
                    copies.append((base + offset, entry))
        out.flush()
        if reuse is None and copies:  # a new file: its space allocated at once
            first = min(offset for offset, _ in copies)
            preallocate(out.fileno(), first,
                        max(offset + entry.size for offset, entry in copies) - first)
        with HostFiles([_source(entry) for _, entry in copies]) as files:
            for offset, entry in copies:
                _copy_host(entry, out.fileno(), offset, files)
        return RofsLayout(
            size=self.size, data_blocks=self.block - 1, inodes=len(self.inodes),
            files=self.files, directories=self.dirs, symlinks=self.link_count,
            file_bytes=self.file_bytes,
        )

    def _write_tables(self, out: BinaryIO, base: int) -> None:
        padding = BLOCK - len(self.tables) % BLOCK  # a whole block when exact: OSv's quirk
        out.seek(base + self.block * BLOCK)
        out.write(self.tables + bytes(padding))
        superblock = SUPERBLOCK.pack(
            MAGIC, VERSION, BLOCK, self.block, -(-len(self.tables) // BLOCK),
            self.entry_count, self.link_count, len(self.inodes),
        )
        out.seek(base)
        out.write(superblock + bytes(BLOCK - len(superblock)))


def _streamed(entry: FileEntry) -> bool:
    """Whether *entry*'s bytes are read through a decompressor (in archive order)."""
    return entry.source is None and (entry.extent is None or entry.extent.gzip)


def _copy_streamed(entry: FileEntry, out: BinaryIO, offset: int, reader: Contents) -> None:
    """Write the bytes of *entry* (in memory, or read through *reader*) at *offset*; a read
    error names the source, a write error (an OSError) is left to the caller."""
    out.seek(offset)
    for chunk in reader.chunks(entry):
        out.write(chunk)


def _source(entry: FileEntry) -> tuple[Path, int, int]:
    """The host file holding *entry*'s bytes (its own, or a plain archive), their start in
    it, and their size."""
    if entry.source is not None:
        return entry.source, 0, entry.size
    assert entry.extent is not None
    return entry.extent.path, entry.extent.offset, entry.size


def _copy_host(entry: FileEntry, out: int, offset: int, files: HostFiles) -> None:
    """Copy *entry*'s bytes from its host file, the next of *files*, into file *out* at
    *offset*; a read error names the source, a write error (an OSError) is left to the
    caller, which names the output. Only the data of a file with holes is copied; its range
    in *out* is made a hole first."""
    path, start, size = _source(entry)
    src, st = files.take()
    try:
        dense = st.st_blocks * _SECTOR >= st.st_size  # no hole: no need to look for one
        spans = iter([(start, size)]) if dense else data_spans(src, start, size)
        first = next(spans, None)  # None: all of it is a hole
        if first != (start, size):
            zero_range(out, offset, size)
        for at, length in itertools.chain((first,) if first else (), spans):
            if files.copy(src, out, offset + at - start, Span(path, at, length)) != length:
                raise LocalIOError(f"{path}: file changed while composing")
        held = os.fstat(src).st_size
    finally:
        os.close(src)
    if held < start + size or (entry.source is not None and held != size):
        raise LocalIOError(f"{path}: file changed while composing")


def write_rofs(entries: Sequence[Entry], out: BinaryIO, base: int = 0) -> RofsLayout:
    """Write a ROFS for *entries* (in order) into *out* at byte *base*."""
    return RofsPlan(entries).write(out, base)
