"""Packages: manifests, ``.mpm`` archives, ``.capstanignore``, resolution and collection.

Formats per Capstan (reference 6.2, 6.8, 8, 9). Archives are written
reproducibly (sorted members, uid/gid 0, mtime ``SOURCE_DATE_EPOCH`` or 0,
gzip without a timestamp) and read as a stream with caps on expansion, member count and
member size; no member may escape the package. A compose merges the packages into an
in-memory :class:`~capstan.image.tree.Tree` whose files point into the archives.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import stat
import tarfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capstan.core.errors import Conflict, InputError, LocalIOError, NotFound, UsageError
from capstan.core.fs import atomic_output, publish_dir, sha256_of, sweep, temp_dir
from capstan.core.limits import CappedReader, expansion_limit
from capstan.core.names import check_name
from capstan.core.yamlfile import load_strict, load_text
from capstan.image.rofs import DirEntry, FileEntry, SymlinkEntry
from capstan.image.sources import Extent, open_host
from capstan.image.tree import Tree, guest_path, host_entry, materialise
from capstan.packages.runtimes import RunConfig, boot_command, parse_run

__all__ = ["Collected", "Manifest", "Merged", "build_mpm", "collect", "ignore_rules",
           "load_manifest", "merge", "read_mpm", "resolve"]

BOOTSTRAP = "osv.bootstrap"
MAX_MEMBER = 4 << 30
MAX_MEMBERS = 100_000
MAX_META = 1 << 20  # meta/package.yaml, meta/run.yaml, and any tar extended header
_META = ("meta/package.yaml", "meta/run.yaml")
_KEYS = ("name", "title", "author", "version", "require", "binary", "created", "platform",
         "constraints")
_VERSION = re.compile(r"\d{1,3}(\.\d{1,3}){0,2}")
_CONSTRAINT = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*")
_BUILTIN_IGNORES = ("/meta/*", "/mpm-pkg", "/.git", "/.capstanignore", "/.gitignore",
                    "/volumes", "/capstan.lock")


@dataclass(frozen=True)
class Manifest:
    """``meta/package.yaml``."""

    name: str
    title: str
    author: str
    version: str = ""
    require: tuple[str, ...] = ()
    created: str = ""
    platform: str = ""
    binary: dict[str, str] = field(default_factory=dict)
    constraints: dict[str, str] = field(default_factory=dict)  # Capstan ignores this key

    def to_yaml(self) -> str:
        """Capstan's key order; empty optional keys left out."""
        data: dict[str, Any] = {"name": self.name, "title": self.title, "author": self.author}
        if self.version:
            data["version"] = self.version
        if self.require:
            data["require"] = list(self.require)
        if self.binary:
            data["binary"] = self.binary
        data["created"] = self.created or "N/A"
        if self.platform:
            data["platform"] = self.platform
        if self.constraints:
            data["constraints"] = self.constraints
        return yaml.safe_dump(data, sort_keys=False)


def parse_manifest(data: Any, where: str) -> Manifest:
    """Validate manifest data; errors name *where* and the key."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping (name, title, author, ...)")
    unknown = sorted(set(map(str, data)) - set(_KEYS))
    if unknown:
        raise InputError(f"{where}{line_of(where, unknown[0])}: unknown key '{unknown[0]}'")
    constraints = data.get("constraints") or {}
    if not isinstance(constraints, dict):
        raise InputError(f"{where}: 'constraints' must map package names to version ranges")
    for pkg, rule in constraints.items():
        version_constraint(str(rule), f"{where}: constraints.{pkg}")
    for key in ("name", "title", "author"):
        if not data.get(key):
            raise InputError(f"{where}: '{key}' must be provided for the package")
    require = data.get("require") or []
    if not isinstance(require, list) or not all(isinstance(r, str) for r in require):
        raise InputError(f"{where}: 'require' must be a list of package names")
    for key in ("name", "title", "author", "version", "platform"):
        if key in data and not isinstance(data[key], str | int | float):
            raise InputError(f"{where}: '{key}' must be a string")
    for key, value in [("name", str(data["name"])), *(("require", r) for r in require)]:
        check_name(value, "package", f"{where}: {key}")
    return Manifest(str(data["name"]), str(data["title"]), str(data["author"]),
                    str(data.get("version") or ""), tuple(require),
                    str(data.get("created") or ""), str(data.get("platform") or ""),
                    dict(data.get("binary") or {}),
                    {str(k): str(v) for k, v in constraints.items()})


def line_of(where: str, key: str) -> str:
    """``:LINE`` of the top-level *key* in the file *where*, when it can be found."""
    try:
        text = Path(where).read_text()
    except OSError:
        return ""
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"{re.escape(key)}\s*:", line):
            return f":{number}"
    return ""


def version_key(version: str) -> int:
    """Capstan's comparable form of ``X[.Y[.Z]]`` (weights 10^6, 10^3, 1)."""
    parts = [int(p) for p in version.split(".")] + [0, 0]
    return parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]


