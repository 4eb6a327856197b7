"""The in-memory tree an image is composed from, and host trees turned into it.

A :class:`Tree` maps normalised guest paths to entries (a host file, bytes, an archive
extent, a symlink target, a directory). Guest paths are normalised in one place
(:func:`guest_path`); a symlink is always a leaf, so nothing is ever resolved through a
link that came from a package or an application tree. :func:`materialise` writes a tree
below a new host directory through directory file descriptors (``O_NOFOLLOW``, ``O_EXCL``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from capstan.core.errors import Conflict, InputError, LocalIOError, NotFound
from capstan.image.rofs import DirEntry, Entry, FileEntry, SymlinkEntry
from capstan.image.sources import Contents, special_kind

__all__ = ["FSTAB_ROFS", "HOSTS", "Tree", "base_entries", "collect", "guest_path", "host_entry",
           "materialise", "with_base"]

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


def guest_path(path: str, where: str = "") -> str:
    """*path* checked as a guest path: absolute, no ``.``, ``..`` or empty segment, no NUL.

    The one place guest paths are normalised; *where* prefixes the error message.
    """
    prefix = f"{where}: " if where else ""
    if not path.startswith("/"):
        raise InputError(f"{prefix}guest path {path!r} must be absolute")
    if path == "/":
        return path
    for part in path[1:].split("/"):
        if part in ("", ".", "..") or "\0" in part:
            raise InputError(f"{prefix}invalid guest path {path!r}: "
                             "'..', '.' and empty segments are not allowed")
    return path


def _key(entry: Entry) -> tuple[bytes, ...]:
    return tuple(os.fsencode(p) for p in entry.path.split("/")[1:])


def _kind(entry: Entry) -> str:
    return {DirEntry: "directory", SymlinkEntry: "symlink"}.get(type(entry), "file")


class Tree:
    """Guest path -> entry; every parent of an entry is a directory (links are leaves)."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._owner: dict[str, str] = {}
        self.collisions: list[tuple[str, str, str]] = []  # path, earlier owner, later owner

    def add(self, entry: Entry, owner: str = "") -> None:
        """Add *entry* (from *owner*); a later file or link replaces an earlier one."""
        path = guest_path(entry.path, owner)
        if path == "/":
            return
        parts = path.split("/")
        for depth in range(2, len(parts)):
            parent = "/".join(parts[:depth])
            above = self._entries.setdefault(parent, DirEntry(parent))
            self._owner.setdefault(parent, owner)
            if not isinstance(above, DirEntry):
                raise Conflict(f"{owner or 'the tree'} puts {path} below {parent}, "
                               f"which is a {_kind(above)}")
        have = self._entries.get(path)
        if have is not None and isinstance(have, DirEntry) != isinstance(entry, DirEntry):
            raise Conflict(f"{owner or 'the tree'} puts a {_kind(entry)} at {path}, where "
                           f"{self._owner.get(path) or 'another source'} has a {_kind(have)}")
        if isinstance(entry, DirEntry):
            if have is None:
                self._entries[path] = entry
                self._owner[path] = owner
            return
        if have is not None and self._owner.get(path, owner) != owner:
            self.collisions.append((path, self._owner[path], owner))
        self._entries[path] = entry
        self._owner[path] = owner

    def __contains__(self, path: str) -> bool:
        return path in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """Every entry, depth-first in byte order of the names (parents first)."""
        return sorted(self._entries.values(), key=_key)


def collect(root: Path, guest: str = "/") -> list[Entry]:
    """Entries for the tree at *root* (mapped to *guest*) or a single file.

    Found with ``lstat``: symlinks are kept as links, special files refused at once.
    """
    try:
        st = root.lstat()
    except FileNotFoundError as err:
        raise NotFound(f"no such file or directory: {root}") from err
    except OSError as err:
        raise LocalIOError(f"cannot read {root}: {err.strerror}") from err
    if stat.S_ISDIR(st.st_mode):
        top = [] if guest == "/" else [DirEntry(guest)]
        return top + list(_walk(root, guest.rstrip("/") + "/"))
    if guest == "/":
        return [host_entry(root, "/" + root.name, root.stat())]
    return [host_entry(root, guest, st)]


