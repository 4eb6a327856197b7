"""Image directories of the local repository: publishing one whole, and ``capstan
import`` (Capstan's image import: any qcow2, raw, VDI or VMDK file)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from capstan.core import timestamps
from capstan.core.errors import ImageError, InputError, LocalIOError, UsageError
from capstan.core.fs import (
    atomic_output,
    atomic_write,
    publish_dir,
    sha256_of,
    sweep,
    temp_dir,
    temp_path,
    write_error,
)
from capstan.services.store import LocalRepository, merged_index

__all__ = ["SUFFIXES", "ImportMeta", "Imported", "check_standalone", "import_image",
           "publish_image"]

#: qemu-img format -> the file suffix Capstan's drivers read ([fix]: VMDK as .vmw, not
#: .vmware; raw as .qemu, which the QEMU driver runs, not the unused .raw)
SUFFIXES = {"qcow2": "qemu", "raw": "qemu", "vdi": "vbox", "vmdk": "vmw", "vpc": "vhd",
            "vhdx": "vhdx"}
_GZIP = b"\x1f\x8b"
_DESCRIPTOR = b"# Disk DescriptorFile"


def check_standalone(path: Path, what: str) -> None:
    """Refuse (InputError, *path* deleted) an image that makes QEMU open another host
    file: a backing file, qcow2 data file or vmdk extent (``/etc/shadow`` as a disk)."""
    from capstan.image.loader import read_head, sniff_format
    from capstan.services.volumes import other_file

    try:
        other = other_file(path, sniff_format(read_head(path, "image")))
    except ImageError as err:
        path.unlink(missing_ok=True)
        raise InputError(f"{what}: {err}") from err
    if other:
        path.unlink(missing_ok=True)
        raise InputError(f"{what} reads another file ({other}): refused")


def publish_image(repo: LocalRepository, name: str, files: dict[str, Path],
                  index: Mapping[str, object], *, kernel: bool = False) -> None:
    """Replace image *name*'s directory by one holding *files* (moved in, by file
    name), *index* in ``index.yaml``, and what the old one holds for other
    platforms and nested images (a *kernel*'s *index* is merged in: see
    :func:`merged_index`). The caller holds the image's lock."""
    folder = repo.image_dir(name)
    index = merged_index(folder / "index.yaml", index, kernel=kernel)
    staged = temp_dir(repo.images / folder.name)
    try:
        for file_name, source in files.items():
            os.replace(source, staged / file_name)
        atomic_write(staged / "index.yaml", yaml.safe_dump(index, sort_keys=False).encode())
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                if entry.name in files or entry.name == "index.yaml":
                    continue
                if entry.is_dir(follow_symlinks=False):
                    os.rename(entry.path, staged / entry.name)  # ns/ holds ns/a
                else:
                    os.link(entry.path, staged / entry.name, follow_symlinks=False)
    except OSError as err:
        shutil.rmtree(staged, ignore_errors=True)
        raise write_error(folder, err) from err
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    publish_dir(staged, folder)


@dataclass(frozen=True)
class ImportMeta:
    """What ``capstan import`` records in ``index.yaml`` (Capstan's -v, -c, -d, -b)."""

    version: str = ""
    created: str = ""  # any time Capstan reads; empty: now
    description: str = ""
    build: str = ""


@dataclass(frozen=True)
class Imported:
    """An image file copied into the repository."""

    name: str
    path: Path
    format: str
    sha256: str


def _format_of(source: Path) -> str:
    """The qemu-img format of *source*; a gzip file or ``gs://`` URL is refused, as
    Capstan refuses it."""
    from capstan.image.loader import read_head, sniff_format

    if str(source).startswith("gs:/"):  # gs://b/x as a Path
        raise InputError(f"{source}: unsupported image format (a GCE image URL)")
    head = read_head(source, "image")
    if head.startswith(_GZIP):
        raise InputError(f"{source}: unsupported image format (gzip: unpack it first)")
    if head.startswith(_DESCRIPTOR):
        raise InputError(f"{source}: a VMDK descriptor reads another file (its extents): "
                         "refused; import a monolithic sparse VMDK")
    return sniff_format(head)


def import_image(root: Path, name: str, source: Path, meta: ImportMeta) -> Imported:
    """Copy image file *source* into the repository as *name* (Capstan's ``import``),
    stored under the suffix its format runs with, and write its ``index.yaml``."""
    created = timestamps.parse(meta.created) if meta.created else None
    if meta.created and created is None:
        raise UsageError(f"invalid created time {meta.created!r}: use RFC 3339 "
                         "(2017-09-14T18:08:00Z) or YYYY-MM-DD HH:MM")
    fmt = _format_of(source)
    repo = LocalRepository(root)
    target = repo.image_file(name, SUFFIXES[fmt])
    repo.images.mkdir(parents=True, exist_ok=True)
    with repo.lock(name):
        sweep(repo.images)
        copy = temp_path(repo.images / target.name)
        try:
            _copy(source, copy)
            check_standalone(copy, f"image {source}")
            digest = sha256_of(copy)
            index = {"format_version": "1", "version": meta.version,
                     "created": timestamps.rfc3339(created) if created else timestamps.now(),
                     "description": meta.description, "build": meta.build,
                     "sha256": digest, "source": str(source.absolute())}
            publish_image(repo, name, {target.name: copy}, index)
        finally:
            copy.unlink(missing_ok=True)
    return Imported(name, target, fmt, digest)


def _copy(source: Path, target: Path) -> None:
    try:
        with open(source, "rb") as src, atomic_output(target) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except OSError as err:
        raise LocalIOError(f"cannot copy {source}: {err.strerror}") from err
