"""Size arguments: ``512M``, ``10G``, ``1.5GiB``, ``2048`` (MiB)."""

from __future__ import annotations

import re

from capstan.core.errors import UsageError

__all__ = ["format_size", "parse_size"]

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_KIB = 1 << 10
MAX_SIZE = 1 << 60  # 1 EiB: more is no disk or memory size (and overflows a C off_t)
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in *text*: binary units K, M, G, T (optional ``i``/``B``); bare = MiB."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"invalid size '{text}': use a number with K, M, G or T, e.g. 512M")
    number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if number > MAX_SIZE:  # also inf, from a number of hundreds of digits
        raise UsageError(f"invalid size '{text[:32]}': larger than 1 EiB")
    value = int(number)
    if value <= 0:
        raise UsageError(f"invalid size '{text}': must be larger than zero")
    return value


def format_size(size: int) -> str:
    """*size* in bytes as a short human string (``4.0M``)."""
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < _KIB:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= _KIB
    return f"{value:.1f}T"
