"""``.mpm`` package archives: a reproducible writer and a streaming, bounded reader.

Archives are written reproducibly (sorted members, uid/gid 0, mtime ``SOURCE_DATE_EPOCH``
or 0, gzip without a timestamp) and read as a stream with caps on expansion, member count
and member size; no member may escape the package.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from capstan.core.errors import InputError, LocalIOError, NotFound
from capstan.core.fs import atomic_output
from capstan.core.limits import CappedReader, expansion_limit
from capstan.core.yamlfile import load_text
from capstan.image.rofs import DirEntry, FileEntry, SymlinkEntry
from capstan.image.sources import Extent, open_host
from capstan.image.tree import guest_path, host_entry
from capstan.packages.manifest import (
    Manifest,
    ignore_regex,
    ignore_rules,
    load_manifest,
    load_run,
    parse_manifest,
    walk_package,
)

__all__ = ["MAX_MEMBER", "MAX_MEMBERS", "MAX_META", "META", "README", "Archive", "Member",
           "archive_of", "build_mpm", "check_member", "read_mpm", "scan_mpm"]

MAX_MEMBER = 4 << 30
MAX_MEMBERS = 100_000
MAX_META = 1 << 20  # meta/package.yaml, meta/run.yaml, and any tar extended header
META = ("meta/package.yaml", "meta/run.yaml")
README = "meta/README.md"  # shown by package describe; only its first MAX_META bytes are read


def build_mpm(package: Path, output: Path | None = None) -> Path:
    """Write ``<name>.mpm`` of *package* (reproducible; .capstanignore honoured)."""
    manifest = load_manifest(package)
    load_run(package, manifest.name)  # a broken run.yaml fails now, not at compose
    target = output or package / f"{manifest.name}.mpm"
    rules = [*ignore_rules(package, builtin=False), ignore_regex("/mpm-pkg"),
             ignore_regex("/" + target.name), ignore_regex("/.git"),
             ignore_regex("/volumes")]
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    found = walk_package(package, rules)  # before the temporary file exists
    with atomic_output(target) as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0,
                                                     filename="") as gz:
        _write_tar(gz, found, mtime)  # type: ignore[arg-type]
    return target


def _write_tar(out: io.RawIOBase, found: Sequence[tuple[str, Path]], mtime: int) -> None:
    """The tar stream of *found* (relative name, path) into *out*, files streamed."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_info("/", tarfile.DIRTYPE, 0o755, mtime))
        for rel, path in found:
            st = path.lstat()
            entry = host_entry(path, rel, st) if not stat.S_ISDIR(st.st_mode) else None
            if entry is None:
                tar.addfile(_info(rel + "/", tarfile.DIRTYPE, st.st_mode, mtime))
            elif isinstance(entry, SymlinkEntry):
                info = _info(rel, tarfile.SYMTYPE, st.st_mode, mtime)
                info.linkname = entry.target
                tar.addfile(info)
            else:
                info = _info(rel, tarfile.REGTYPE, st.st_mode, mtime)
                info.size = st.st_size
                with open_host(path) as f:
                    tar.addfile(info, f)


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(mode)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


@dataclass(frozen=True)
class Member:
    """One member of an ``.mpm``: *name* relative to the package root, *offset* of its
    data in the (decompressed) tar stream."""

    name: str
    kind: str  # "dir", "file" or "symlink"
    mode: int
    size: int
    linkname: str
    offset: int


@dataclass
class Archive:
    """What an ``.mpm`` holds: its metadata and its members (contents stay in the file)."""

    path: Path
    manifest: Manifest | None
    run_yaml: Any
    members: list[Member]
    gzip: bool
    data: dict[str, bytes]  # meta/package.yaml, meta/run.yaml and meta/README.md

    def entries(self) -> list[FileEntry | SymlinkEntry | DirEntry]:
        """The members outside ``meta/`` as image entries, files pointing into the archive."""
        out: list[FileEntry | SymlinkEntry | DirEntry] = []
        for m in self.members:
            if m.name == "meta" or m.name.startswith("meta/"):
                continue
            path = "/" + m.name
            if m.kind == "dir":
                out.append(DirEntry(path))
            elif m.kind == "symlink":
                out.append(SymlinkEntry(path, m.linkname))
            else:
                out.append(FileEntry(path, m.size, extent=Extent(
                    self.path, m.offset, m.size, self.gzip), mode=m.mode))
        return out


