"""ROFS, OSv's read-only root filesystem: writer and reader.

The writer is byte-identical to OSv's ``scripts/gen-rofs-img.py`` for the same
ordered entry list (osv-image-format.md, section 6), except that names and
symlink targets are always measured in bytes, so non-ASCII names work.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from capstan.core.errors import Conflict, ImageError, InputError, LocalIOError, NotFound
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
    "MAGIC",
    "DirEntry",
    "Entry",
    "FileEntry",
    "RofsInode",
    "RofsLayout",
    "RofsPlan",
    "RofsReader",
    "SymlinkEntry",
    "write_rofs",
]

BLOCK = 512
MAGIC = 0xDEADBEAD
VERSION = 1
MODE_DIR = 0x4000
MODE_FILE = 0x8000
MODE_LINK = 0xA000
_SECTOR = 512  # the unit of st_blocks
_SUPERBLOCK = struct.Struct("<8Q")
_INODE = struct.Struct("<4Q")
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


def _components(path: str) -> list[bytes]:
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
        names = _components(entry.path)
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
        inode_table = b"".join(_INODE.pack(mode, number, offset, count) for number, (
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
        superblock = _SUPERBLOCK.pack(
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


@dataclass(frozen=True)
class RofsInode:
    """One inode of a ROFS image, with its guest path."""

    path: str
    number: int
    mode: int
    offset: int
    count: int

    @property
    def kind(self) -> str:
        """``dir``, ``file``, ``symlink`` or ``unknown``."""
        return {MODE_DIR: "dir", MODE_FILE: "file", MODE_LINK: "symlink"}.get(
            self.mode, "unknown"
        )


class RofsReader:
    """Read a ROFS image from *f*, which holds the partition from byte *base*."""

    def __init__(self, f: BinaryIO, base: int = 0, size: int | None = None) -> None:
        self.f = f
        self.base = base
        f.seek(base)
        head = f.read(_SUPERBLOCK.size)
        if len(head) < _SUPERBLOCK.size:
            raise ImageError("partition 2 is too small to hold a ROFS superblock")
        (magic, version, block, first, count, n_entries, n_links,
         n_inodes) = _SUPERBLOCK.unpack(head)
        if magic != MAGIC:
            raise ImageError("partition 2 does not hold a ROFS filesystem (bad magic)")
        if version != VERSION or block != BLOCK:
            raise ImageError(f"unsupported ROFS version {version} / block size {block}")
        held = f.seek(0, os.SEEK_END) - base  # never trust a size the image claims
        size = held if size is None else min(size, held)
        if (first + count) * BLOCK > size:
            raise ImageError("ROFS tables lie outside partition 2")
        self.size = size
        f.seek(base + first * BLOCK)
        tables = f.read(count * BLOCK)
        self._parse(tables, n_entries, n_links, n_inodes)

    def _parse(self, tables: bytes, n_entries: int, n_links: int, n_inodes: int) -> None:
        pos = 0
        self.dirents: list[tuple[int, bytes]] = []
        self.links: list[bytes] = []
        try:
            for _ in range(n_entries):
                ino, length = struct.unpack_from("<QH", tables, pos)
                pos += 10
                self.dirents.append((ino, tables[pos:pos + length]))
                pos += length
            for _ in range(n_links):
                (length,) = struct.unpack_from("<H", tables, pos)
                self.links.append(tables[pos + 2:pos + 2 + length])
                pos += 2 + length
            self.raw_inodes = [_INODE.unpack_from(tables, pos + i * _INODE.size)
                               for i in range(n_inodes)]
        except struct.error as err:
            raise ImageError("ROFS tables are truncated") from err

    def walk(self) -> Iterator[RofsInode]:
        """Yield every inode depth-first, the root (``/``) first; each directory once."""
        stack = [("/", 1)]
        seen: set[int] = set()
        while stack:
            path, number = stack.pop()
            inode = self.inode(path, number)
            yield inode
            if inode.kind == "dir" and number not in seen:
                seen.add(number)
                children = self.dirents[inode.offset:inode.offset + inode.count]
                for ino, name in reversed(children):
                    child = name.decode("utf-8", "surrogateescape")
                    stack.append((path.rstrip("/") + "/" + child, ino))

    def inode(self, path: str, number: int) -> RofsInode:
        """Return inode *number*, labelled with *path*."""
        if not 1 <= number <= len(self.raw_inodes):
            raise ImageError(f"ROFS inode {number} out of range")
        mode, _, offset, count = self.raw_inodes[number - 1]
        return RofsInode(path, number, mode & 0xF000, offset, count)

    def lookup(self, path: str) -> RofsInode:
        """Return the inode at guest *path* (symlinks are not followed)."""
        inode = self.inode("/", 1)
        for part in _components(path):
            if inode.kind != "dir":
                raise ImageError(f"{inode.path} is not a directory")
            for ino, name in self.dirents[inode.offset:inode.offset + inode.count]:
                if name == part:
                    sub = inode.path.rstrip("/") + "/" + part.decode("utf-8", "surrogateescape")
                    inode = self.inode(sub, ino)
                    break
            else:
                raise NotFound(f"no such file in image: {path}")
        return inode

    def readlink(self, inode: RofsInode) -> str:
        """Return the target of symlink *inode*."""
        if not 0 <= inode.offset < len(self.links):
            raise ImageError(f"{inode.path}: symlink {inode.offset} out of range")
        return self.links[inode.offset].decode("utf-8", "surrogateescape")

    def read(self, inode: RofsInode) -> bytes:
        """Return the content of file *inode*."""
        if inode.offset * BLOCK + inode.count > self.size:
            raise ImageError(f"{inode.path}: file data lies outside the image")
        self.f.seek(self.base + inode.offset * BLOCK)
        data = self.f.read(inode.count)
        if len(data) != inode.count:
            raise ImageError(f"{inode.path}: file data lies outside the image")
        return data

    def iter_read(self, inode: RofsInode, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Yield the content of file *inode* in chunks."""
        if inode.offset * BLOCK + inode.count > self.size:
            raise ImageError(f"{inode.path}: file data lies outside the image")
        self.f.seek(self.base + inode.offset * BLOCK)
        left = inode.count
        while left:
            data = self.f.read(min(chunk, left))
            if not data:
                raise ImageError(f"{inode.path}: file data lies outside the image")
            left -= len(data)
            yield data
