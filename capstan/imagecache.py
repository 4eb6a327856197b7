"""Cached facts about image files: format, sha256 and command line.

Keyed by device, inode, size and mtime, so a changed file is read again. The
cache is advisory: a lost update costs one recomputation, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from capstan.errors import ImageError, LocalIOError
from capstan.repository import atomic_write

__all__ = ["ImageFacts", "image_facts"]

_MAX_ENTRIES = 256


@dataclass(frozen=True)
class ImageFacts:
    """What a run needs to know about an image file."""

    format: str
    sha256: str
    cmdline: str | None  # None: not an OSv image (no command-line area)


def image_facts(root: Path, path: Path) -> ImageFacts:
    """The facts of *path*, from ``<root>/cache/images.json`` when still valid."""
    from capstan.image.loader import read_head, sniff_format

    path = path.resolve()
    try:
        st = path.stat()
    except OSError as err:
        raise LocalIOError(f"cannot read image {path}: {err.strerror}") from err
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cache = root / "cache" / "images.json"
    entries = _load(cache)
    entry = entries.get(str(path))
    if entry and entry.get("key") == key:
        try:
            return ImageFacts(**entry["facts"])  # type: ignore[arg-type]
        except TypeError:
            pass  # written by another version: recompute
    facts = ImageFacts(sniff_format(read_head(path, "image")), _sha256(path), _cmdline(path))
    entries.pop(str(path), None)
    entries[str(path)] = {"key": key, "facts": asdict(facts)}
    while len(entries) > _MAX_ENTRIES:
        del entries[next(iter(entries))]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, json.dumps(entries).encode())
    except (LocalIOError, OSError):
        pass  # a read-only root still runs images, just without the cache
    return facts


def _load(cache: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(cache.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cmdline(path: Path) -> str | None:
    from capstan.image.inspect import OsvImage

    try:
        with OsvImage(path) as img:
            return img.cmdline
    except ImageError:
        return None

