"""``capstan package update``: pull the local packages that their remote has newer.

Capstan's rules (reference 10.5): versions ``X[.Y[.Z]]`` compare by value (``1.2``
equals ``1.2.0``, ``1.10`` is above ``1.9``); a package is updated when the remote
version is higher, when either version is not of that form (said explicitly:
"unknown version"), or, with *created*, when either ``created`` is missing or
the local one is earlier. A package absent from every remote is skipped
([fix]: Capstan panicked on GitHub).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from capstan.core import timestamps
from capstan.core.config import Config
from capstan.core.errors import CapstanError, InputError
from capstan.core.fs import temp_path
from capstan.core.yamlfile import load_file, load_strict
from capstan.packages.manifest import Manifest, parse_manifest, version_key
from capstan.remotes.catalog import remotes
from capstan.remotes.download import fetch
from capstan.services.repository import PullOptions, pull_package

__all__ = ["UpdateOptions", "UpdateRow", "needs_update", "update_packages"]

_VERSION = re.compile(r"\d{1,3}(\.\d{1,3}){0,2}")


@dataclass(frozen=True)
class UpdateOptions:
    """What ``package update`` was asked."""

    pattern: str = ""  # substring of the package names to consider
    created: bool = False  # also update when the remote was created later
    s3: bool = False
    insecure: bool = False


@dataclass(frozen=True)
class UpdateRow:
    """One local package and what ``package update`` did with it."""

    name: str
    local: str
    remote: str
    status: str


def needs_update(local: Manifest, remote: Manifest, *, by_created: bool) -> str | None:
    """Why *remote* replaces *local* under Capstan's rules, or None if it does not."""
    if not (_VERSION.fullmatch(local.version) and _VERSION.fullmatch(remote.version)):
        return "unknown version"
    if version_key(remote.version) > version_key(local.version):
        return "newer version"
    if by_created:
        mine, theirs = timestamps.parse(local.created), timestamps.parse(remote.created)
        if mine is None or theirs is None:
            return "unknown created time"
        if _aware(mine) < _aware(theirs):
            return "created later"
    return None


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.astimezone()


def _remote_manifest(config: Config, name: str, s3: bool) -> Manifest | None:
    """The first remote's manifest of package *name*, or None if no remote has it."""
    target = temp_path(config.root / "packages" / f"{name}.yaml")
    for remote in remotes(config, s3):
        hit = remote.package(name)
        if hit is None:
            continue
        try:
            fetch(hit.files[0], target, quiet=True)
            return parse_manifest(load_file(target, hit.source), f"{hit.source}: {name}.yaml")
        finally:
            target.unlink(missing_ok=True)
    return None


def update_packages(config: Config, options: UpdateOptions) -> list[UpdateRow]:
    """Check every local package whose name contains *options.pattern*; pull those
    the rules say to (one row each, by name)."""
    folder = config.root / "packages"
    rows = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        if options.pattern not in path.stem:
            continue
        try:
            local = parse_manifest(load_strict(path), str(path))
        except CapstanError as err:
            rows.append(UpdateRow(path.stem, "", "", f"skipped: {err}"))
            continue
        rows.append(_update_one(config, local, options))
    return rows


def _update_one(config: Config, local: Manifest, options: UpdateOptions) -> UpdateRow:
    remote = _remote_manifest(config, local.name, options.s3)
    if remote is None:
        return UpdateRow(local.name, local.version, "", "not in any remote repository")
    if remote.name != local.name:
        raise InputError(f"remote manifest of {local.name} names package {remote.name}")
    why = needs_update(local, remote, by_created=options.created)
    if why is None:
        return UpdateRow(local.name, local.version, remote.version, "already latest")
    pull_package(config, local.name, PullOptions(s3=options.s3, force=True, quiet=True,
                                                 insecure=options.insecure))
    return UpdateRow(local.name, local.version, remote.version, f"updated ({why})")
