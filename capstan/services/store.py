"""The local repository under ``$CAPSTAN_ROOT``, in Capstan's layout.

``repository/<name>/<last segment of name>.<platform>`` holds an image and
``repository/<name>/index.yaml`` its metadata. Writers hold a per-image file
lock (``<root>/locks``) and publish an image directory whole (capstan.core.fs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capstan.core import timestamps
from capstan.core.errors import NotFound, UsageError
from capstan.core.fs import atomic_write, lock, sha256_of
from capstan.core.names import check_name

if TYPE_CHECKING:
    from filelock import FileLock

__all__ = ["KERNEL_ENTRY", "LocalRepository", "merged_index"]

#: the ``index.yaml`` entry that records a kernel stored under an image's name
KERNEL_ENTRY = "kernel"


class LocalRepository:
    """Images in ``<root>/repository``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "repository"

    @staticmethod
    def check_name(name: str) -> str:
        """*name* if it is a valid image name (``a``, ``ns/a``), else UsageError."""
        return check_name(name, "image")

    def image_dir(self, name: str) -> Path:
        """The directory of image *name*."""
        return self.images / self.check_name(name)

    def image_file(self, name: str, platform: str = "qemu") -> Path:
        """Where image *name* for *platform* lives (it may not exist)."""
        return self.image_dir(name) / f"{name.rsplit('/', 1)[-1]}.{platform}"

    def lock(self, name: str) -> FileLock:
        """The lock serialising writers of image *name*."""
        return lock(self.root, "image", self.check_name(name))

    def resolve(self, ref: str, platform: str = "qemu", kind: str = "image") -> Path:
        """A file path, a repository name or ``probe-loader``, as a file path."""
        path = Path(ref).expanduser()
        if path.is_file():
            return path
        from capstan.image.loader import PROBE_LOADER, probe_loader_path

        if ref == PROBE_LOADER:
            return probe_loader_path()
        if path.exists():
            raise NotFound(f"{ref} is not a regular file, so not a {kind} file")
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

    def write_index(self, name: str, description: str = "", version: str = "", *,
                    image: Path | None = None,
                    packages: Sequence[Mapping[str, str]] = ()) -> None:
        """Write ``index.yaml`` for image *name* (Capstan's keys), with the SHA-256 of
        its *image* file and the *packages* (name, version, sha256) composed into it."""
        import yaml

        created = timestamps.build_time()
        index: dict[str, Any] = {"format_version": "1", "version": version,
                                 "created": created, "description": description, "build": ""}
        if image is not None:
            index["sha256"] = sha256_of(image)
        if packages:
            index["packages"] = [dict(p) for p in packages]
        path = self.image_dir(name) / "index.yaml"
        atomic_write(path, yaml.safe_dump(merged_index(path, index), sort_keys=False).encode())


def merged_index(path: Path, index: Mapping[str, Any], *,
                 kernel: bool = False) -> dict[str, Any]:
    """The ``index.yaml`` to write over *path* for a new disk image's *index*, or with
    *kernel* for a kernel's: a kernel and an image may share a name, and a kernel's
    record is the index's ``kernel`` entry, so neither overwrites the other's digest."""
    from capstan.core.yamlfile import load_cached

    old = load_cached(path, f"index {path}")
    if kernel:
        return {**old, KERNEL_ENTRY: index}
    if isinstance(old.get(KERNEL_ENTRY), dict):
        return {**index, KERNEL_ENTRY: old[KERNEL_ENTRY]}
    return dict(index)