class _Header(tarfile.TarInfo):
    """A tar header whose extended headers (long names, pax) are bounded in size."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                         tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) \
                and self.size > MAX_META:
            raise tarfile.TarError(f"an extended header of {self.size} bytes")
        return super()._proc_member(tar)  # type: ignore[misc,no-any-return]


def read_mpm(path: Path) -> Archive:
    """Read and check an ``.mpm`` (gzip or plain tar, names with or without ``/``) as a
    stream: members are listed, only ``meta/`` files are read into memory."""
    if not path.exists():
        raise NotFound(f"no such package archive: {path}")
    with open_host(path) as raw:
        return scan_mpm(path, raw)


def scan_mpm(path: Path, raw: BinaryIO, copy: Callable[[memoryview], object] | None = None
             ) -> Archive:
    """:func:`read_mpm` of *path* opened as *raw*; *copy*, if given, sees every byte of
    the decompressed tar stream read, in order (a gzip archive's only)."""
    compressed = os.fstat(raw.fileno()).st_size
    is_gzip = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    inner: Any = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
    limit = expansion_limit(compressed) if is_gzip else compressed
    capped = _Copying(inner, limit, str(path))
    capped.copy = copy if is_gzip else None
    members, data = _scan(path, io.BufferedReader(capped, 1 << 16))
    return archive_of(path, members, data, extent=(path, is_gzip))


def archive_of(path: Path, members: list[Member], data: dict[str, bytes], *,
               extent: tuple[Path, bool]) -> Archive:
    """The archive *path* holding *members* and meta files *data*, its files' bytes in
    *extent* (a file, and whether that is gzip'd); the meta files are parsed."""
    manifest = run_yaml = None
    if "meta/package.yaml" in data:
        manifest = parse_manifest(_yaml(data["meta/package.yaml"], path, "package.yaml"),
                                  f"{path}:meta/package.yaml")
    if "meta/run.yaml" in data:
        run_yaml = _yaml(data["meta/run.yaml"], path, "run.yaml")
    return Archive(extent[0], manifest, run_yaml, members, extent[1], data)


class _Copying(CappedReader):
    """A capped reader that also hands what it reads to *copy*."""

    copy: Callable[[memoryview], object] | None = None

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = super().readinto(buffer)
        if self.copy is not None and n:
            self.copy(memoryview(buffer)[:n])
        return n


def _scan(path: Path, stream: Any) -> tuple[list[Member], dict[str, bytes]]:
    members: list[Member] = []
    data: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_Header) as tar:
            while (info := tar.next()) is not None:
                tar.members.clear()  # type: ignore[attr-defined]  # constant memory whatever the member count
                if len(members) >= MAX_MEMBERS:
                    raise InputError(f"{path}: more than {MAX_MEMBERS} members")
                member = _member(path, info)
                if member is None:
                    continue
                members.append(member)
                if member.name in (*META, README) and member.kind == "file":
                    if member.size > MAX_META and member.name != README:
                        raise InputError(f"{path}: member {info.name} is too large")
                    f = tar.extractfile(info)
                    data[member.name] = f.read(MAX_META) if f else b""  # README: its head
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise InputError(f"{path}: truncated or corrupt package archive ({err})") from err
    except OSError as err:
        if err.errno:
            raise LocalIOError(f"cannot read {path}: {err.strerror}") from err
        raise InputError(f"{path}: truncated or corrupt package archive ({err})") from err
    return members, data


def _member(path: Path, info: tarfile.TarInfo) -> Member | None:
    """The checked member; None for the package root itself."""
    if info.size > MAX_MEMBER:
        raise InputError(f"{path}: member {info.name} is too large")
    name = _safe_name(path, info)
    if name is None:
        return None
    if info.issparse() or not (info.isdir() or info.isreg() or info.issym()):
        raise InputError(f"{path}: member {info.name} is not a file, directory or symlink")
    kind = "dir" if info.isdir() else "symlink" if info.issym() else "file"
    return Member(name, kind, stat.S_IMODE(info.mode), info.size if kind == "file" else 0,
                  info.linkname, info.offset_data)


def _yaml(text: bytes, path: Path, what: str) -> Any:
    return load_text(text, f"{path}:meta/{what}")


def _safe_name(path: Path, info: tarfile.TarInfo) -> str | None:
    """The member's path relative to the package root; None for the root itself."""
    if info.islnk():
        raise InputError(f"{path}: hard link '{info.name}' in a package")
    name = info.name.lstrip("/")
    name = name[2:] if name.startswith("./") else name
    name = name[:-1] if name.endswith("/") else name
    if name in ("", "."):
        return None
    check_member(path, name, info.name, info.linkname if info.issym() else None)
    return name


def check_member(path: Path, name: str, raw: str, target: str | None) -> None:
    """InputError unless *name* (tar name *raw*; a symlink to *target*) stays in the
    package and is a valid guest path."""
    parts = name.split("/")
    if ".." in parts:
        raise InputError(f"{path}: member '{raw}' escapes the package")
    guest_path("/" + name, f"{path}: member '{raw}'")
    if target is not None:
        depth = len(parts) - 1
        for part in target.split("/"):
            depth += -1 if part == ".." else (0 if part in ("", ".") else 1)
            if depth < 0:
                raise InputError(f"{path}: symlink '{raw}' -> '{target}' escapes "
                                 "the package")
        if not target or "\0" in target:
            raise InputError(f"{path}: symlink '{raw}' has an invalid target")
