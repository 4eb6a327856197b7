"""Instance disks in a libvirt storage pool, sent through libvirt's stream API.

An image is uploaded once per pool: a standalone, flattened base volume
``capstan-base-<digest[:24]>.qcow2``, complete only once its marker volume
``capstan-base-<digest[:24]>.ok`` exists (made after the upload finished). Each
instance gets a small qcow2 overlay volume ``<name>.qcow2`` on the base holding its
command line. A base no domain of ours uses any more goes with its marker.

What the host reports is hostile: the volumes we delete are names we built, a base
named in domain metadata must have the shape of ours, and a volume's path is checked
before it goes into an overlay's header and the domain XML.

libvirt is imported lazily: the driver module loads without libvirt-python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from capstan.core.errors import (
    BackendError,
    CapstanError,
    Conflict,
    ImageError,
    NotFound,
    RemoteError,
)
from capstan.core.names import check_name
from capstan.drivers.disks import MAX_BACKING, DiskForm, DiskPreparer
from capstan.drivers.libvirt_xml import NS
from capstan.drivers.model import InstanceSpec

__all__ = ["Base", "Pool", "call", "metadata", "send"]

LOG = logging.getLogger(__name__)

_CHUNK = 1 << 20
BASE_PREFIX = "capstan-base-"
_DIGEST_SHOWN = 24  # hex digits of the image's SHA-256 in a base volume's name
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BASE_NAME = re.compile(rf"{BASE_PREFIX}[0-9a-f]{{{_DIGEST_SHOWN}}}\.qcow2")
#: a base volume without its marker whose size stays put this long was abandoned
STALL_SECONDS = 30.0
#: the longest wait for another client's upload of a base
WAIT_SECONDS = 1800.0
_POLL_SECONDS = 0.5

_locks: dict[tuple[str, str, str], threading.RLock] = {}
_locks_guard = threading.Lock()


def call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """*fn(*args)*, with libvirt's errors as BackendError naming *what* (a domain that
    vanished meanwhile, another client's doing, is NotFound)."""
    import libvirt

    try:
        return fn(*args)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound(f"libvirt: {what}: {err.get_error_message()}") from err
        raise BackendError(f"libvirt: {what}: {err.get_error_message()}") from err


def send(stream: Any, chunk: bytes) -> None:
    """Send all of *chunk* through the libvirt *stream*."""
    view = memoryview(chunk)
    while view:
        sent = call("upload", stream.send, bytes(view))
        view = view[sent:]


def metadata(dom: Any) -> dict[str, str] | None:
    """The ``<capstan:instance>`` metadata of *dom*, None when it is not ours (or gone)."""
    import libvirt

    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS)
    except libvirt.libvirtError:
        return None
    return {child.tag.split("}")[-1]: child.text or "" for child in ET.fromstring(text)}


@dataclass(frozen=True)
class Base:
    """The names of a base volume and of its completion marker."""

    volume: str
    marker: str

    @classmethod
    def of(cls, digest: str) -> Base:
        """The base of the image whose SHA-256 is *digest*."""
        if not _SHA256.fullmatch(digest):
            raise CapstanError(f"not a SHA-256 digest: {digest!r}")
        volume = check_name(f"{BASE_PREFIX}{digest[:_DIGEST_SHOWN]}.qcow2", "volume", "")
        return cls(volume, volume.removesuffix(".qcow2") + ".ok")

    @classmethod
    def named(cls, volume: str) -> Base | None:
        """The base called *volume* (from domain metadata), None unless it has the
        shape of the base names we build."""
        if not _BASE_NAME.fullmatch(volume):
            return None
        return cls(volume, volume.removesuffix(".qcow2") + ".ok")


def host_path(path: object, volume: str) -> str:
    """*path*, the host's path of *volume*, if it can name a backing file (RemoteError
    when it is not an absolute, printable path ending in *volume*)."""
    usable = (isinstance(path, str) and path.isprintable() and path.isascii()
              and len(path) <= MAX_BACKING and PurePosixPath(path).is_absolute()
              and ".." not in PurePosixPath(path).parts
              and path.rsplit("/", 1)[-1] == volume)
    if not usable:
        raise RemoteError(f"the host gave an unusable path for volume {volume}: "
                          f"{ascii(path)[:72]}")
    return str(path)


