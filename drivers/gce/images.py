"""GCE images made of pycapstan images: the ``.tar.gz`` Compute Engine imports, sent to
``gce_bucket``, then ``images.insert``; labelled with the image's SHA-256 so that the
same bytes reuse the same image."""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capstan.core.errors import CapstanError, ConfigError, NotFound
from capstan.drivers.base import StoredImage, UploadResult
from capstan.drivers.cloud import label_value
from capstan.drivers.gce.api import GceApi

__all__ = ["DIGEST", "LABEL", "GceImages"]

LABEL = "capstan-managed"
DIGEST = "capstan-digest"
CHUNK = 8 << 20  # resumable upload chunks (a multiple of 256 KiB)


class GceImages(GceApi):
    """The GCE driver as an image store of GCE images."""

    # -- images ---------------------------------------------------------------

    def _our_images(self) -> list[Any]:
        request = {"project": self._auth()[1], "filter": f'labels.{LABEL} = "true"'}
        found = self._call("images.list",
                           lambda: list(self.client("images").list(request=request)))
        return [i for i in found if i.labels.get(LABEL) == "true"]

    def find_image(self, digest: str) -> str | None:
        """Our READY image made from an image with SHA-256 *digest*; a FAILED one is removed."""
        for image in self._our_images():
            if f"sha256:{digest}" not in image.description:
                continue
            if image.status == "READY":
                return str(image.name)
            if image.status == "FAILED":
                self._delete_image(str(image.name))
        return None

    def upload(self, image: Path, name: str, progress: Callable[..., None] | None = None,
               ) -> UploadResult:
        """Make a GCE image of *image* (reusing one made of the same bytes)."""
        digest = self.disks.facts(image).sha256
        self.bytes_sent = 0
        existing = self.find_image(digest)
        if existing:
            return UploadResult(existing, name, digest, reused=True)
        if not self.bucket:
            raise ConfigError("gce_bucket is not set: the image is uploaded there first")
        image_name = f"{_slug(name)[:49]}-{digest[:12]}"
        blob = self.client("storage").bucket(self.bucket).blob(f"capstan/{digest}.tar.gz",
                                                              chunk_size=CHUNK)
        try:
            with tempfile.TemporaryDirectory(prefix="capstan-gce-") as tmp:
                tarball = Path(tmp) / "disk.tar.gz"
                self.disks.export(image, tarball, "gce")
                blob.metadata = {LABEL: "true", DIGEST: digest}
                with open(tarball, "rb") as f:  # no size given: a resumable upload, always
                    self._call("upload to Cloud Storage", blob.upload_from_file, file_obj=f,
                               size=None, content_type="application/gzip")
                self.bytes_sent = tarball.stat().st_size
            if progress:
                progress(self.bytes_sent)
            self._insert_image(image_name, name, digest,
                               f"https://storage.googleapis.com/{self.bucket}/{blob.name}")
        finally:
            with contextlib.suppress(CapstanError):
                self._call("delete the uploaded object", blob.delete)
        return UploadResult(image_name, name, digest, reused=False, bytes_sent=self.bytes_sent)

    def _insert_image(self, image_name: str, name: str, digest: str, source: str) -> None:
        """images.insert from the tarball at *source*; a failed image is deleted."""
        from google.cloud import compute_v1

        resource = compute_v1.Image(
            name=image_name, description=f"pycapstan image {name} sha256:{digest}",
            raw_disk=compute_v1.RawDisk(source=source), architecture="X86_64",
            labels={LABEL: "true", DIGEST: digest[:63], "capstan-name": label_value(name)})
        operation = self._call("images.insert", self.client("images").insert_unary,
                               project=self.project, image_resource=resource)
        try:
            self._wait("images.insert", operation)
        except CapstanError:
            with contextlib.suppress(CapstanError):
                self._delete_image(image_name)
            raise

    def _delete_image(self, image_name: str) -> None:
        operation = self._call("images.delete", self.client("images").delete_unary,
                               project=self.project, image=image_name)
        self._wait("images.delete", operation)

    def images(self) -> list[StoredImage]:
        """Our GCE images (their detail: size and status)."""
        rows = [StoredImage(str(image.id), str(image.name),
                            image.description.rpartition("sha256:")[2],
                            f"{image.disk_size_gb} GiB, {image.status}",
                            str(image.creation_timestamp)) for image in self._our_images()]
        return sorted(rows, key=lambda r: r.created)

    def remove_image(self, ref: str) -> None:
        """Delete our GCE image *ref* (name, id or the name it was uploaded under)."""
        matches = [i for i in self._our_images()
                   if ref in (i.name, str(i.id)) or i.labels.get("capstan-name") == ref]
        if not matches:
            raise NotFound(f"no pycapstan GCE image '{ref[:80]}' in project {self.project}")
        for image in matches:
            self._delete_image(str(image.name))


def _slug(name: str) -> str:
    """*name* as the start of a GCE resource name."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return slug if slug[:1].isalpha() else f"capstan-{slug}".rstrip("-")
