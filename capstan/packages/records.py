"""Records of the decompressed-package cache (:mod:`capstan.packages.unpacked`), checked
as hostile input: a record is used only if every field, member and meta file checks and its
tar is a regular file of this user with one link and the recorded size, share-locked
(``flock``) by this process until it exits, so that no other compose removes it meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from capstan.core.errors import CapstanError
from capstan.core.identity import boot_id, identity
from capstan.core.limits import expansion_limit
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
)

__all__ = ["MAX_RECORD", "VERSION", "Bad", "hit", "key_of", "pinned", "record"]

VERSION = 1
MAX_RECORD = 64 << 20
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_SHA = re.compile(r"[0-9a-f]{64}")
_KINDS = ("dir", "file", "symlink")
_FIELDS = 6  # name, kind, mode, size, linkname, offset
_MODE_BITS = 0o7777
pinned: dict[str, int] = {}  # tar path -> its descriptor, share-locked until exit


class Bad(Exception):
    """A record or tar that is not what a record must be: a miss."""


def key_of(st: os.stat_result) -> str:
    """The name of the entry of the archive of identity *st*."""
    return hashlib.sha256(json.dumps([VERSION, *identity(st)]).encode()).hexdigest()[:32]


def record(folder: Path, key: str, st: os.stat_result) -> dict[str, Any]:
    """The record of *key*, checked at its top level for the archive of identity *st*."""
    try:
        with open(os.open(folder / f"{key}.json", READ), "rb") as f:
            own = os.fstat(f.fileno())
            if not stat.S_ISREG(own.st_mode) or own.st_uid != os.getuid() \
                    or own.st_size > MAX_RECORD:
                raise Bad
            data = json.loads(f.read(MAX_RECORD))
    except (OSError, ValueError) as err:
        raise Bad from err
    if not isinstance(data, dict) or data.get("version") != VERSION \
            or data.get("identity") != identity(st) or data.get("boot") != boot_id() \
            or not isinstance(data.get("sha256"), str) or not _SHA.fullmatch(data["sha256"]):
        raise Bad
    tar = data.get("tar")
    if type(tar) is not int or not 0 <= tar <= expansion_limit(st.st_size):
        raise Bad
    return data


def hit(folder: Path, key: str, path: Path, st: os.stat_result) -> Archive:
    """The cached archive of *path* (identity *st*); Bad on a miss."""
    data = record(folder, key, st)
    members, meta = data.get("members"), data.get("meta")
    if not isinstance(members, list) or len(members) > MAX_MEMBERS \
            or not isinstance(meta, dict):
        raise Bad
    checked = [_member(path, item, data["tar"]) for item in members]
    tar = folder / f"{key}.tar"
    _pin(tar, data["tar"])
    with contextlib.suppress(OSError):
        os.utime(folder / f"{key}.json", follow_symlinks=False)  # used last: kept longest
    return archive_of(path, checked, _meta(meta), extent=(tar, False))


def _member(path: Path, item: Any, tar: int) -> Member:
    """The recorded member *item*, checked as the archive's are, inside *tar* bytes."""
    if not isinstance(item, list) or len(item) != _FIELDS:
        raise Bad
    name, kind, mode, size, link, offset = item
    if not (isinstance(name, str) and isinstance(link, str) and kind in _KINDS
            and all(type(n) is int for n in (mode, size, offset))):
        raise Bad
    if not (0 <= mode <= _MODE_BITS and 0 <= size <= MAX_MEMBER and offset >= 0
            and offset + size <= tar) or (size and kind != "file") \
            or (link and kind != "symlink"):
        raise Bad
    if name in ("", ".") or name != name.strip("/") or name.startswith("./"):
        raise Bad
    try:
        check_member(path, name, name, link if kind == "symlink" else None)
    except CapstanError as err:
        raise Bad from err
    return Member(name, kind, mode, size, link, offset)


def _meta(meta: dict[Any, Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, text in meta.items():
        if name not in (*META, README) or not isinstance(text, str) \
                or len(text) > (MAX_META + 2) // 3 * 4:
            raise Bad
        try:
            out[name] = base64.b64decode(text, validate=True)
        except ValueError as err:
            raise Bad from err
    return out


def _pin(tar: Path, size: int) -> None:
    """Hold a shared lock on *tar* (a regular file of this user, *size* bytes) until exit."""
    fd = pinned.get(str(tar))
    if fd is not None and _same(fd, tar, size):
        return
    try:
        fd = os.open(tar, READ)
    except OSError as err:
        raise Bad from err
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        raise Bad from err
    if not _same(fd, tar, size):  # removed meanwhile, or not what the record says
        os.close(fd)
        raise Bad
    old = pinned.pop(str(tar), None)
    if old is not None:
        os.close(old)
    pinned[str(tar)] = fd


def _same(fd: int, tar: Path, size: int) -> bool:
    try:
        st, now = os.fstat(fd), os.lstat(tar)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_nlink == 1 \
        and st.st_size == size and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


