"""Gzip'd ``.mpm`` archives kept decompressed, so that a compose copies their files as it
copies host files (``copy_file_range``, no decompression).

``$CAPSTAN_ROOT/cache/packages`` (0700) holds per archive ``<key>.tar``, its decompressed
tar stream, and ``<key>.json``, its record (members, meta files, the tar's size, the
source's path, identity and SHA-256, the boot), *key* hashing the archive's identity
(device, inode, size, mtime, ctime). The tar is renamed into place first, the record last:
a record is the commit. An archive changed within :data:`~capstan.image.recompose.RACY_NS`
is read streamed, uncached (timestamps are coarser than writes), and so is every archive
when the cache cannot be used. A record is trusted only if all of it checks (the same
bounds and name checks as the archive, every member inside a tar of the recorded size,
regular files of this user, this boot): anything else is a miss, rebuilt. A process holds
a shared ``flock`` on each tar it uses until it exits; entries are removed only under an
exclusive one, record first, so a compose never loses the tar it reads. After each new
entry, the entries of archives that no longer exist as recorded go, and all but the
:data:`KEEP` used last. Deleting the directory is always safe.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO

from capstan.core.errors import CapstanError, NotFound
from capstan.core.fs import TEMP_PREFIX, atomic_write, held, private_dir, sweep, temp_path
from capstan.core.limits import expansion_limit
from capstan.core.textfile import read_bounded
from capstan.image.recompose import RACY_NS, boot_id
from capstan.image.sources import open_host
from capstan.packages.mpm import (
    MAX_MEMBER,
    MAX_MEMBERS,
    MAX_META,
    META,
    README,
    Archive,
    Member,
    archive_of,
    check_member,
    scan_mpm,
)

__all__ = ["KEEP", "digest", "read_cached"]

KEEP = 16  # entries kept, the last used
_VERSION = 1
_MAX_RECORD = 64 << 20
_KEY = re.compile(r"[0-9a-f]{32}")
_SHA = re.compile(r"[0-9a-f]{64}")
_KINDS = ("dir", "file", "symlink")
_FIELDS = 6  # name, kind, mode, size, linkname, offset
_MODE_BITS = 0o7777
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_pinned: dict[str, int] = {}  # tar path -> its descriptor, share-locked until exit


class _Bad(Exception):
    """A record or tar that is not what a record must be: a miss."""


def read_cached(root: Path, path: Path) -> Archive:
    """:func:`~capstan.packages.mpm.read_mpm` of *path*, its files read from a decompressed
    copy below ``root/cache/packages`` when one is (or can be) made."""
    if not path.exists():
        raise NotFound(f"no such package archive: {path}")
    with open_host(path) as raw:
        st = os.fstat(raw.fileno())
        folder = _folder(root) if raw.read(2) == b"\x1f\x8b" and _settled(st) else None
        raw.seek(0)
        if folder is None:
            return scan_mpm(path, raw)
        key = _key(st)
        try:
            return _hit(folder, key, path, st)
        except _Bad:
            pass
        with held(root, "cache", f"package-{key}"):
            with contextlib.suppress(_Bad):  # built by another compose meanwhile
                return _hit(folder, key, path, st)
            archive = _build(folder, key, path, raw)
        _evict(root, folder, key)
        return archive


def digest(root: Path, path: Path) -> str:
    """The SHA-256 of the archive *path*: its record's when the record is of its identity."""
    with open_host(path) as raw:
        st = os.fstat(raw.fileno())
        folder = _folder(root) if _settled(st) else None
        with contextlib.suppress(_Bad):
            if folder is not None:
                return str(_record(folder, _key(st), st)["sha256"])
        return _sha256(raw)


def _settled(st: os.stat_result) -> bool:
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_NS


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _key(st: os.stat_result) -> str:
    return hashlib.sha256(json.dumps([_VERSION, *_identity(st)]).encode()).hexdigest()[:32]


def _folder(root: Path) -> Path | None:
    """The cache directory; None when it cannot be used (not a directory of this user)."""
    try:
        return private_dir(root / "cache" / "packages")
    except CapstanError:
        return None


