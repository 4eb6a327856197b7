"""qcow2 (version 3) written directly, without ``qemu-img``.

The caller names the byte ranges of the virtual disk that hold data (the loader, the
partition); every 64 KiB cluster touching one is allocated, the others read as zero and take
no space. Metadata comes first (header, L1 table, refcount table and blocks, L2 tables), then
the data clusters in virtual order, so each contiguous range of the disk is one contiguous
range of the file: the caller copies file data straight to it, with no scratch copy. The
layout depends only on the virtual size and the ranges, so the same input gives the same bytes.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["CLUSTER", "MAX_VIRTUAL_SIZE", "Qcow2Layout", "plan", "write_metadata"]

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
MAGIC = b"QFI\xfb"
VERSION = 3
REFCOUNT_ORDER = 4  # 16-bit refcounts, qemu-img's default
_ENTRY = 8  # bytes of an L1, L2 or refcount-table entry
_L2_ENTRIES = CLUSTER // _ENTRY
_REFS_PER_BLOCK = CLUSTER * 8 >> REFCOUNT_ORDER
_COPIED = 1 << 63  # refcount is exactly 1: written in place
_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")
_END_OF_EXTENSIONS = bytes(8)
#: QEMU opens no larger qcow2 of this cluster size (its L1 table is at most 32 MiB)
MAX_VIRTUAL_SIZE = (32 << 20) // _ENTRY * _L2_ENTRIES * CLUSTER


def _clusters(size: int) -> int:
    return -(-size // CLUSTER)


@dataclass(frozen=True)
class Qcow2Layout:
    """Where everything of one qcow2 file goes; offsets in clusters unless said otherwise."""

    virtual_size: int
    runs: tuple[tuple[int, int], ...]  # (first virtual cluster, count), in order, disjoint
    l1_entries: int
    l2_tables: tuple[int, ...]  # the L1 indices that have an L2 table, in order
    l1_at: int
    refcount_table_at: int
    refcount_table_clusters: int
    refcount_blocks: int
    data_at: int

    @property
    def total(self) -> int:
        """Clusters of the whole file."""
        return self.data_at + sum(count for _, count in self.runs)

    def host(self, virtual: int) -> int:
        """The file offset of byte *virtual* of the disk, which must lie in a run."""
        cluster = virtual // CLUSTER
        index = bisect.bisect_right([first for first, _ in self.runs], cluster) - 1
        first, count = self.runs[index] if index >= 0 else (0, 0)
        if not first <= cluster < first + count:
            raise ValueError(f"byte {virtual} of the disk is not allocated")
        before = sum(n for _, n in self.runs[:index])
        return (self.data_at + before + cluster - first) * CLUSTER + virtual % CLUSTER

    def mapping(self) -> Iterator[tuple[int, int]]:
        """(virtual cluster, host cluster) of every allocated cluster, in order."""
        host = self.data_at
        for first, count in self.runs:
            for cluster in range(first, first + count):
                yield cluster, host
                host += 1


def _runs(extents: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The cluster runs that cover the byte ranges *extents* ((start, length) pairs)."""
    spans = sorted((start // CLUSTER, _clusters(start + length))
                   for start, length in extents if length > 0)
    runs: list[list[int]] = []
    for first, end in spans:
        if runs and first <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([first, end])
    return tuple((first, end - first) for first, end in runs)


def plan(virtual_size: int, extents: Sequence[tuple[int, int]]) -> Qcow2Layout:
    """The layout of a disk of *virtual_size* bytes whose data lies in *extents*."""
    runs = _runs(extents)
    clusters = _clusters(virtual_size)
    if runs and runs[-1][0] + runs[-1][1] > clusters:
        raise ValueError("data lies beyond the virtual size")
    l1_entries = max(1, -(-clusters // _L2_ENTRIES))
    l2_tables = tuple(sorted({index for first, count in runs
                              for index in range(first // _L2_ENTRIES,
                                                 (first + count - 1) // _L2_ENTRIES + 1)}))
    l1_clusters = _clusters(l1_entries * _ENTRY)
    fixed = 1 + l1_clusters + len(l2_tables) + sum(count for _, count in runs)
    blocks = 1
    while True:
        table = _clusters(blocks * _ENTRY)
        need = -(-(fixed + table + blocks) // _REFS_PER_BLOCK)
        if need <= blocks:
            break
        blocks = need
    table_at = 1 + l1_clusters
    return Qcow2Layout(
        virtual_size=virtual_size, runs=runs, l1_entries=l1_entries, l2_tables=l2_tables,
        l1_at=1, refcount_table_at=table_at, refcount_table_clusters=table,
        refcount_blocks=blocks,
        data_at=table_at + table + blocks + len(l2_tables))


def _header(layout: Qcow2Layout) -> bytes:
    return _HEADER.pack(
        MAGIC, VERSION, 0, 0, CLUSTER_BITS, layout.virtual_size, 0, layout.l1_entries,
        layout.l1_at * CLUSTER, layout.refcount_table_at * CLUSTER,
        layout.refcount_table_clusters, 0, 0, 0, 0, 0, REFCOUNT_ORDER, _HEADER.size,
    ) + _END_OF_EXTENSIONS


def _tables(layout: Qcow2Layout) -> tuple[bytes, bytes]:
    """The L1 table and the L2 tables, each padded to whole clusters."""
    l2_first = layout.refcount_table_at + layout.refcount_table_clusters + layout.refcount_blocks
    l2_at = {index: l2_first + n for n, index in enumerate(layout.l2_tables)}
    l1 = bytearray(layout.l1_entries * _ENTRY)
    for index, cluster in l2_at.items():
        struct.pack_into(">Q", l1, index * _ENTRY, cluster * CLUSTER | _COPIED)
    l2 = bytearray(len(l2_at) * CLUSTER)
    for virtual, host in layout.mapping():
        table = l2_at[virtual // _L2_ENTRIES] - l2_first
        struct.pack_into(">Q", l2, table * CLUSTER + virtual % _L2_ENTRIES * _ENTRY,
                         host * CLUSTER | _COPIED)
    return bytes(l1), bytes(l2)


def _refcounts(layout: Qcow2Layout) -> tuple[bytes, bytes]:
    """The refcount table and blocks: every cluster of the file is used once."""
    blocks_at = layout.refcount_table_at + layout.refcount_table_clusters
    table = b"".join(struct.pack(">Q", (blocks_at + n) * CLUSTER)
                     for n in range(layout.refcount_blocks))
    ones = struct.pack(">H", 1) * layout.total
    blocks = ones + bytes(layout.refcount_blocks * CLUSTER - len(ones))
    return table, blocks


def write_metadata(fd: int, layout: Qcow2Layout) -> None:
    """Size the file *fd* and write everything but the data clusters (left as holes)."""
    os.ftruncate(fd, layout.total * CLUSTER)
    l1, l2 = _tables(layout)
    table, blocks = _refcounts(layout)
    l2_at = layout.refcount_table_at + layout.refcount_table_clusters + layout.refcount_blocks
    for cluster, data in ((0, _header(layout)), (layout.l1_at, l1),
                          (layout.refcount_table_at, table),
                          (layout.refcount_table_at + layout.refcount_table_clusters, blocks),
                          (l2_at, l2)):
        view = memoryview(data)
        offset = cluster * CLUSTER
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