def version_constraint(rule: str, where: str) -> list[tuple[str, int]]:
    """``>=1.2,<2`` as (operator, version key) pairs; errors name *where*."""
    parsed = []
    for part in rule.split(","):
        match = _CONSTRAINT.fullmatch(part)
        if match is None or not _VERSION.fullmatch(match.group(2)):
            raise InputError(f"{where}: invalid version constraint '{rule}' (e.g. >=1.2,<2)")
        parsed.append((match.group(1), version_key(match.group(2))))
    return parsed


def satisfies(version: str, rule: str) -> bool:
    """Whether *version* meets every part of *rule*."""
    if not _VERSION.fullmatch(version):
        return False
    have = version_key(version)
    checks = {">=": have.__ge__, "<=": have.__le__, "==": have.__eq__, "!=": have.__ne__,
              ">": have.__gt__, "<": have.__lt__}
    return all(checks[op](want) for op, want in version_constraint(rule, "constraint"))


def load_manifest(package: Path) -> Manifest:
    """``<package>/meta/package.yaml``."""
    path = package / "meta" / "package.yaml"
    if not path.is_file():
        raise NotFound(f"{package.absolute()} is not a package: no meta/package.yaml "
                       "(run 'capstan package init')")
    return parse_manifest(load_strict(path), str(path))


def load_run(package: Path, name: str) -> RunConfig | None:
    """``<package>/meta/run.yaml``, if there is one."""
    path = package / "meta" / "run.yaml"
    return parse_run(load_strict(path), name, str(path)) if path.is_file() else None


# -- .capstanignore --------------------------------------------------------------


def ignore_rules(package: Path) -> list[re.Pattern[str]]:
    """The patterns of ``.capstanignore`` plus Capstan's built-in ones, compiled."""
    lines: list[str] = []
    path = package / ".capstanignore"
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    if "/meta" in patterns:
        raise InputError(f"{path}: please remove '/meta' from .capstanignore")
    return [_ignore_regex(p) for p in [*patterns, *_BUILTIN_IGNORES]]


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("/**/", i):
            out += "(?:/.*)?/"
            i += 4
        elif pattern.startswith("/*", i) and i + 2 == len(pattern):
            out += "/.*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignored(rules: Sequence[re.Pattern[str]], rel: str) -> bool:
    """Whether */rel* (with a leading ``/``) is ignored."""
    return any(r.fullmatch(rel) for r in rules)