def _sha256(raw: BinaryIO) -> str:
    h = hashlib.sha256()
    raw.seek(0)
    while chunk := raw.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _record(folder: Path, key: str, st: os.stat_result) -> dict[str, Any]:
    """The record of *key*, checked at its top level for the archive of identity *st*."""
    try:
        with open(os.open(folder / f"{key}.json", _READ), "rb") as f:
            own = os.fstat(f.fileno())
            if not stat.S_ISREG(own.st_mode) or own.st_uid != os.getuid() \
                    or own.st_size > _MAX_RECORD:
                raise _Bad
            data = json.loads(f.read(_MAX_RECORD))
    except (OSError, ValueError) as err:
        raise _Bad from err
    if not isinstance(data, dict) or data.get("version") != _VERSION \
            or data.get("identity") != _identity(st) or data.get("boot") != boot_id() \
            or not isinstance(data.get("sha256"), str) or not _SHA.fullmatch(data["sha256"]):
        raise _Bad
    tar = data.get("tar")
    if type(tar) is not int or not 0 <= tar <= expansion_limit(st.st_size):
        raise _Bad
    return data


def _hit(folder: Path, key: str, path: Path, st: os.stat_result) -> Archive:
    """The cached archive of *path* (identity *st*); _Bad on a miss."""
    data = _record(folder, key, st)
    members, meta = data.get("members"), data.get("meta")
    if not isinstance(members, list) or len(members) > MAX_MEMBERS \
            or not isinstance(meta, dict):
        raise _Bad
    checked = [_member(path, item, data["tar"]) for item in members]
    tar = folder / f"{key}.tar"
    _pin(tar, data["tar"])
    with contextlib.suppress(OSError):
        os.utime(folder / f"{key}.json", follow_symlinks=False)  # used last: kept longest
    return archive_of(path, checked, _meta(meta), extent=(tar, False))


def _member(path: Path, item: Any, tar: int) -> Member:
    """The recorded member *item*, checked as the archive's are, inside *tar* bytes."""
    if not isinstance(item, list) or len(item) != _FIELDS:
        raise _Bad
    name, kind, mode, size, link, offset = item
    if not (isinstance(name, str) and isinstance(link, str) and kind in _KINDS
            and all(type(n) is int for n in (mode, size, offset))):
        raise _Bad
    if not (0 <= mode <= _MODE_BITS and 0 <= size <= MAX_MEMBER and offset >= 0
            and offset + size <= tar) or (size and kind != "file") \
            or (link and kind != "symlink"):
        raise _Bad
    if name in ("", ".") or name != name.strip("/") or name.startswith("./"):
        raise _Bad
    try:
        check_member(path, name, name, link if kind == "symlink" else None)
    except CapstanError as err:
        raise _Bad from err
    return Member(name, kind, mode, size, link, offset)


