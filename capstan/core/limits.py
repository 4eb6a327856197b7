"""Bounds on what untrusted compressed data may expand to, and a reader that enforces them.

A gzip stream expands at most ~1032:1; a legitimate package or image expands far less.
Whatever reads compressed input from outside reads it through :class:`CappedReader`, so a
bomb is refused (exit 65) after at most :func:`expansion_limit` bytes, in constant memory.
"""

from __future__ import annotations

import gzip
import io
from typing import BinaryIO

from capstan.core.errors import InputError

__all__ = ["ABSOLUTE_LIMIT", "RATIO", "YAML_ALIASES", "YAML_BYTES", "YAML_DEPTH", "YAML_EXPANDED",
           "CappedReader", "expansion_limit"]

RATIO = 200  # expanded bytes per compressed byte
FLOOR = 64 << 20  # small inputs may always expand this far
ABSOLUTE_LIMIT = 64 << 30
#: bounds of a YAML document (see :mod:`capstan.core.yamlfile`)
YAML_BYTES = 1 << 20
YAML_DEPTH = 64
YAML_ALIASES = 256
YAML_EXPANDED = 4 * YAML_BYTES


def expansion_limit(compressed: int) -> int:
    """How many bytes *compressed* bytes of untrusted gzip data may expand to."""
    return min(ABSOLUTE_LIMIT, max(FLOOR, RATIO * compressed))


class CappedReader(io.RawIOBase):
    """A read-only stream over *inner* that refuses to deliver more than *limit* bytes."""

    def __init__(self, inner: BinaryIO | gzip.GzipFile, limit: int, what: str) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.what = what
        self.done = 0

    def readable(self) -> bool:
        """Always true."""
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill *buffer*; InputError once the total passes the limit."""
        view = memoryview(buffer)
        data = self.inner.read(min(len(view), self.limit - self.done + 1))
        self.done += len(data)
        if self.done > self.limit:
            raise InputError(f"{self.what}: expands beyond {self.limit} bytes "
                             "(a decompression bomb?)")
        view[:len(data)] = data
        return len(data)
