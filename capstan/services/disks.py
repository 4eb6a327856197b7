"""Cached facts about image files (format, sha256, command line), and the disk service
handed to drivers (:class:`LocalDisks`: overlays, conversions, volume probes).

Facts are keyed by device, inode, size and mtime, so a changed file is read again. The
cache is advisory: a lost update costs one recomputation, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from capstan.core import proc
from capstan.core.config import Config
from capstan.core.errors import ImageError, InputError, LocalIOError
from capstan.core.fs import atomic_write, sha256_of
from capstan.drivers.base import (
    OVERLAY,
    DiskDelta,
    DiskFacts,
    DiskForm,
    DiskInfo,
    Driver,
    InstanceSpec,
    PreparedDisk,
    Volume,
    get_driver,
)
from capstan.drivers.disks import MAX_BACKING

__all__ = ["ImageFacts", "LocalDisks", "changed_blocks", "image_facts", "make_overlay",
           "open_driver"]

_MAX_ENTRIES = 256
_MAX_OVERLAYS = 64


@dataclass(frozen=True)
class ImageFacts:
    """What a run needs to know about an image file."""

    format: str
    sha256: str
    cmdline: str | None  # None: not an OSv image (no command-line area)
    reads: str | None  # another file QEMU opens with it (a backing file...)


def image_facts(root: Path, path: Path) -> ImageFacts:
    """The facts of *path*, from ``<root>/cache/images.json`` when still valid."""
    from capstan.image.loader import read_head, sniff_format
    from capstan.services.volumes import other_file

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
    fmt = sniff_format(read_head(path, "image"))
    facts = ImageFacts(fmt, sha256_of(path), _cmdline(path), other_file(path, fmt))
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


def _cmdline(path: Path) -> str | None:
    from capstan.image.inspect import OsvImage

    try:
        with OsvImage(path) as img:  # kernel-less: no command-line area to write
            return None if img.kernel_less else img.cmdline
    except ImageError:
        return None


def _standalone(root: Path, image: Path) -> ImageFacts:
    """The facts of *image*, refused (ImageError) when it reads another file."""
    facts = image_facts(root, image)
    if facts.reads:  # the guest would get a host file (/etc/shadow) through the image
        raise ImageError(f"image {image} reads another file ({facts.reads}): an image "
                         "must stand alone")
    return facts


def changed_blocks(base: bytes, first: int, block: int, patch: tuple[int, bytes],
                   ) -> tuple[tuple[int, bytes], ...]:
    """(index, new content) of the *block*-byte blocks that writing *patch* (a disk
    offset and its bytes) changes, *base* holding the disk's blocks from index *first*."""
    offset, data = patch
    start = offset - first * block
    if len(base) % block or start < 0 or start + len(data) > len(base):
        raise ValueError("the blocks given do not cover the patch")
    new = base[:start] + data + base[start + len(data):]
    spans = (slice(i, i + block) for i in range(0, len(base), block))
    return tuple((first + s.start // block, new[s]) for s in spans if new[s] != base[s])


def make_overlay(root: Path, image: Path, cmdline: str | None, disk: Path) -> ImageFacts:
    """Create a qcow2 overlay *disk* on *image*, with *cmdline* written into it; return
    the image's facts.

    Overlays are a pure function of image, content and command line, so the
    first one made is kept in ``<root>/cache/overlays`` and copied next time: a
    repeated run needs neither qemu-img nor qemu-io.
    """
    from capstan.image import cmdline as osv_cmdline
    from capstan.image.formats import write_range

    facts = _standalone(root, image)
    if cmdline is not None:
        osv_cmdline.validate(cmdline)
    key = hashlib.sha256(f"{image}\0{facts.format}\0{facts.sha256}\0{cmdline}".encode())
    cache = root / "cache" / "overlays"
    template = cache / f"{key.hexdigest()[:32]}.qcow2"
    with contextlib.suppress(FileNotFoundError):
        shutil.copyfile(template, disk)
        return facts
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", facts.format, "-b", str(image),
              str(disk)])
    if cmdline is not None:
        write_range(disk, "qcow2", osv_cmdline.area_bytes(cmdline), osv_cmdline.AREA_OFFSET)
    with contextlib.suppress(OSError, LocalIOError):  # the cache is optional
        cache.mkdir(parents=True, exist_ok=True)
        old = sorted(cache.glob("*.qcow2"), key=lambda p: p.stat().st_mtime)
        for stale in old[:max(0, len(old) - _MAX_OVERLAYS + 1)]:
            stale.unlink(missing_ok=True)
        atomic_write(template, disk.read_bytes())
    return facts


