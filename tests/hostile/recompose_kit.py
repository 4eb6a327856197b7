"""Helpers of the recompose attacks: changes with distinct mtimes, raw composes read back."""

from __future__ import annotations

import os
from pathlib import Path

_STAMP = [1_700_000_000_000_000_000]


def change(path: Path, data: bytes) -> None:
    """Write *data* to *path* with an mtime no earlier change used."""
    path.write_bytes(data)
    _STAMP[0] += 1_000_000_007
    os.utime(path, ns=(_STAMP[0], _STAMP[0]))


def compose(cli, tree: Path, out: Path) -> bytes:  # type: ignore[no-untyped-def]
    """Compose *tree* with the probe loader into the raw *out*; its bytes."""
    result = cli("compose", "-l", "probe-loader", "--disk-format", "raw", "-o", out, tree)
    assert result.code == 0, result.err
    return out.read_bytes()
