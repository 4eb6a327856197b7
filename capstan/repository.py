"""The local repository under ``$CAPSTAN_ROOT``, in Capstan's layout.

``repository/<name>/<last segment of name>.<platform>`` holds an image and
``repository/<name>/index.yaml`` its metadata. Writers hold a per-image file
lock (``repository/.locks``) and publish files by rename.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from capstan.errors import LocalIOError, NotFound, UsageError

__all__ = ["LocalRepository", "atomic_write", "sha256_of"]


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the file at *path*, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write *data* to *path* through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise LocalIOError(f"cannot write {path}: {err.strerror}") from err


class LocalRepository:
    """Images in ``<root>/repository``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "repository"

    @staticmethod
    def check_name(name: str) -> str:
        """*name* if it is a valid image name (``a``, ``ns/a``), else UsageError."""
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise UsageError(f"invalid image name '{name}'")
        return name

    def image_dir(self, name: str) -> Path:
        """The directory of image *name*."""
        return self.images / self.check_name(name)

    def image_file(self, name: str, platform: str = "qemu") -> Path:
        """Where image *name* for *platform* lives (it may not exist)."""
        return self.image_dir(name) / f"{name.rsplit('/', 1)[-1]}.{platform}"

    def lock(self, name: str) -> FileLock:
        """The lock serialising writers of image *name*."""
        locks = self.images / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / (self.check_name(name).replace("/", "%") + ".lock")))

    def resolve(self, ref: str, platform: str = "qemu", kind: str = "image") -> Path:
        """A file path, a repository name or ``probe-loader``, as a file path."""
        path = Path(ref).expanduser()
        if path.is_file():
            return path
        from capstan.image.loader import PROBE_LOADER, probe_loader_path

        if ref == PROBE_LOADER:
            return probe_loader_path()
        if path.exists():
            raise NotFound(f"{ref} is a directory, not a {kind} file")
        try:
            candidate = self.image_file(ref, platform)
        except UsageError:
            candidate = None
        if candidate is not None and candidate.is_file():
            return candidate
        hint = (f"; pull it, or pass a file path (or '{PROBE_LOADER}' for the built-in probe)"
                if kind == "loader" else "")
        raise NotFound(f"no such {kind}: '{ref}' is neither a file nor in "
                       f"{self.images}{hint}")

    def write_index(self, name: str, description: str = "", version: str = "") -> None:
        """Write ``index.yaml`` for image *name* (Capstan's keys)."""
        import yaml

        created = time.strftime("%Y-%m-%d %H:%M",
                                time.localtime(_source_date_epoch() or time.time()))
        index = {"format_version": "1", "version": version, "created": created,
                 "description": description, "build": ""}
        atomic_write(self.image_dir(name) / "index.yaml",
                     yaml.safe_dump(index, sort_keys=False).encode())


def _source_date_epoch() -> float | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return float(value) if value and value.isdigit() else None