def _walk(directory: Path, guest: str) -> Iterator[Entry]:
    try:
        names = sorted(os.listdir(directory), key=os.fsencode)
    except OSError as err:
        raise LocalIOError(f"cannot list {directory}: {err.strerror}") from err
    for name in names:
        host = directory / name
        path = guest + name
        try:
            st = host.lstat()
        except OSError as err:
            raise LocalIOError(f"cannot read {host}: {err.strerror}") from err
        if stat.S_ISDIR(st.st_mode):
            yield DirEntry(path)
            yield from _walk(host, path + "/")
        else:
            yield host_entry(host, path, st)


def host_entry(host: Path, path: str, st: os.stat_result) -> Entry:
    """The entry for *host* at guest *path*, from its lstat *st*; special files refused."""
    if stat.S_ISLNK(st.st_mode):
        return SymlinkEntry(path, os.readlink(host))
    if stat.S_ISREG(st.st_mode):
        if not os.access(host, os.R_OK):
            raise LocalIOError(f"cannot read {host}: permission denied")
        return FileEntry(path, st.st_size, source=host, mode=stat.S_IMODE(st.st_mode))
    raise InputError(f"{host} is {special_kind(st.st_mode)}; only files, directories and "
                     "symlinks are allowed")


# -- writing a tree on the host --------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def materialise(entries: Sequence[Entry], target: Path) -> None:
    """Write *entries* below the new, empty directory *target* (made 0755), each relative
    to its parent's directory descriptor: no path component is ever followed through a
    symlink and no existing file is ever opened, so a link made by one entry cannot
    redirect another."""
    try:
        root = os.open(target, _DIR_FLAGS)
        os.fchmod(root, 0o755)
    except OSError as err:
        raise LocalIOError(f"cannot write {target}: {err.strerror}") from err
    try:
        ordered = sorted(entries, key=lambda e: (
            not isinstance(e, DirEntry), isinstance(e, FileEntry), _key(e)))
        files = [e for e in ordered if isinstance(e, FileEntry)]
        files.sort(key=lambda e: (str(e.extent.path), e.extent.offset) if e.extent else ("", 0))
        with Contents() as reader:
            for entry in [e for e in ordered if not isinstance(e, FileEntry)] + files:
                _create(root, entry, reader, target)
    finally:
        os.close(root)


def _create(root: int, entry: Entry, reader: Contents, target: Path) -> None:
    parts = guest_path(entry.path).split("/")[1:]
    if not parts[0]:
        return
    where = target / entry.path.lstrip("/")
    try:
        parent = _open_dir(root, parts[:-1])
    except OSError as err:
        raise LocalIOError(f"cannot open {where.parent}: {err.strerror}") from err
    try:
        if isinstance(entry, DirEntry):
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
        elif isinstance(entry, SymlinkEntry):
            os.symlink(entry.target, parts[-1], dir_fd=parent)
        else:
            mode = 0o644 if entry.mode is None else entry.mode
            fd = os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=parent)
            with os.fdopen(fd, "wb") as out:
                for chunk in reader.chunks(entry):
                    out.write(chunk)
                os.fchmod(out.fileno(), mode & 0o777)  # never setuid from a package
    except OSError as err:
        raise LocalIOError(f"cannot write {where}: {err.strerror}") from err
    finally:
        os.close(parent)


def _open_dir(root: int, parts: Sequence[str]) -> int:
    """A descriptor of directory *parts* below *root*, no component followed as a link."""
    fd = os.dup(root)
    for part in parts:
        try:
            below = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = below
    return fd
