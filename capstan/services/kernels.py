"""Kernels in the local repository: OSv's kernel ELF for direct boot (``run --kernel
NAME``), imported with ``base import --kernel`` (``pull -p kernel`` is in
:mod:`capstan.services.repository`)."""

from __future__ import annotations

from pathlib import Path

from capstan.core.config import Config
from capstan.image.kernel import read_kernel
from capstan.services.repository import KERNEL, FileImport, Pulled, import_file

__all__ = ["import_kernel"]


def import_kernel(config: Config, source: Path, name: str, description: str = "",
                  version: str = "") -> Pulled:
    """Copy OSv's kernel ELF (``loader-stripped.elf``) into the repository as kernel
    *name*; the copy is checked to be a PVH kernel (errors name *source*)."""
    fields = {"version": version, "description": description}
    return import_file(config, source, name,
                       FileImport(KERNEL, fields, check=lambda copy: read_kernel(copy, source)))
