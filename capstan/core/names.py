"""One validator for every name: packages, images, instances, volumes and fleets.

A name becomes a file name under ``$CAPSTAN_ROOT`` (``packages/<name>.mpm``,
``repository/<name>/``, ``instances/<driver>/<name>``), a table row, a QEMU
option value or a libvirt domain, so wherever it comes from it must be a plain
word: ASCII letters, digits, ``.``, ``_``, ``+`` and ``-``, starting with a
letter or digit (so never ``.``, ``..``, a hidden file or an option), of bounded
length. Only an image may have namespaces, ``/``-separated (``cloudius/osv-base``),
each segment a valid name. Names given on the command line are usage errors
(exit 64); names read from a file or a remote are invalid input (exit 65).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Literal

from capstan.core.errors import InputError, UsageError

__all__ = ["KINDS", "Kind", "argument", "check_name", "is_valid", "problem"]

Kind = Literal["package", "image", "instance", "volume", "fleet", "service", "host"]

#: longest name of each kind (an image: the whole namespaced name)
KINDS: dict[str, int] = {"package": 128, "image": 255, "instance": 64, "volume": 128,
                         "fleet": 40, "service": 40, "host": 40}
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_MAX_SEGMENTS = 8
_SHOWN_MAX = 72  # characters of a name quoted in a message
_RULE = "letters, digits, '.', '_', '+' and '-', starting with a letter or digit"


def problem(name: object, kind: Kind) -> str | None:
    """Why *name* is not a valid *kind* name, or None when it is."""
    if not isinstance(name, str):
        return f"expected a string, not {type(name).__name__}"
    if not name:
        return "empty"
    if len(name) > KINDS[kind]:
        return f"longer than {KINDS[kind]} characters"
    segments = name.split("/") if kind == "image" else [name]
    if len(segments) > _MAX_SEGMENTS:
        return f"more than {_MAX_SEGMENTS - 1} namespaces"
    return next(filter(None, map(_segment_problem, segments)), None)


def _segment_problem(segment: str) -> str | None:
    """Why *segment* (one ``/``-separated part of a name) is invalid, or None."""
    if segment in ("", ".", ".."):
        return "empty, '.' and '..' segments are not allowed"
    if _SEGMENT.fullmatch(segment):
        return None
    if "/" in segment:  # only when kind is not image
        return "'/' is allowed only in an image's namespace (ns/name)"
    return f"use {_RULE}"


def is_valid(name: object, kind: Kind) -> bool:
    """Whether *name* is a valid *kind* name."""
    return problem(name, kind) is None


def _shown(name: object) -> str:
    """*name* quoted on one line: control characters escaped, long names cut."""
    text = ascii(name) if isinstance(name, str) else repr(name)
    return text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX - 3] + "...'"


def check_name(name: object, kind: Kind, where: str | None = None) -> str:
    """*name* if it is a valid *kind* name.

    Otherwise a UsageError (exit 64) when *where* is None (the command line), or an
    InputError (exit 65) naming *where* (the file, key or remote it came from; ``""``
    when a service checks a name its callers should have checked already).
    """
    why = problem(name, kind)
    if why is None:
        return str(name)
    message = f"invalid {kind} name {_shown(name)}: {why}"
    if where is None:
        raise UsageError(message)
    raise InputError(f"{where}: {message}" if where else message)


def argument(kind: Kind) -> Callable[[str], str]:
    """An argparse ``type=`` that accepts only valid *kind* names (else exit 64)."""

    def convert(text: str) -> str:
        why = problem(text, kind)
        if why is not None:
            raise argparse.ArgumentTypeError(f"invalid {kind} name {_shown(text)}: {why}")
        return text

    convert.__name__ = f"{kind} name"
    return convert
