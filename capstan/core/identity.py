"""Knowing a file is unchanged without reading it: its identity.

A file's identity is ``(device, inode, size, mtime, ctime)``. Nothing can write a file
without changing its ctime, but timestamps are coarser than writes: a file written again
within the same tick keeps its identity. So an identity is trusted only once it is
*settled*, older than :data:`RACY_NS`; and only within one boot, since a crash can keep a
file's new timestamps without its new bytes (nothing here is synced).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RACY_NS", "boot_id", "identity", "settled"]

#: how old a file's timestamps must be for its identity to tell its bytes apart
RACY_NS = 2_000_000_000


def boot_id() -> str:
    """This boot's identity ("" where the kernel does not tell)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def identity(st: os.stat_result) -> list[int]:
    """``[device, inode, size, mtime_ns, ctime_ns]`` of the ``stat`` result *st*."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def settled(ident: Sequence[int], now: int | None = None) -> bool:
    """Whether the file of identity *ident* (see :func:`identity`) last changed at least
    :data:`RACY_NS` before *now* (nanoseconds; by default, now)."""
    now = time.time_ns() if now is None else now
    return now - max(ident[3], ident[4]) >= RACY_NS
