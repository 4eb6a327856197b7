"""The one way a value goes into a QEMU option string (``-drive file=...,format=...``).

QEMU splits an option string on ``,`` and reads ``,,`` as a literal comma, so a value
holding a comma, written as is, ends the value and starts a new option: a file named
``x.img,file=real.img`` would attach ``real.img``. Every value built into ``-drive``,
``-chardev``, ``-netdev``, ``-device``, ``-qmp`` or ``-name`` passes through
:func:`escape` (or :func:`path`, :func:`join`); values QEMU cannot take are refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from capstan.core.errors import InputError

__all__ = ["escape", "join", "path"]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def escape(value: str | int, what: str = "value") -> str:
    """*value* as one value of a QEMU option string: each ``,`` doubled.

    Control characters (NUL, newline...) are refused with :class:`InputError`
    naming *what* the value is.
    """
    text = str(value)
    if _UNSAFE.search(text):
        raise InputError(f"cannot give QEMU the {what} {text!r}: it holds a control character")
    return text.replace(",", ",,")


def path(value: str | os.PathLike[str], what: str = "path") -> str:
    """*value* made absolute (not normalised: ``..`` stays as the kernel reads it), escaped.

    An absolute path never starts with a protocol prefix (``nbd:``, ``json:``), so QEMU
    takes it as a file name, whatever it contains.
    """
    return escape(os.path.join(os.getcwd(), os.fspath(value)), what)


def join(head: str, values: Mapping[str, str | int | os.PathLike[str]]) -> str:
    """``head,key=value,...`` with every value escaped (``Path`` values made absolute).

    *head* and the keys are our own text (``socket``, ``virtio-blk-pci``), never input.
    """
    parts = [head] if head else []
    for key, value in values.items():
        text = path(value, key) if isinstance(value, os.PathLike) else escape(value, key)
        parts.append(f"{key}={text}")
    return ",".join(parts)
