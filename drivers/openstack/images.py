"""Glance images made of pycapstan images: qcow2, tagged as Capstan tags them, reused
when Glance holds one with the same checksum."""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from capstan.core import proc
from capstan.core.errors import BackendError, CapstanError, NotFound
from capstan.drivers.base import StoredImage, UploadResult
from capstan.drivers.openstack.api import OpenStackApi

__all__ = ["TAGS", "GlanceStore"]

TAGS = ["tagOSv", "tagCapstan"]
SHA256_KEY = "owner_specified.openstack.sha256"  # set by openstacksdk's create_image
GIB = 1 << 30


class GlanceStore(OpenStackApi):
    """The OpenStack driver as an image store of Glance images."""

    # -- images ---------------------------------------------------------------

    def _our_images(self) -> list[Any]:
        conn = self.conn()
        return [i for i in self._call("images.list", lambda: list(conn.image.images(
            tag=TAGS[1]))) if TAGS[1] in (i.tags or [])]

    def find_image(self, checksum: str) -> str | None:
        """Our active Glance image whose checksum is *checksum* (md5, as Glance keeps it)."""
        for image in self._our_images():
            if image.checksum == checksum and image.status == "active":
                return str(image.id)
        return None

    def upload(self, image: Path, name: str, progress: Callable[..., None] | None = None,
               ) -> UploadResult:
        """A Glance image of *image* as qcow2 (reusing one with the same checksum)."""
        self.bytes_sent = 0
        with tempfile.TemporaryDirectory(prefix="capstan-openstack-") as tmp:
            facts = self.disks.info(image)
            disk = image
            if facts.format != "qcow2" or facts.backing_file:  # one self-contained qcow2
                disk = Path(tmp) / "disk.qcow2"
                proc.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(image), str(disk)])
            md5, sha256 = _hashes(disk)
            existing = self.find_image(md5)
            if existing:
                return UploadResult(existing, name, sha256, reused=True)
            glance = self.conn().image
            with open(disk, "rb") as f:
                created = self._call("images.create", lambda: glance.create_image(
                    name, data=f, md5=md5, sha256=sha256, disk_format="qcow2",
                    container_format="bare", tags=TAGS, allow_duplicates=True,
                    validate_checksum=False, wait=False,
                    min_disk=max(1, math.ceil(facts.virtual_size / GIB)),
                    hw_disk_bus="virtio", hw_vif_model="virtio", capstan_name=name[:255]))
            self.bytes_sent = disk.stat().st_size
        stored = self._call("images.get", lambda: glance.get_image(created.id))
        if stored.checksum != md5 or stored.status != "active":
            with contextlib.suppress(CapstanError):
                self._call("images.delete", lambda: glance.delete_image(created.id))
            raise BackendError(f"Glance stored image {created.id} as {stored.status} with "
                               f"checksum {stored.checksum}, not {md5} (deleted)")
        if progress:
            progress(self.bytes_sent)
        return UploadResult(str(created.id), name, sha256, reused=False,
                            bytes_sent=self.bytes_sent)

    def images(self) -> list[StoredImage]:
        """Our Glance images (their detail: format and status; their digest: the SHA-256
        of the qcow2 uploaded, as openstacksdk records it)."""
        return sorted((StoredImage(str(i.id), str(i.name),
                                   str((i.properties or {}).get(SHA256_KEY, "")),
                                   f"{i.disk_format}, {i.status}", str(i.created_at))
                       for i in self._our_images()), key=lambda r: r.created)

    def remove_image(self, ref: str) -> None:
        """Delete our Glance image *ref* (id or name)."""
        matches = [i for i in self._our_images() if ref in (i.id, i.name)]
        if not matches:
            raise NotFound(f"no pycapstan Glance image '{ref[:80]}'")
        glance = self.conn().image
        for image_id in [str(i.id) for i in matches]:
            self._call("images.delete", partial(glance.delete_image, image_id))


def _hashes(path: Path) -> tuple[str, str]:
    """MD5 (Glance's checksum) and SHA-256 of *path*, in one pass."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()
