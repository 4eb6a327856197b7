"""Packages: init, runtime templates, build, import, collect, list and describe."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capstan.core import timestamps
from capstan.core.cells import Paragraphs
from capstan.core.config import Config
from capstan.core.errors import CapstanError, Conflict, InputError, NotFound
from capstan.core.fs import atomic_write, lock, sha256_of, sweep
from capstan.core.names import check_name
from capstan.core.yamlfile import load_strict
from capstan.packages.manifest import Manifest, init_manifest, load_manifest, parse_manifest
from capstan.packages.mpm import README, build_mpm, read_mpm
from capstan.packages.resolve import BOOTSTRAP, COMPOSE_REMOTE, Collected, MergeOptions, collect
from capstan.packages.runtimes import RUNTIMES, Runtime, boot_command, parse_run
from capstan.packages.templates import run_template

__all__ = ["Built", "Described", "Manifest", "PackageRow", "build", "collect_here", "describe",
           "import_package", "init", "list_packages", "manifest_of", "runtimes",
           "write_run_template"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True)
class Built:
    """A package archive just written."""

    name: str
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class Described:
    """What ``package describe`` shows of an archive."""

    manifest: Manifest
    boots: str  # one ``config set: boot command`` line each
    files: int
    documentation: Paragraphs  # meta/README.md (Capstan's PACKAGE DOCUMENTATION)


def init(package: Path, manifest: Manifest, *, runtime: str | None = None,
         force: bool = False) -> Path:
    """Write *manifest* as ``meta/package.yaml`` (and, for *runtime*, a ``meta/run.yaml``
    template)."""
    path = init_manifest(package, manifest, force=force)
    if runtime:
        write_run_template(package, runtime, plain=False, force=force)
    return path


def manifest_of(package: Path) -> Manifest:
    """``<package>/meta/package.yaml``, validated."""
    return load_manifest(package)


def runtimes() -> list[Runtime]:
    """The runtimes ``meta/run.yaml`` can use, in Capstan's order."""
    return list(RUNTIMES.values())


def write_run_template(package: Path, runtime: str, *, plain: bool, force: bool) -> Path:
    """Write a ``meta/run.yaml`` template for *runtime* (*plain*: without comments)."""
    if not (package / "meta" / "package.yaml").is_file():
        raise NotFound(f"{package.absolute()} is not a package (no meta/package.yaml)")
    path = package / "meta" / "run.yaml"
    if path.exists() and not force:
        raise Conflict(f"{path} already exists: use --force to overwrite it")
    path.write_text(run_template(runtime, plain=plain))
    return path


def build(package: Path, output: Path | None = None) -> Built:
    """Build *package* into ``<name>.mpm`` (reproducible), or into *output*."""
    path = build_mpm(package, output)
    return Built(load_manifest(package).name, path, path.stat().st_size, sha256_of(path))


def import_package(config: Config, package: Path) -> Built:
    """Build *package* into the local repository (archive and manifest)."""
    manifest = load_manifest(package)
    packages = config.root / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    with lock(config.root, "package", manifest.name):
        sweep(packages)
        path = build_mpm(package, packages / f"{manifest.name}.mpm")
        atomic_write(packages / f"{manifest.name}.yaml", manifest.to_yaml().encode())
    return Built(manifest.name, path, path.stat().st_size, sha256_of(path))


def collect_here(config: Config, package: Path, require: Sequence[str],
                 pull: Callable[[str], None] | None = None, *, remote: bool = False
                 ) -> Collected:
    """Merge *package* and its dependencies into ``<package>/mpm-pkg`` (*remote*: as a
    remote compose would, ``osv.compose-remote`` in place of ``osv.bootstrap``)."""
    return collect(package, config.root, package / "mpm-pkg", MergeOptions(
        extra=tuple(require), pull=pull, bootstrap=COMPOSE_REMOTE if remote else BOOTSTRAP))


@dataclass(frozen=True)
class PackageRow:
    """One package of the local repository as ``package list`` shows it."""

    name: str
    title: str
    version: str
    created: str  # YYYY-MM-DD HH:MM or N/A, as Capstan shows it
    platform: str
    require: tuple[str, ...]


def list_packages(config: Config) -> tuple[list[PackageRow], list[str]]:
    """The local repository's packages by name, and one problem line per manifest
    that cannot be read (Capstan stopped at the first one, silently)."""
    folder = config.root / "packages"
    rows: list[PackageRow] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            m = parse_manifest(load_strict(path), str(path))
        except CapstanError as err:
            problems.append(_CONTROL.sub(" ", str(err)))  # one line, no escapes
            continue
        rows.append(PackageRow(m.name, m.title, m.version, timestamps.show(m.created),
                               m.platform, m.require))
    return rows, problems


def describe(config: Config, ref: str) -> Described:
    """A package archive (a file, or a name in the local repository) and its boot
    commands."""
    path = Path(ref)
    if not path.is_file():
        path = config.root / "packages" / f"{check_name(ref, 'package')}.mpm"
    archive = read_mpm(path)
    m = archive.manifest
    if m is None:
        raise InputError(f"{path}: not a valid package: no meta/package.yaml")
    boots = ""
    if archive.run_yaml is not None:
        run = parse_run(archive.run_yaml, m.name, f"{path}:meta/run.yaml")
        table = {m.name: run}
        lines = []
        for cs in run.config_sets:
            try:
                lines.append(f"{cs}: {boot_command(table, m.name, cs)}")
            except InputError:  # inherits from another package
                base = run.config_sets[cs].base or run.runtime.base
                lines.append(f"{cs}: (inherits from {base})")
        boots = "\n".join(lines)
    readme = archive.data.get(README, b"").decode("utf-8", "replace")
    return Described(m, boots, sum(1 for i in archive.members
                                   if not i.name.startswith("meta")), Paragraphs(readme))
