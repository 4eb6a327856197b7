"""Small files read safely: regular files only, never waited on, never read past a bound."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from capstan.core.errors import CapstanError, NotFound

__all__ = ["read_bounded"]


def read_bounded(path: Path, error: type[CapstanError], limit: int, *,
                 follow: bool = True) -> bytes:
    """At most *limit* bytes of *path* (callers refuse a file that fills them).

    Opened without blocking and checked to be a regular file before it is read: a FIFO
    or a device where a small text file is expected is refused, never waited on. With
    *follow* false a symbolic link is refused too. Errors are *error* (NotFound when
    the file does not exist).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        with open(os.open(path, flags), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise error(f"cannot read {path}: not a regular file")
            return f.read(limit)
    except FileNotFoundError as err:
        raise NotFound(f"no such file: {path}") from err
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}") from err