def _rebase(overlay: Path, backing: str) -> None:
    """Point *overlay*'s header at *backing*, a qcow2 file on another host: nothing is
    read through it here (``qemu-img rebase -u`` opens no backing file)."""
    if not (backing.startswith("/") and backing.isprintable()
            and len(backing.encode()) <= MAX_BACKING):
        raise InputError(f"not a usable backing file path: {ascii(backing)[:72]}")
    proc.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", "qcow2",
              str(overlay)])


class LocalDisks:
    """The :class:`~capstan.drivers.base.DiskPreparer` of the repository at *root*."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self, spec: InstanceSpec, disk: Path, form: DiskForm = OVERLAY,
                ) -> PreparedDisk:
        """*spec*'s image as *disk* in *form* (an overlay, or the overlay converted),
        its command line written in; with ``form.reuse_image`` and no command line,
        the image itself."""
        image = spec.image.absolute()
        if form.reuse_image and spec.cmdline is None:
            return PreparedDisk(spec.image, image_facts(self.root, image).sha256)
        if form.format == "qcow2" and not form.standalone:
            facts = make_overlay(self.root, image, spec.cmdline, disk)
            if form.backing is not None:
                _rebase(disk, form.backing)
            return PreparedDisk(disk, facts.sha256)
        overlay = disk.with_name(f".{disk.name}.overlay.qcow2")
        try:
            facts = make_overlay(self.root, image, spec.cmdline, overlay)
            options = ["-o", ",".join(form.options)] if form.options else []
            proc.run(["qemu-img", "convert", "-q", "-O", form.format, *options, str(overlay),
                      str(disk)])
        finally:
            overlay.unlink(missing_ok=True)
        return PreparedDisk(disk, facts.sha256)

    def delta(self, spec: InstanceSpec, block: int) -> DiskDelta:
        """*spec*'s image and the *block*-byte blocks its command line changes (read
        from the image, the command line written over them)."""
        from capstan.image import cmdline as osv_cmdline
        from capstan.image.formats import read_range

        image = spec.image.absolute()
        facts = _standalone(self.root, image)
        if spec.cmdline is None:
            return DiskDelta(image, facts.sha256, ())
        osv_cmdline.validate(spec.cmdline)
        patch = (osv_cmdline.AREA_OFFSET, osv_cmdline.area_bytes(spec.cmdline))
        first = patch[0] // block
        count = -(-(patch[0] + len(patch[1])) // block) - first
        with tempfile.TemporaryDirectory(prefix="capstan-delta-") as tmp:
            raw = Path(tmp) / "blocks.raw"
            read_range(image, facts.format, raw, first * block, count * block)
            base = raw.read_bytes()[:count * block].ljust(count * block, b"\0")
        return DiskDelta(image, facts.sha256, changed_blocks(base, first, block, patch))

    def facts(self, image: Path) -> DiskFacts:
        """The format and SHA-256 of *image* (from the facts cache)."""
        facts = image_facts(self.root, image)
        return DiskFacts(facts.format, facts.sha256)

    def info(self, image: Path) -> DiskInfo:
        """``qemu-img info`` of *image*."""
        from capstan.image.formats import info

        found = info(image)
        return DiskInfo(found.format, found.virtual_size, found.backing_file)

    def export(self, image: Path, target: Path, kind: str) -> None:
        """*image* converted to *target* as *kind*, a disk format's name (``gce``: the
        tarball GCE imports)."""
        from capstan.image.formats import DiskFormat, convert

        convert(image, target, DiskFormat.parse(kind), image_facts(self.root, image).format)

    def attachable(self, volume: Volume) -> Volume:
        """*volume* probed (:func:`capstan.services.volumes.attachable`)."""
        from capstan.services.volumes import attachable

        return attachable(volume)


def open_driver(name: str, config: Config) -> Driver:
    """Driver *name*, handed the disk service of *config*'s repository."""
    return get_driver(name, config, LocalDisks(config.root))
