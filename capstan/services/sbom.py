"""``capstan image sbom``: a CycloneDX JSON SBOM of an OSv image.

The SBOM names the image (its SHA-256), the packages composed into it (name,
version and SHA-256 of the ``.mpm``, from the image's ``index.yaml`` record or a
``capstan.lock``) and every regular file of its ROFS with its SHA-256.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capstan import __version__
from capstan.core import fs
from capstan.core.config import Config
from capstan.core.errors import InputError, ToolMissing
from capstan.core.fs import sha256_of
from capstan.core.yamlfile import load_strict
from capstan.services.store import LocalRepository

__all__ = ["PackageRecord", "SbomSummary", "image_packages", "write_sbom"]
_SHA256_HEX = 64  # hex digits of a SHA-256 digest


@dataclass(frozen=True)
class PackageRecord:
    """A package composed into an image."""

    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class SbomSummary:
    """What ``capstan image sbom`` wrote."""

    image: str
    sha256: str
    packages: int
    files: int
    output: str


def write_sbom(config: Config, ref: str, output: Path | None = None,
               lock: Path | None = None) -> SbomSummary:
    """Write the SBOM of image *ref* (a repository name or a file) to *output*
    (default ``<image file name>.cdx.json`` here); packages from *lock* when given,
    else from the image's record."""
    from capstan.image.inspect import OsvImage

    bom_lib = _cyclonedx()
    repo = LocalRepository(config.root)
    path = repo.resolve(ref).absolute()
    images = repo.images.absolute()
    name = path.parent.relative_to(images).as_posix() if path.is_relative_to(images) \
        else path.name
    index = path.parent / "index.yaml"
    record = load_strict(index) if name != path.name and index.is_file() else {}
    record = record if isinstance(record, dict) else {}
    packages = _lock_packages(lock) if lock else image_packages(record)
    digest = sha256_of(path)
    with OsvImage(path) as img:
        files = list(_file_digests(img))
    text = bom_lib(name, str(record.get("version") or ""), digest, packages, files)
    target = output or Path(f"{path.name}.cdx.json")
    fs.atomic_write(target, text.encode())
    return SbomSummary(ref, digest, len(packages), len(files), str(target))


def image_packages(record: Mapping[str, Any]) -> list[PackageRecord]:
    """The ``packages`` an ``index.yaml`` record lists (each name, version, sha256)."""
    found = record.get("packages") or []
    if not isinstance(found, list):
        raise InputError("index.yaml: 'packages' is not a list")
    return [_package(str(p.get("name", "")), p) for p in found if isinstance(p, dict)]


def _lock_packages(lock: Path) -> list[PackageRecord]:
    data = load_strict(lock) or {}
    pinned = data.get("packages") if isinstance(data, dict) else None
    if not isinstance(pinned, dict):
        raise InputError(f"{lock}: not a capstan.lock (no 'packages' mapping)")
    return [_package(str(name), entry if isinstance(entry, dict) else {})
            for name, entry in sorted(pinned.items())]


def _package(name: str, entry: Mapping[str, Any]) -> PackageRecord:
    digest = str(entry.get("sha256") or "")
    if not name or len(digest) != _SHA256_HEX or set(digest) - set("0123456789abcdef"):
        raise InputError(f"package record {name or '(unnamed)'}: needs a name and a "
                         "SHA-256 digest")
    return PackageRecord(name, str(entry.get("version") or ""), digest)


def _file_digests(img: Any) -> Iterator[tuple[str, int, str]]:
    """(path, size, sha256) of every regular file of *img*'s ROFS."""
    for item in img.items("/"):
        if item.kind == "file":
            yield item.path, item.size, img.digest(item.path)


def _cyclonedx() -> Any:
    """The SBOM writer, or ToolMissing naming the extra to install."""
    try:
        from cyclonedx.model import HashAlgorithm, HashType, Property
        from cyclonedx.model.bom import Bom
        from cyclonedx.model.component import Component, ComponentType
        from cyclonedx.output.json import JsonV1Dot6
        from packageurl import PackageURL
    except ImportError as err:
        raise ToolMissing("capstan image sbom needs cyclonedx-python-lib: pip install "
                          "'pycapstan[sbom]'") from err

    def sha(digest: str) -> list[Any]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=digest)]

    def build(name: str, version: str, digest: str, packages: list[PackageRecord],
              files: list[tuple[str, int, str]]) -> str:
        bom = Bom()
        bom.metadata.tools.components.add(Component(
            type=ComponentType.APPLICATION, name="pycapstan", version=__version__))
        image = Component(type=ComponentType.CONTAINER, name=name, version=version or None,
                          bom_ref=f"image:{name}", hashes=sha(digest))
        bom.metadata.component = image
        members = [Component(type=ComponentType.LIBRARY, name=p.name,
                             version=p.version or None, bom_ref=f"package:{p.name}",
                             hashes=sha(p.sha256),
                             purl=PackageURL("generic", name=p.name,
                                             version=p.version or None))
                   for p in packages]
        bom.components.update(members)
        bom.components.update(
            Component(type=ComponentType.FILE, name=path, bom_ref=f"file:{path}",
                      hashes=sha(h), properties=[Property(name="capstan:size",
                                                          value=str(size))])
            for path, size, h in files)
        bom.register_dependency(image, members)
        text: str = JsonV1Dot6(bom).output_as_string(indent=2)
        return text

    return build
