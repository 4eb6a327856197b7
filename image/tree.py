"""Turning a host file tree into an ordered, reproducible ROFS entry list."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from capstan.errors import InputError, LocalIOError, NotFound
from capstan.image.rofs import DirEntry, Entry, FileEntry, SymlinkEntry

__all__ = ["FSTAB_ROFS", "HOSTS", "base_entries", "collect", "with_base"]

FSTAB_ROFS = (
    b"/dev/vblk0.1 /          rofs      defaults 0 0\n"
    b"none         /dev       devfs     defaults 0 0\n"
    b"none         /proc      procfs    defaults 0 0\n"
    b"none         /sys       sysfs     defaults 0 0\n"
    b"none         /tmp       ramfs     defaults 0 0\n"
)
HOSTS = b"127.0.0.1 localhost osv.local\n"


def base_entries() -> list[Entry]:
    """The files an OSv ROFS root needs (osv-image-format.md, section 7)."""
    return [
        FileEntry("/etc/hosts", len(HOSTS), data=HOSTS),
        SymlinkEntry("/etc/mnttab", "/proc/mounts"),
        FileEntry("/etc/fstab", len(FSTAB_ROFS), data=FSTAB_ROFS),
        DirEntry("/dev"),
        DirEntry("/proc"),
        DirEntry("/sys"),
        DirEntry("/tmp"),
    ]


def with_base(entries: Sequence[Entry]) -> list[Entry]:
    """*entries* preceded by the base entries they do not provide themselves."""
    present = {e.path for e in entries}
    return [e for e in base_entries() if e.path not in present] + list(entries)


def collect(root: Path) -> list[Entry]:
    """Entries for the tree at *root* (mapped to ``/``) or a single file."""
    try:
        st = root.lstat()
    except FileNotFoundError as err:
        raise NotFound(f"no such file or directory: {root}") from err
    except OSError as err:
        raise LocalIOError(f"cannot read {root}: {err.strerror}") from err
    if stat.S_ISDIR(st.st_mode):
        return list(_walk(root, "/"))
    return [_entry(root, "/" + root.name, root.stat())]


def _walk(directory: Path, guest: str) -> Iterator[Entry]:
    try:
        names = sorted(os.listdir(directory), key=os.fsencode)
    except OSError as err:
        raise LocalIOError(f"cannot list {directory}: {err.strerror}") from err
    for name in names:
        host = directory / name
        path = guest + name
        st = host.lstat()
        if stat.S_ISDIR(st.st_mode):
            yield DirEntry(path)
            yield from _walk(host, path + "/")
        else:
            yield _entry(host, path, st)


def _entry(host: Path, path: str, st: os.stat_result) -> Entry:
    if stat.S_ISLNK(st.st_mode):
        return SymlinkEntry(path, os.readlink(host))
    if stat.S_ISREG(st.st_mode):
        if not os.access(host, os.R_OK):
            raise LocalIOError(f"cannot read {host}: permission denied")
        return FileEntry(path, st.st_size, source=host)
    kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR:
            "a character device", stat.S_IFBLK: "a block device"}.get(
                stat.S_IFMT(st.st_mode), "a special file")
    raise InputError(f"{host} is {kind}; ROFS stores only files, directories and symlinks")