def _meta(meta: dict[Any, Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, text in meta.items():
        if name not in (*META, README) or not isinstance(text, str) \
                or len(text) > (MAX_META + 2) // 3 * 4:
            raise _Bad
        try:
            out[name] = base64.b64decode(text, validate=True)
        except ValueError as err:
            raise _Bad from err
    return out


def _pin(tar: Path, size: int) -> None:
    """Hold a shared lock on *tar* (a regular file of this user, *size* bytes) until exit."""
    fd = _pinned.get(str(tar))
    if fd is not None and _same(fd, tar, size):
        return
    try:
        fd = os.open(tar, _READ)
    except OSError as err:
        raise _Bad from err
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        raise _Bad from err
    if not _same(fd, tar, size):  # removed meanwhile, or not what the record says
        os.close(fd)
        raise _Bad
    old = _pinned.pop(str(tar), None)
    if old is not None:
        os.close(old)
    _pinned[str(tar)] = fd


def _same(fd: int, tar: Path, size: int) -> bool:
    try:
        st, now = os.fstat(fd), os.lstat(tar)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_nlink == 1 \
        and st.st_size == size and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _build(folder: Path, key: str, path: Path, raw: BinaryIO) -> Archive:
    """Read *path* (open as *raw*) once, its tar stream written to a new entry on the way;
    the streamed archive when no entry can be written."""
    st = os.fstat(raw.fileno())
    sweep(folder)
    tar = folder / f"{key}.tar"
    tmp = temp_path(tar)
    try:
        fd = os.open(tmp, _NEW, 0o600)
    except OSError:
        return scan_mpm(path, raw)
    sink = _Sink(fd)
    try:
        streamed = scan_mpm(path, raw, sink.write)
    except BaseException:
        _discard(fd, tmp)
        raise
    try:
        if sink.failed or any(m.offset + m.size > sink.written for m in streamed.members):
            raise _Bad
        record = {"version": _VERSION, "boot": boot_id(), "source": str(path),
                  "identity": _identity(st), "sha256": _sha256(raw), "tar": sink.written,
                  "members": [[m.name, m.kind, m.mode, m.size,
                               m.linkname if m.kind == "symlink" else "", m.offset]
                              for m in streamed.members],
                  "meta": {k: base64.b64encode(v).decode() for k, v in streamed.data.items()}}
        fcntl.flock(fd, fcntl.LOCK_SH)  # pinned before it is published: never evicted
        os.fchmod(fd, 0o600)
        _clear(tar, folder / f"{key}.json")
        os.rename(tmp, tar)
        atomic_write(folder / f"{key}.json", json.dumps(record).encode(), 0o600, sync=False)
    except (OSError, CapstanError, _Bad):
        _discard(fd, tmp)
        return streamed  # no entry: the archive as read
    except BaseException:
        _discard(fd, tmp)
        raise
    _pinned[str(tar)] = fd
    streamed.path, streamed.gzip = tar, False
    return streamed


def _clear(*paths: Path) -> None:
    """Remove the directories in the way of *paths* (a file is replaced by the rename)."""
    for path in paths:
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(path.lstat().st_mode):
                shutil.rmtree(path)


def _discard(fd: int, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    os.close(fd)


class _Sink:
    """Writes the tar stream to *fd*; a write error (a full disk) only stops the copy."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        self.failed = False

    def write(self, data: memoryview) -> None:
        while data and not self.failed:
            try:
                n = os.write(self.fd, data)
            except OSError:
                self.failed = True
                return
            self.written += n
            data = data[n:]


def _evict(root: Path, folder: Path, fresh: str) -> None:
    """Remove strays, the entries of archives gone or changed, and all but the
    :data:`KEEP` used last (never *fresh*, never one in use)."""
    with held(root, "cache", "packages", wait=False) as got:
        try:
            names = set(os.listdir(folder)) if got else set()
        except OSError:
            return
        kept: list[tuple[int, str]] = []
        for name in names - {f"{fresh}.json", f"{fresh}.tar"}:
            key, _, ext = name.partition(".")
            if name.startswith(TEMP_PREFIX) or (ext == "tar" and f"{key}.json" in names):
                continue  # temporaries are swept; a tar goes with its record
            if ext not in ("json", "tar"):
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
                continue
            used = _used(folder, key) if ext == "json" and _KEY.fullmatch(key) else None
            if used is None:
                _remove(folder, key)
            else:
                kept.append((used, key))
        for _, key in sorted(kept, reverse=True)[KEEP - 1:]:
            _remove(folder, key)


def _used(folder: Path, key: str) -> int | None:
    """When entry *key* was used last; None if its archive is no longer as recorded."""
    try:
        data = json.loads(read_bounded(folder / f"{key}.json", CapstanError, _MAX_RECORD,
                                       follow=False))
        source = os.lstat(data["source"])
        _record(folder, key, source)
        return os.lstat(folder / f"{key}.json").st_mtime_ns
    except (CapstanError, OSError, ValueError, TypeError, KeyError, _Bad):
        return None


def _remove(folder: Path, key: str) -> None:
    """Remove entry *key*, record first, unless a compose holds its tar."""
    try:
        fd: int | None = os.open(folder / f"{key}.tar", _READ)
    except OSError:
        fd = None  # none, or a symbolic link: no one reads through it
    try:
        if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for name in (f"{key}.json", f"{key}.tar"):
            with contextlib.suppress(OSError):
                os.unlink(folder / name)
    except OSError:
        return  # in use
    finally:
        if fd is not None:
            os.close(fd)
