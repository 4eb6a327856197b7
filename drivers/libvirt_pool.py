"""Instance disks in a libvirt storage pool, sent through libvirt's stream API.

libvirt is imported lazily: the driver module loads without libvirt-python.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capstan.core.errors import BackendError, NotFound

__all__ = ["Pool", "call", "send"]

_CHUNK = 1 << 20


def call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """*fn(*args)*, with libvirt's errors as BackendError naming *what*."""
    import libvirt

    try:
        return fn(*args)
    except libvirt.libvirtError as err:
        raise BackendError(f"libvirt: {what}: {err.get_error_message()}") from err


def send(stream: Any, chunk: bytes) -> None:
    """Send all of *chunk* through the libvirt *stream*."""
    view = memoryview(chunk)
    while view:
        sent = call("upload", stream.send, bytes(view))
        view = view[sent:]


class Pool:
    """The storage pool *name* at *uri*, reached through the connection *conn*."""

    def __init__(self, conn: Any, uri: str, name: str) -> None:
        self.conn = conn
        self.uri = uri
        self.name = name
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

    def upload(self, source: Path, volume: str, undo: list[Callable[[], None]]) -> None:
        """Create *volume* in the pool and send *source* through a libvirt stream."""
        size = source.stat().st_size
        vol_xml = ET.Element("volume")
        ET.SubElement(vol_xml, "name").text = volume
        ET.SubElement(vol_xml, "capacity", unit="bytes").text = str(size)
        ET.SubElement(ET.SubElement(vol_xml, "target"), "format", type="raw")
        vol = call(f"create volume {volume} in pool {self.name}", self.pool.createXML,
                   ET.tostring(vol_xml, encoding="unicode"), 0)
        undo.append(vol.delete)
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
