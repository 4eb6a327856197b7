"""What every remote repository offers: packages, images and a listing."""

from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

from capstan.remotes.download import Artifact

__all__ = ["Found", "Remote", "host_arch"]


def host_arch() -> str:
    """``x86_64`` or ``aarch64``, as OSv names its release assets."""
    machine = platform.machine().lower()
    return "aarch64" if machine in ("aarch64", "arm64") else "x86_64"


@dataclass(frozen=True)
class Found:
    """What a remote holds for a name: the files to fetch, and where it was found."""

    files: tuple[Artifact, ...]
    source: str


class Remote(ABC):
    """One remote repository."""

    label: str

    @abstractmethod
    def package(self, name: str) -> Found | None:
        """``<name>.yaml`` and ``<name>.mpm``, or None."""

    @abstractmethod
    def image(self, name: str, platform: str) -> Found | None:
        """The image file (and ``index.yaml`` where there is one), or None."""

    @abstractmethod
    def names(self) -> Iterable[tuple[str, str]]:
        """(kind, name) of everything the remote offers: kind is image or package."""
