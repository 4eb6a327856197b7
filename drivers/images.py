"""Image stores: a cloud's machine images made of pycapstan images, with a typed upload
result (AMIs, GCE images, Glance images)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ImageStore", "StoredImage", "UploadResult"]


@dataclass(frozen=True)
class UploadResult:
    """What :meth:`ImageStore.upload` made, or found made of the same bytes."""

    id: str  # the store's identifier (AMI id, GCE image name, Glance id)
    name: str  # the name it was uploaded under
    digest: str  # SHA-256 of the bytes the store keys it by
    reused: bool  # an image of the same bytes was there already: nothing was sent
    bytes_sent: int = 0


@dataclass(frozen=True)
class StoredImage:
    """A machine image in a cloud's store, made by pycapstan."""

    id: str
    name: str
    digest: str
    detail: str = ""  # the store's own words: snapshot ids, size and status
    created: str = ""


class ImageStore(ABC):
    """A cloud's machine images made of pycapstan images (AMIs, GCE images, Glance
    images); a driver with :attr:`Capability.IMAGES` is also one."""

    @abstractmethod
    def upload(self, image: Path, name: str,
               progress: Callable[..., None] | None = None) -> UploadResult:
        """A machine image of *image*, reusing one made of the same bytes."""

    @abstractmethod
    def images(self) -> list[StoredImage]:
        """The images pycapstan made in this store, oldest first."""

    @abstractmethod
    def remove_image(self, ref: str) -> None:
        """Delete image *ref* (id or name), or NotFound."""
