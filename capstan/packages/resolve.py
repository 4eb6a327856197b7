"""Dependency resolution and the merge of a package compose or collect.

A compose merges the packages into an in-memory :class:`~capstan.image.tree.Tree` whose
files point into the archives; a collect writes that tree on the host.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capstan.core.errors import InputError, LocalIOError, NotFound
from capstan.core.fs import publish_dir, sweep, temp_dir
from capstan.core.names import check_name
from capstan.core.yamlfile import load_strict
from capstan.image.rofs import DirEntry, FileEntry
from capstan.image.tree import Tree, host_entry, materialise
from capstan.packages.manifest import (
    Manifest,
    ignore_regex,
    ignore_rules,
    load_run,
    manifest_or_default,
    parse_manifest,
    satisfies,
    walk_package,
)
from capstan.packages.runtimes import RunConfig, boot_command, parse_run
from capstan.packages.unpacked import digest, read_cached

__all__ = ["BOOTSTRAP", "COMPOSE_REMOTE", "Collected", "MergeOptions", "Merged", "Resolved",
           "collect", "merge", "resolve"]

BOOTSTRAP = "osv.bootstrap"
COMPOSE_REMOTE = "osv.compose-remote"  # the bootstrap of a remote compose


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
    return [Resolved(n, manifests[n].version, digest(root, packages / f"{n}.mpm"),
                     packages / f"{n}.mpm") for n in chosen]


@dataclass
class _MergeOutcome:
    """What a package compose or collect merged."""

    packages: list[Resolved]
    run_configs: dict[str, RunConfig]
    collisions: list[tuple[str, str, str]]  # path, earlier package, later package
    scripts: dict[str, str]


@dataclass
class Merged(_MergeOutcome):
    """The merged tree of a package compose, in memory (files point into the archives)."""

    tree: Tree


@dataclass
class Collected(_MergeOutcome):
    """The merged tree of a package collect, written on the host (Capstan's mpm-pkg)."""

    tree: Path


@dataclass(frozen=True)
class MergeOptions:
    """What a merge takes besides the package's own requirements.

    *extra*: more packages to require; *pull*: fetches a missing package (else a
    missing package is an error); *bootstrap*: the implicit first package
    (``osv.compose-remote`` for a remote compose, None for none); *check*: sees the
    resolved packages before any archive is read.
    """

    extra: tuple[str, ...] = ()
    pull: Callable[[str], None] | None = None
    bootstrap: str | None = BOOTSTRAP
    check: Callable[[list[Resolved]], None] | None = None


def merge(package: Path, root: Path, options: MergeOptions = MergeOptions()) -> Merged:
    """Merge the dependencies and the application into an in-memory tree (a directory
    without ``meta/package.yaml`` is Capstan's anonymous package)."""
    manifest = manifest_or_default(package)
    app_run = load_run(package, manifest.name)
    runtime_deps = list(app_run.runtime.depends) if app_run else []
    wanted = [*([options.bootstrap] if options.bootstrap else []), *runtime_deps, *manifest.require,
              *options.extra]
    resolved = resolve(root, wanted, pull=options.pull, constraints=manifest.constraints)
    if options.check is not None:
        options.check(resolved)
    files = Tree()
    runs, order = _add_archives(files, resolved, root)
    rules = [*ignore_rules(package), ignore_regex(f"/{manifest.name}.mpm")]
    for rel, path in walk_package(package, rules):
        if not rel.startswith("/meta"):
            st = path.lstat()
            files.add(DirEntry(rel) if stat.S_ISDIR(st.st_mode) else host_entry(path, rel, st),
                      manifest.name)
    if app_run is not None:
        runs[manifest.name] = app_run
        order.append(manifest.name)
    files.add(DirEntry("/run"), manifest.name)
    scripts = _add_boot_scripts(files, runs, order)
    return Merged(packages=resolved, run_configs=runs, collisions=files.collisions,
                  scripts=scripts, tree=files)


def _add_archives(files: Tree, resolved: Sequence[Resolved], root: Path
                  ) -> tuple[dict[str, RunConfig], list[str]]:
    """Add every file of the *resolved* archives to *files* (read through the cache of
    ``$CAPSTAN_ROOT`` *root*); their run configurations, and the names of the packages
    that have one, in order."""
    runs: dict[str, RunConfig] = {}
    order: list[str] = []
    for dep in resolved:
        archive = read_cached(root, dep.path)
        if archive.run_yaml is not None:
            runs[dep.name] = parse_run(archive.run_yaml, dep.name, f"{dep.path}:meta/run.yaml")
            order.append(dep.name)
        for entry in archive.entries():
            files.add(entry, dep.name)
    return runs, order


def _add_boot_scripts(files: Tree, runs: dict[str, RunConfig], order: Sequence[str]
                      ) -> dict[str, str]:
    """Add ``/run/<config set>`` for each config set of the packages in *order*; their text."""
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
    return scripts


def collect(package: Path, root: Path, target: Path,
            options: MergeOptions = MergeOptions()) -> Collected:
    """Merge as :func:`merge` does and write the tree to *target* (Capstan's mpm-pkg).

    The tree is written into a new scratch directory beside *target* through directory
    descriptors, then published in one step: a half-written mpm-pkg is never seen, and
    the scratch of a killed collect is swept by the next one.
    """
    merged = merge(package, root, options)
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
    return Collected(packages=merged.packages, run_configs=merged.run_configs,
                     collisions=merged.collisions, scripts=merged.scripts, tree=target)