def _walk(root: Path, rules: Sequence[re.Pattern[str]]) -> list[tuple[str, Path]]:
    """(``/relative``, path) of everything below *root* not ignored, sorted."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(dirnames):
            rel = "/" + (here / name).relative_to(root).as_posix()
            if ignored(rules, rel):
                dirnames.remove(name)
            else:
                found.append((rel, here / name))
        for name in filenames:
            rel = "/" + (here / name).relative_to(root).as_posix()
            if not ignored(rules, rel):
                found.append((rel, here / name))
    return sorted(found)


# -- .mpm archives -------------------------------------------------------------------


def build_mpm(package: Path, output: Path | None = None) -> Path:
    """Write ``<name>.mpm`` of *package* (reproducible; .capstanignore honoured)."""
    manifest = load_manifest(package)
    load_run(package, manifest.name)  # a broken run.yaml fails now, not at compose
    target = output or package / f"{manifest.name}.mpm"
    rules = [*ignore_rules(package)[:-len(_BUILTIN_IGNORES)], _ignore_regex("/mpm-pkg"),
             _ignore_regex("/" + target.name), _ignore_regex("/.git"),
             _ignore_regex("/volumes")]
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    found = _walk(package, rules)  # before the temporary file exists
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
    data: dict[str, bytes]  # meta/package.yaml and meta/run.yaml

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
        compressed = os.fstat(raw.fileno()).st_size
        is_gzip = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        inner: Any = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
        limit = expansion_limit(compressed) if is_gzip else compressed
        stream = io.BufferedReader(CappedReader(inner, limit, str(path)), 1 << 16)
        members, data = _scan(path, stream)
    manifest = run_yaml = None
    if "meta/package.yaml" in data:
        manifest = parse_manifest(_yaml(data["meta/package.yaml"], path, "package.yaml"),
                                  f"{path}:meta/package.yaml")
    if "meta/run.yaml" in data:
        run_yaml = _yaml(data["meta/run.yaml"], path, "run.yaml")
    return Archive(path, manifest, run_yaml, members, is_gzip, data)


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
                if member.name in _META and member.kind == "file":
                    if member.size > MAX_META:
                        raise InputError(f"{path}: member {info.name} is too large")
                    f = tar.extractfile(info)
                    data[member.name] = f.read() if f else b""
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
    parts = name.split("/")
    if ".." in parts:
        raise InputError(f"{path}: member '{info.name}' escapes the package")
    guest_path("/" + name, f"{path}: member '{info.name}'")
    if info.issym():
        target = info.linkname
        depth = len(parts) - 1
        for part in target.split("/"):
            depth += -1 if part == ".." else (0 if part in ("", ".") else 1)
            if depth < 0:
                raise InputError(f"{path}: symlink '{info.name}' -> '{target}' escapes "
                                 "the package")
        if not target or "\0" in target:
            raise InputError(f"{path}: symlink '{info.name}' has an invalid target")
    return name


# -- resolution and collection ----------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A package chosen for a compose, with where it comes from."""

    name: str
    version: str
    sha256: str
    path: Path


def resolve(root: Path, names: Sequence[str], *, pull: Any = None,
            constraints: dict[str, str] | None = None) -> list[Resolved]:
    """Dependencies in merge order: depth-first post-order, each once at its last place.

    *constraints* (and every manifest's own) must hold for the chosen versions.
    """
    packages = root / "packages"
    order: list[str] = []
    manifests: dict[str, Manifest] = {}

    def visit(name: str, path: list[str]) -> None:
        check_name(name, "package", "")
        if name in path:
            raise InputError(f"dependency cycle: {' -> '.join([*path[path.index(name):], name])}")
        archive = packages / f"{name}.mpm"
        if not archive.is_file() or not (packages / f"{name}.yaml").is_file():
            if pull is None:
                raise NotFound(f"package {name} is not in your local repository: pull it with "
                               f"'capstan package pull {name}' or use --pull-missing")
            pull(name)
        if name not in manifests:
            manifests[name] = parse_manifest(load_strict(packages / f"{name}.yaml"),
                                             str(packages / f"{name}.yaml"))
        for dep in manifests[name].require:
            visit(dep, [*path, name])
        order.append(name)

    for name in names:
        visit(name, [])
    last = {name: i for i, name in enumerate(order)}
    chosen = [name for i, name in enumerate(order) if last[name] == i]
    rules = [(who, pkg, rule) for who, m in manifests.items() for pkg, rule in
             m.constraints.items()] + [("the application", pkg, rule)
                                       for pkg, rule in (constraints or {}).items()]
    for who, pkg, rule in rules:
        if pkg in manifests and not satisfies(manifests[pkg].version, rule):
            raise InputError(f"{who} needs {pkg} {rule}, but the repository has version "
                             f"'{manifests[pkg].version}'")
    return [Resolved(n, manifests[n].version, sha256_of(packages / f"{n}.mpm"),
                     packages / f"{n}.mpm") for n in chosen]