def _lock(key: tuple[str, str, str]) -> threading.RLock:
    """This process's lock of the base *key* (uri, pool, volume)."""
    with _locks_guard:
        return _locks.setdefault(key, threading.RLock())


class _Progress:
    """Whether a volume another client is uploading still grows."""

    def __init__(self) -> None:
        self.seen: object = None
        self.since = 0.0

    def stalled(self, vol: Any) -> bool:
        """Whether *vol*'s size has not changed for STALL_SECONDS."""
        import libvirt

        try:
            info = vol.info()
        except libvirt.libvirtError:
            return False  # deleted while we looked: the next lookup tells
        now = time.monotonic()
        if info != self.seen:
            self.seen, self.since = info, now
        return now - self.since >= STALL_SECONDS


class Pool:
    """The storage pool *name* at *uri*, reached through the connection *conn*;
    *disks* makes the images uploaded into it."""

    def __init__(self, conn: Any, uri: str, name: str,
                 disks: DiskPreparer | None = None) -> None:
        self.conn = conn
        self.uri = uri
        self.name = name
        self.disks = disks
        self._pool: Any = None

    @property
    def pool(self) -> Any:
        """libvirt's handle of the pool (NotFound with the fix when it is missing)."""
        import libvirt

        if self._pool is None:
            try:
                self._pool = self.conn.storagePoolLookupByName(self.name)
            except libvirt.libvirtError as err:
                raise NotFound(
                    f"no storage pool '{self.name}' at {self.uri}: create it (virsh "
                    f"pool-define-as {self.name} dir --target /var/lib/libvirt/images; "
                    f"virsh pool-start {self.name})") from err
        return self._pool

    # -- volumes ------------------------------------------------------------

    def lookup(self, volume: str) -> Any | None:
        """The volume *volume* of the pool, None when there is none."""
        import libvirt

        try:
            return self.pool.storageVolLookupByName(volume)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise BackendError(f"libvirt: look up {volume}: {err.get_error_message()}"
                               ) from err

    def create(self, volume: str, size: int) -> Any:
        """A new raw volume *volume* of *size* bytes (Conflict when it exists)."""
        import libvirt

        vol_xml = ET.Element("volume")
        ET.SubElement(vol_xml, "name").text = volume
        ET.SubElement(vol_xml, "capacity", unit="bytes").text = str(size)
        ET.SubElement(vol_xml, "allocation").text = "0"  # sparse: it grows as data comes
        ET.SubElement(ET.SubElement(vol_xml, "target"), "format", type="raw")
        try:
            return self.pool.createXML(ET.tostring(vol_xml, encoding="unicode"), 0)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_STORAGE_VOL_EXIST:
                raise Conflict(f"volume {volume} exists in pool {self.name}") from err
            raise BackendError(f"libvirt: create volume {volume} in pool {self.name}: "
                               f"{err.get_error_message()}") from err

    def upload(self, source: Path, volume: str, undo: list[Callable[[], None]]) -> None:
        """Create *volume* in the pool and send *source* into it."""
        vol = self.create(volume, source.stat().st_size)
        undo.append(vol.delete)
        self._send_file(vol, source, volume)

    def _send_file(self, vol: Any, source: Path, volume: str) -> None:
        """Send *source* into *vol* (called *volume*) through a libvirt stream."""
        size = source.stat().st_size
        stream = self.conn.newStream(0)
        call(f"upload to {volume}", vol.upload, stream, 0, size, 0)
        from capstan.remotes.download import progress_bar

        progress = progress_bar(size, f"uploading {volume}")
        with open(source, "rb") as f:
            try:
                while chunk := f.read(_CHUNK):
                    send(stream, chunk)
                    progress(len(chunk))
                call(f"finish upload to {volume}", stream.finish)
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.abort()
                raise
            finally:
                progress(0, done=True)

    def delete(self, volume: str) -> None:
        """Delete *volume* from the pool, if it is there."""
        import libvirt

        with contextlib.suppress(libvirt.libvirtError, NotFound):
            self.pool.storageVolLookupByName(volume).delete(0)

    # -- instance disks -----------------------------------------------------

    def instance_disk(self, spec: InstanceSpec, home: Path, undo: list[Callable[[], None]],
                      held: contextlib.ExitStack) -> tuple[str, dict[str, str]]:
        """The image's digest and the disk of instance *spec*: an overlay volume on the
        image's base volume (uploaded first when the pool lacks it). The base stays
        locked in *held* until the caller has defined the domain."""
        if self.disks is None:
            raise CapstanError("the libvirt pool was given no disk service")
        digest = self.disks.facts(spec.image).sha256
        base = Base.of(digest)
        held.enter_context(_lock((self.uri, self.name, base.volume)))
        backing = self.ensure_base(base, lambda: self._flatten(spec, home, digest))
        undo.append(lambda: self.release(base))
        volume = check_name(f"{spec.name}.qcow2", "volume", "")
        overlay = self.disks.prepare(spec, home / "overlay.qcow2", DiskForm(backing=backing))
        self.upload(overlay.path, volume, undo)
        overlay.path.unlink()
        return digest, {"pool": self.name, "volume": volume, "base": base.volume,
                        "backing": backing}

    def _flatten(self, spec: InstanceSpec, home: Path, digest: str) -> Path:
        """*spec*'s image (SHA-256 *digest*) as a standalone qcow2 in *home*, its own
        command line kept; ImageError when the image was replaced meanwhile."""
        assert self.disks is not None
        plain = dataclasses.replace(spec, cmdline=None)
        flat = self.disks.prepare(plain, home / "base.qcow2", DiskForm(standalone=True)).path
        if self.disks.facts(spec.image).sha256 != digest:
            flat.unlink(missing_ok=True)
            raise ImageError(f"image {spec.image} changed while it was read: not uploaded "
                             "(run again)")
        return flat

    def ensure_base(self, base: Base, flatten: Callable[[], Path]) -> str:
        """The host path of *base*, uploaded from *flatten()* unless complete already.

        A base without its marker is another client's upload while it grows, and an
        abandoned one (deleted, then uploaded again) once it stalls.
        """
        progress = _Progress()
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            vol = self.lookup(base.volume)
            if vol is not None and self.lookup(base.marker) is not None:
                return host_path(call(f"path of {base.volume}", vol.path), base.volume)
            if vol is None:
                if self._upload_base(base, flatten):
                    continue
            elif progress.stalled(vol):
                LOG.warning("base volume %s in pool %s is incomplete and idle: "
                            "uploading it again", base.volume, self.name)
                self.delete(base.volume)
                continue
            time.sleep(_POLL_SECONDS)
        raise BackendError(f"base volume {base.volume} in pool {self.name} at {self.uri} "
                           f"was not complete within {WAIT_SECONDS:.0f} s")

    def _upload_base(self, base: Base, flatten: Callable[[], Path]) -> bool:
        """Upload *base* and then its marker; False when another client created the
        base volume first."""
        source = flatten()
        try:
            try:
                vol = self.create(base.volume, source.stat().st_size)
            except Conflict:
                return False
            try:
                self.delete(base.marker)  # stale: it must only ever follow a full upload
                self._send_file(vol, source, base.volume)
                with contextlib.suppress(Conflict):
                    self.create(base.marker, 0)
            except BaseException:
                with contextlib.suppress(Exception):
                    vol.delete(0)
                raise
        finally:
            source.unlink(missing_ok=True)
        return True

    def bases_in_use(self) -> set[str]:
        """The base volumes of this pool that domains of ours name."""
        used = set()
        for dom in call("list domains", self.conn.listAllDomains, 0):
            meta = metadata(dom)
            if meta and meta.get("pool") == self.name:
                used.add(meta.get("base", ""))
        return used

    def release(self, base: Base) -> None:
        """Delete *base* (marker first) unless a domain of ours still uses it."""
        with _lock((self.uri, self.name, base.volume)):
            if base.volume in self.bases_in_use():
                return
            self.delete(base.marker)
            self.delete(base.volume)

    def discard(self, instance: str, base_name: str) -> None:
        """Delete *instance*'s volume, and its base *base_name* when nothing uses it."""
        self.delete(check_name(f"{instance}.qcow2", "volume", ""))
        base = Base.named(base_name)
        if base is not None:
            self.release(base)
