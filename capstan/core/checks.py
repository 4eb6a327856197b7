"""What a ``capstan doctor`` check returns, and helpers the checks of the host and of
each driver share (install commands, tool versions)."""

from __future__ import annotations

import enum
import importlib.util
import platform
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capstan.core import proc
from capstan.core.errors import CapstanError

__all__ = ["Finding", "Status", "has_module", "install_command", "tool_check", "version_of"]

_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


class Status(enum.Enum):
    """How one check came out."""

    OK = "ok"
    WARN = "warn"  # works, but not as well as it could
    MISSING = "missing"  # an optional backend is not installed
    FAIL = "fail"  # capstan cannot run guests until this is fixed


@dataclass(frozen=True)
class Finding:
    """The result of one check."""

    check: str
    status: Status
    detail: str
    fix: str = ""


def has_module(name: str) -> bool:
    """Whether module *name* (dotted) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


def install_command(debian: str, fedora: str, mac: str) -> str:
    """The install command for this platform."""
    if platform.system() == "Darwin":
        return mac
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        release = ""
    redhat = re.search(r"^ID(_LIKE)?=.*(fedora|rhel|centos)", release, re.MULTILINE)
    return fedora if redhat else debian


def version_of(argv: list[str]) -> str:
    """The version *argv* prints (its first line when no version number shows)."""
    out = proc.run(argv, timeout=10)
    text = (out.stdout or out.stderr).decode(errors="replace")
    match = _VERSION.search(text)
    return match.group(1) if match else text.strip().splitlines()[0]


def tool_check(check: str, program: str, argv: list[str] | None,
               fix: str) -> Callable[[Any], Finding]:
    """A check that *program* is on PATH and (with *argv*) prints its version."""

    def probe(config: Any) -> Finding:
        path = shutil.which(program)
        if path is None:
            return Finding(check, Status.MISSING, f"{program} not found on PATH", fix)
        if argv is None:
            return Finding(check, Status.OK, path)
        try:
            return Finding(check, Status.OK, f"{path} {version_of([path, *argv])}")
        except CapstanError as err:
            return Finding(check, Status.WARN, f"{path} does not run: {err}", fix)

    return probe
