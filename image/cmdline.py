"""The OSv kernel command line: validation, quoting and the on-disk area."""

from __future__ import annotations

import re
from collections.abc import Iterable

from capstan.core.errors import InputError

__all__ = [
    "AREA_OFFSET",
    "AREA_SIZE",
    "MAX_LENGTH",
    "area_bytes",
    "quote_arg",
    "read_area",
    "join",
    "split",
    "validate",
    "with_rootfs",
]

AREA_OFFSET = 512
AREA_SIZE = 32768 - 512
MAX_LENGTH = 1023
_OPTION_SEP = re.compile(r"(?<!\\)[ \t\n]+")
_BARE = re.compile(r'[!-~]+')
_SPECIAL = set(' ;&!"\\$')
_SPACE = 0x20  # characters below are control characters
_TILDE = 0x7E  # the last printable ASCII character


def split(cmdline: str) -> tuple[list[str], str]:
    """Split *cmdline* into loader options and the application part."""
    rest = cmdline.lstrip(" \t\n")
    options: list[str] = []
    while rest.startswith("-"):
        match = _OPTION_SEP.search(rest)
        token, rest = (rest, "") if match is None else (
            rest[:match.start()], rest[match.end():])
        options.append(token)
    return options, rest


def validate(cmdline: str) -> None:
    """Raise :class:`InputError` for a command line OSv would not boot."""
    raw = cmdline.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_LENGTH:
        raise InputError(
            f"command line is {len(raw)} bytes; OSv accepts at most {MAX_LENGTH}")
    if "\0" in cmdline:
        raise InputError("command line contains a NUL byte")
    options, app = split(cmdline)
    for option in options:
        if not option.startswith("--"):
            raise InputError(f"loader option {option!r} must start with '--'")
    bad = next((c for c in app if ord(c) > _TILDE or (ord(c) < _SPACE and c not in "\t\n")),
               None)
    if bad is not None:
        raise InputError(
            f"command line application part contains {bad!r}: OSv accepts only "
            "printable ASCII there (pass such values with --env=KEY=VALUE)")


def with_rootfs(cmdline: str, fs: str) -> str:
    """Prefix ``--rootfs=<fs>`` unless *cmdline* already chooses a root."""
    options, _ = split(cmdline)
    if any(o.startswith("--rootfs=") for o in options):
        return cmdline
    return f"--rootfs={fs} {cmdline}".rstrip()


def area_bytes(cmdline: str) -> bytes:
    """The whole command-line area: text, NUL, zeros to byte 32,767."""
    raw = cmdline.encode("utf-8", "surrogateescape")
    return raw + bytes(AREA_SIZE - len(raw))


def read_area(area: bytes) -> str:
    """The command line stored in *area* (bytes up to the first NUL)."""
    return area.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def quote_arg(arg: str) -> str:
    """Quote one application argument for OSv's command grammar (section 8.3)."""
    if not arg.isascii() or any(ord(c) < _SPACE or ord(c) > _TILDE for c in arg):
        raise InputError(f"argument {arg!r} has characters OSv cannot parse")
    if _BARE.fullmatch(arg) and not _SPECIAL.intersection(arg):
        return arg
    if "$" in arg:
        raise InputError(f"argument {arg!r} contains '$', which OSv always expands")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def join(args: Iterable[str]) -> str:
    """Quote and join *args* into one OSv command."""
    return " ".join(quote_arg(a) for a in args)