@dataclass
class Merged:
    """The merged tree of a package compose, in memory (files point into the archives)."""

    tree: Tree
    packages: list[Resolved]
    run_configs: dict[str, RunConfig]
    collisions: list[tuple[str, str, str]]  # path, earlier package, later package
    scripts: dict[str, str]


@dataclass
class Collected:
    """The merged tree of a package collect, written on the host (Capstan's mpm-pkg)."""

    tree: Path
    packages: list[Resolved]
    run_configs: dict[str, RunConfig]
    collisions: list[tuple[str, str, str]]  # path, earlier package, later package
    scripts: dict[str, str]


def merge(package: Path, root: Path, extra: Iterable[str] = (), *, pull: Any = None,
          bootstrap: bool = True, check: Any = None) -> Merged:
    """Merge the dependencies and the application into an in-memory tree.

    *check*, when given, sees the resolved packages before any archive is read.
    """
    manifest = load_manifest(package)
    app_run = load_run(package, manifest.name)
    runtime_deps = list(app_run.runtime.depends) if app_run else []
    wanted = [*([BOOTSTRAP] if bootstrap else []), *runtime_deps, *manifest.require, *extra]
    resolved = resolve(root, wanted, pull=pull, constraints=manifest.constraints)
    if check is not None:
        check(resolved)
    files = Tree()
    runs: dict[str, RunConfig] = {}
    order: list[str] = []
    for dep in resolved:
        archive = read_mpm(dep.path)
        if archive.run_yaml is not None:
            runs[dep.name] = parse_run(archive.run_yaml, dep.name, f"{dep.path}:meta/run.yaml")
            order.append(dep.name)
        for entry in archive.entries():
            files.add(entry, dep.name)
    rules = [*ignore_rules(package), _ignore_regex(f"/{manifest.name}.mpm")]
    for rel, path in _walk(package, rules):
        if not rel.startswith("/meta"):
            st = path.lstat()
            files.add(DirEntry(rel) if stat.S_ISDIR(st.st_mode) else host_entry(path, rel, st),
                      manifest.name)
    if app_run is not None:
        runs[manifest.name] = app_run
        order.append(manifest.name)
    files.add(DirEntry("/run"), manifest.name)
    scripts: dict[str, str] = {}
    for pkg in order:
        for name in runs[pkg].config_sets:
            try:
                text = boot_command(runs, pkg, name)
            except InputError as err:
                raise InputError(f"Validation failed for configuration set '{name}' of "
                                 f"{pkg}: {err}") from err
            scripts[name] = text
            body = text.encode()
            files.add(FileEntry(f"/run/{name}", len(body), data=body, mode=0o700), pkg)
    return Merged(files, resolved, runs, files.collisions, scripts)


def collect(package: Path, root: Path, target: Path, extra: Iterable[str] = (), *,
            pull: Any = None, bootstrap: bool = True, check: Any = None) -> Collected:
    """Merge as :func:`merge` does and write the tree to *target* (Capstan's mpm-pkg).

    The tree is written into a new scratch directory beside *target* through directory
    descriptors, then published in one step: a half-written mpm-pkg is never seen, and
    the scratch of a killed collect is swept by the next one.
    """
    merged = merge(package, root, extra, pull=pull, bootstrap=bootstrap, check=check)
    sweep(target.parent)
    scratch = temp_dir(target)
    try:
        materialise(merged.tree.entries(), scratch)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()  # replaced, never followed
        publish_dir(scratch, target)
    except OSError as err:
        raise LocalIOError(f"cannot replace {target}: {err.strerror}") from err
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Collected(target, merged.packages, merged.run_configs, merged.collisions,
                     merged.scripts)


def init_manifest(package: Path, name: str, title: str, author: str, version: str = "",
                  require: Sequence[str] = (), platform: str = "", force: bool = False) -> Path:
    """Write ``meta/package.yaml`` (refusing to overwrite one unless *force*)."""
    path = package / "meta" / "package.yaml"
    if path.exists() and not force:
        raise Conflict(f"{path} exists: use --force to overwrite it")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise UsageError(f"invalid package name '{name}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest = Manifest(name, title, author, version, tuple(require), created, platform)
    path.write_text(manifest.to_yaml())
    return path
