"""Sector 0 of an OSv disk: MBR partition entries with OSv's CHS packing."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "PARTITION_ALIGN",
    "Partition",
    "align_up",
    "chs",
    "partition_entry",
    "read_partition",
    "set_partition",
]

PARTITION_ALIGN = 2 * 1024 * 1024
TABLE = 0x1BE
ENTRY = 16
SECTOR = 512
_MAX_CYLINDER = 1023  # the largest CHS cylinder
SYSTEM_ID = 0x83
_ENTRY = struct.Struct("<BBHBBHII")


@dataclass(frozen=True)
class Partition:
    """An MBR partition entry, in bytes."""

    index: int
    system_id: int
    start: int
    size: int


def align_up(value: int, alignment: int) -> int:
    """Round *value* up to a multiple of *alignment* (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


def chs(lba: int) -> tuple[int, int, int]:
    """CHS address of *lba* for 255 heads x 63 sectors, capped at (1023, 254, 63)."""
    cylinder, head, sector = (lba // 63) // 255, (lba // 63) % 255, lba % 63 + 1
    if cylinder > _MAX_CYLINDER:
        return _MAX_CYLINDER, 254, 63
    return cylinder, head, sector


def partition_entry(start: int, size: int, boot_flag: int = 0) -> bytes:
    """The 16 bytes OSv's ``imgedit.py setpartition`` writes for (start, size)."""
    if start % 512 or size % 512:
        raise ValueError("partition start and size must be multiples of 512")
    c0, h0, s0 = chs(start // 512)
    c1, h1, s1 = chs((start + size) // 512)
    return _ENTRY.pack(
        boot_flag, h0, (c0 << 6) | s0, SYSTEM_ID, h1, (c1 << 6) | s1,
        start // 512, size // 512,
    )


def set_partition(sector0: bytearray, index: int, start: int, size: int) -> None:
    """Write entry *index* (1-4) of the table in *sector0*, keeping its boot flag."""
    at = TABLE + (index - 1) * ENTRY
    sector0[at:at + ENTRY] = partition_entry(start, size, boot_flag=sector0[at])


def read_partition(sector0: bytes, index: int) -> Partition | None:
    """Entry *index* (1-4) as OSv sees it, or None when OSv would skip it."""
    at = TABLE + (index - 1) * ENTRY
    _, _, cs, system_id, _, _, lba, count = _ENTRY.unpack_from(sector0, at)
    if system_id == 0 or cs & 0x3F == 0:
        return None
    return Partition(index, system_id, lba * 512, count * 512)
