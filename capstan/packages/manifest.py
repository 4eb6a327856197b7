"""Package manifests (``meta/package.yaml``), versions, ``run.yaml`` and ``.capstanignore``.

Formats per Capstan (reference 6.2, 6.8, 8, 9). Archives are in :mod:`capstan.packages.mpm`,
resolution and merging in :mod:`capstan.packages.resolve`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from capstan.core import timestamps
from capstan.core.errors import Conflict, InputError, NotFound, UsageError
from capstan.core.fs import TEMP_PREFIX
from capstan.core.names import check_name
from capstan.core.yamlfile import dump, line_of, load_strict, read_bounded
from capstan.packages.runtimes import RunConfig, parse_run

__all__ = ["Manifest", "ignore_regex", "ignore_rules", "ignored", "init_manifest",
           "load_manifest", "load_run", "manifest_or_default", "parse_manifest", "satisfies",
           "walk_package"]

LOG = logging.getLogger(__name__)
ANONYMOUS = ("App", "App", "Anonymous")  # Capstan's default manifest: name, title, author
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
        when = timestamps.parse(self.created)
        if self.created:  # RFC 3339 when it is a time; omitted, not "N/A", when unknown
            data["created"] = self.created if when is None else timestamps.rfc3339(when)
        if self.platform:
            data["platform"] = self.platform
        if self.constraints:
            data["constraints"] = self.constraints
        return dump(data, sort_keys=False)


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
    require = _checked_fields(data, where)
    return Manifest(str(data["name"]), str(data["title"]), str(data["author"]),
                    str(data.get("version") or ""), tuple(require),
                    _created(data.get("created")), str(data.get("platform") or ""),
                    dict(data.get("binary") or {}),
                    {str(k): str(v) for k, v in constraints.items()})


def _checked_fields(data: dict[Any, Any], where: str) -> list[str]:
    """Check the required and scalar fields of manifest *data*; its ``require`` list."""
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
    return require


def _created(value: object) -> str:
    """``created`` as text; a time YAML parsed itself as RFC 3339."""
    if isinstance(value, dt.datetime):
        return timestamps.rfc3339(value)
    return str(value or "")


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


def manifest_or_default(package: Path) -> Manifest:
    """``<package>/meta/package.yaml``, or, when a package directory has none,
    Capstan's default manifest (an anonymous package: name and title ``App``, author
    ``Anonymous``), as ``package compose`` and ``collect`` take it."""
    if not package.is_dir():
        raise NotFound(f"no such package directory: {package}")
    if (package / "meta" / "package.yaml").exists():
        return load_manifest(package)
    LOG.warning("%s has no meta/package.yaml: assuming the default manifest "
                "(package App by Anonymous)", package.absolute())
    return Manifest(*ANONYMOUS)


def load_run(package: Path, name: str) -> RunConfig | None:
    """``<package>/meta/run.yaml``, if there is one."""
    path = package / "meta" / "run.yaml"
    return parse_run(load_strict(path), name, str(path)) if path.is_file() else None


# -- .capstanignore --------------------------------------------------------------


def ignore_rules(package: Path, *, builtin: bool = True) -> list[re.Pattern[str]]:
    """The patterns of ``.capstanignore`` plus (*builtin*) Capstan's own, compiled."""
    lines: list[str] = []
    path = package / ".capstanignore"
    if path.is_file() or path.is_symlink():
        text = read_bounded(path, InputError, follow=False).decode(errors="replace")
        lines = [ln.strip() for ln in text.splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    if "/meta" in patterns:
        raise InputError(f"{path}: please remove '/meta' from .capstanignore")
    return [ignore_regex(p) for p in [*patterns, *(_BUILTIN_IGNORES if builtin else ())]]


def ignore_regex(pattern: str) -> re.Pattern[str]:
    """One ``.capstanignore`` pattern (``*``, ``/**/``, a trailing ``/*``) as a regex."""
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


def walk_package(root: Path, rules: Sequence[re.Pattern[str]]) -> list[tuple[str, Path]]:
    """(``/relative``, path) of everything below *root* not ignored, sorted. pycapstan's own
    temporaries (a ``capstan.lock`` or ``.mpm`` another command is writing) are never part
    of a package."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(dirnames):
            rel = "/" + (here / name).relative_to(root).as_posix()
            if name.startswith(TEMP_PREFIX) or ignored(rules, rel):
                dirnames.remove(name)
            else:
                found.append((rel, here / name))
        for name in filenames:
            rel = "/" + (here / name).relative_to(root).as_posix()
            if not name.startswith(TEMP_PREFIX) and not ignored(rules, rel):
                found.append((rel, here / name))
    return sorted(found)



def init_manifest(package: Path, manifest: Manifest, *, force: bool = False) -> Path:
    """Write *manifest* as ``meta/package.yaml``, created now (refusing to overwrite one
    unless *force*)."""
    path = package / "meta" / "package.yaml"
    if path.exists() and not force:
        raise Conflict(f"{path} exists: use --force to overwrite it")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", manifest.name):
        raise UsageError(f"invalid package name '{manifest.name}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = replace(manifest, created=timestamps.now())
    path.write_text(manifest.to_yaml())
    return path
