"""The "newc" cpio stream OSv's cpiod receives (reference 11.4), in sorted order."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence

from capstan.image.rofs import DirEntry, Entry, FileEntry, SymlinkEntry
from capstan.image.sources import Contents

__all__ = ["TRAILER", "mode_of", "newc_stream"]

TRAILER = "TRAILER!!!"


def _header(name: str, mode: int, size: int) -> bytes:
    encoded = name.encode("utf-8", "surrogateescape") + b"\0"
    fields = (0, mode, 0, 0, 0, 0, size, 0, 0, 0, 0, len(encoded), 0)
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + encoded
    return head + bytes(-len(head) % 4)


def mode_of(entry: FileEntry) -> int:
    """The permission bits *entry* is uploaded with: its own, its source file's, else 0644."""
    if entry.mode is not None:
        return entry.mode & 0o777
    if entry.source is not None:
        return stat.S_IMODE(os.stat(entry.source).st_mode)
    return 0o644


def newc_stream(entries: Sequence[Entry]) -> Iterator[bytes]:
    """The cpio bytes of *entries* (sorted by path), file contents streamed."""
    with Contents() as reader:
        yield from _stream(entries, reader)
    yield _header(TRAILER, 0, 0)


def _stream(entries: Sequence[Entry], reader: Contents) -> Iterator[bytes]:
    for entry in sorted(entries, key=lambda e: e.path):
        if isinstance(entry, DirEntry):
            yield _header(entry.path, stat.S_IFDIR | 0o755, 0)
        elif isinstance(entry, SymlinkEntry):
            target = entry.target.encode("utf-8", "surrogateescape")
            yield _header(entry.path, stat.S_IFLNK | 0o777, len(target))
            yield target + bytes(-len(target) % 4)
        else:
            yield _header(entry.path, stat.S_IFREG | mode_of(entry), entry.size)
            yield from reader.chunks(entry)
            yield bytes(-entry.size % 4)
