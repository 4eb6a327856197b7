"""Gzip'd ``.mpm`` archives kept decompressed, so that a compose copies their files as it
copies host files (by offset, no decompression).

``$CAPSTAN_ROOT/cache/packages`` (0700) holds per archive ``<key>.tar``, its decompressed
tar stream, and ``<key>.json``, its record (members, meta files, the tar's size, the
source's path, identity and SHA-256, the boot), *key* hashing the archive's identity
(device, inode, size, mtime, ctime). The tar is renamed into place first, the record last:
a record is the commit. An archive changed within :data:`~capstan.core.identity.RACY_NS`
is read streamed, uncached (timestamps are coarser than writes), and so is every archive
when the cache cannot be used. A record is trusted only if all of it checks (the same
bounds and name checks as the archive, every member inside a tar of the recorded size,
regular files of this user, this boot; see :mod:`capstan.packages.records`): anything else
is a miss, rebuilt. Entries are removed only under an exclusive ``flock`` of their tar,
record first, so a compose never loses the tar it reads (it holds a shared one). After each new
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
from pathlib import Path
from typing import BinaryIO

from capstan.core.errors import CapstanError, NotFound
from capstan.core.fs import TEMP_PREFIX, atomic_write, held, private_dir, sweep, temp_path
from capstan.core.identity import boot_id, identity, settled
from capstan.core.textfile import read_bounded
from capstan.image.sources import open_host
from capstan.packages import records
from capstan.packages.mpm import Archive, scan_mpm

__all__ = ["KEEP", "digest", "read_cached"]

KEEP = 16  # entries kept, the last used
_KEY = re.compile(r"[0-9a-f]{32}")
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def read_cached(root: Path, path: Path) -> Archive:
    """:func:`~capstan.packages.mpm.read_mpm` of *path*, its files read from a decompressed
    copy below ``root/cache/packages`` when one is (or can be) made."""
    if not path.exists():
        raise NotFound(f"no such package archive: {path}")
    with open_host(path) as raw:
        st = os.fstat(raw.fileno())
        folder = _folder(root) if raw.read(2) == b"\x1f\x8b" and settled(identity(st)) else None
        raw.seek(0)
        if folder is None:
            return scan_mpm(path, raw)
        key = records.key_of(st)
        try:
            return records.hit(folder, key, path, st)
        except records.Bad:
            pass
        with held(root, "cache", f"package-{key}"):
            with contextlib.suppress(records.Bad):  # built by another compose meanwhile
                return records.hit(folder, key, path, st)
            archive = _build(folder, key, path, raw)
        _evict(root, folder, key)
        return archive


def digest(root: Path, path: Path) -> str:
    """The SHA-256 of the archive *path*: its record's when the record is of its identity."""
    with open_host(path) as raw:
        st = os.fstat(raw.fileno())
        folder = _folder(root) if settled(identity(st)) else None
        with contextlib.suppress(records.Bad):
            if folder is not None:
                return str(records.record(folder, records.key_of(st), st)["sha256"])
        return _sha256(raw)


def _folder(root: Path) -> Path | None:
    """The cache directory; None when it cannot be used (it, or ``cache`` above it, not a
    directory of this user: another user could swap what is below it)."""
    try:
        private_dir(root / "cache")
        return private_dir(root / "cache" / "packages")
    except CapstanError:
        return None


def _sha256(raw: BinaryIO) -> str:
    h = hashlib.sha256()
    raw.seek(0)
    while chunk := raw.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


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
            raise records.Bad
        record = {"version": records.VERSION, "boot": boot_id(), "source": str(path),
                  "identity": identity(st), "sha256": _sha256(raw), "tar": sink.written,
                  "members": [[m.name, m.kind, m.mode, m.size,
                               m.linkname if m.kind == "symlink" else "", m.offset]
                              for m in streamed.members],
                  "meta": {k: base64.b64encode(v).decode() for k, v in streamed.data.items()}}
        fcntl.flock(fd, fcntl.LOCK_SH)  # pinned before it is published: never evicted
        os.fchmod(fd, 0o600)
        _clear(tar, folder / f"{key}.json")
        os.rename(tmp, tar)
        atomic_write(folder / f"{key}.json", json.dumps(record).encode(), 0o600, sync=False)
    except (OSError, CapstanError, records.Bad):
        _discard(fd, tmp)
        return streamed  # no entry: the archive as read
    except BaseException:
        _discard(fd, tmp)
        raise
    records.pinned[str(tar)] = fd
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
        data = json.loads(read_bounded(folder / f"{key}.json", CapstanError, records.MAX_RECORD,
                                       follow=False))
        source = os.lstat(data["source"])
        records.record(folder, key, source)
        return os.lstat(folder / f"{key}.json").st_mtime_ns
    except (CapstanError, OSError, ValueError, TypeError, KeyError, records.Bad):
        return None


def _remove(folder: Path, key: str) -> None:
    """Remove entry *key*, record first, unless a compose holds its tar."""
    try:
        fd: int | None = os.open(folder / f"{key}.tar", records.READ)
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
