"""Reading a ROFS image (OSv's read-only root filesystem), never trusting what it claims."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from capstan.core.errors import ImageError, NotFound
from capstan.image.rofs import (
    BLOCK,
    INODE,
    MAGIC,
    MODE_DIR,
    MODE_FILE,
    MODE_LINK,
    SUPERBLOCK,
    VERSION,
    components,
)

__all__ = ["RofsInode", "RofsReader"]


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
        head = f.read(SUPERBLOCK.size)
        if len(head) < SUPERBLOCK.size:
            raise ImageError("partition 2 is too small to hold a ROFS superblock")
        (magic, version, block, first, count, n_entries, n_links,
         n_inodes) = SUPERBLOCK.unpack(head)
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
            self.raw_inodes = [INODE.unpack_from(tables, pos + i * INODE.size)
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
        for part in components(path):
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
