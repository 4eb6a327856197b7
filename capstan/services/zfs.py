"""Uploading a tree into a ZFS image through OSv's builder VM (reference 11.3).

The builder prints ``Waiting for connection from host...`` when its cpiod
listens; we then connect to the host port forwarded to guest port 10000 (a
free one per build), stream the cpio archive and wait for the VM to power off.
Every wait has a timeout whose error carries the VM's last output line.

``--update`` (reference 11.6) boots the existing image itself with cpiod as its
command and uploads only the entries whose digest changed. The digests (SHA-256)
live beside the image in ``<image>.zfs-digests.json`` with the loader's digest and
the size; without them, with another loader or size, or when a path was removed
(cpiod cannot delete), a full build runs instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from capstan.core.config import Config
from capstan.core.errors import BackendError, GuestTimeout
from capstan.drivers.base import free_port
from capstan.drivers.qemu.argv import builder_argv
from capstan.drivers.qemu.machine import QemuMachine
from capstan.image.cpio import mode_of, newc_stream
from capstan.image.formats import DiskFormat
from capstan.image.rofs import DirEntry, Entry, SymlinkEntry
from capstan.image.sources import Contents

__all__ = ["BUILDER", "HANDSHAKE", "ZfsSpec", "builder_argv", "compose_zfs", "digests", "pick_port",
           "upload"]

BUILDER = "osv-zfs-builder"
DEFAULT_SIZE = 10 << 30  # Capstan's --size default for ZFS images

HANDSHAKE = "Waiting for connection from host..."
UPDATE_CMDLINE = "--console=serial /tools/cpiod.so --prefix /"
DIGESTS = ".zfs-digests.json"


def upload(argv: Sequence[str], port: int, entries: Sequence[Entry],
           timeout: float = 300) -> None:
    """Run the builder *argv* (a :class:`QemuMachine`), stream *entries* to *port*
    after its handshake, and wait for it to power off."""
    with QemuMachine("the ZFS builder", qmp=None) as vm:
        try:
            vm.spawn(argv)
            deadline = time.monotonic() + timeout
            vm.wait_for_output(HANDSHAKE, timeout)
            with _connect(port, deadline) as sock:
                for chunk in newc_stream(entries):
                    sock.sendall(chunk)
            try:
                code = vm.wait(max(1.0, deadline - time.monotonic()))
            except GuestTimeout as err:
                raise GuestTimeout(f"the ZFS builder did not finish within {timeout:.0f} s: "
                                   f"{vm.last_line()}") from err
            if code != 0:
                raise BackendError(f"the ZFS builder failed ({code}): {vm.last_line()}")
        finally:
            vm.kill()


def _connect(port: int, deadline: float) -> socket.socket:
    while True:
        with contextlib.suppress(OSError):
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        if time.monotonic() > deadline:
            raise GuestTimeout(f"could not connect to the ZFS builder on port {port}")
        time.sleep(0.2)


def pick_port() -> int:
    """A free local port for the builder's forward (never a fixed one)."""
    return free_port("127.0.0.1", "tcp", 0)


def digests(entries: Sequence[Entry]) -> dict[str, str]:
    """Guest path -> a digest of what the upload would write there (content and mode)."""
    out = {}
    with Contents() as reader:
        for entry in entries:
            if isinstance(entry, DirEntry):
                out[entry.path] = "dir"
            elif isinstance(entry, SymlinkEntry):
                out[entry.path] = f"link:{entry.target}"
            else:
                h = hashlib.sha256()
                for chunk in reader.chunks(entry):
                    h.update(chunk)
                out[entry.path] = f"file:{mode_of(entry):o}:{h.hexdigest()}"
    return out


def _record(output: Path) -> Path:
    """Where the digests of what *output* holds are kept."""
    return output.with_name(output.name + DIGESTS)


def _changed(output: Path, now: dict[str, Any], entries: Sequence[Entry],
             disk_format: DiskFormat | None) -> list[Entry] | None:
    """The entries an update must upload, or None when only a full build will do."""
    from capstan.image.formats import DiskFormat as Fmt

    if (disk_format or Fmt.QCOW2) is not Fmt.QCOW2 or not output.is_file():
        return None
    try:
        before = json.loads(_record(output).read_text())
        layout, files = before["layout"], before["entries"]
    except (OSError, ValueError, TypeError, KeyError):
        return None  # no usable record
    if layout != now["layout"] or not isinstance(files, dict) or \
            files.keys() - now["entries"].keys():
        return None  # another loader or size, or something was removed
    return [e for e in entries if files.get(e.path) != now["entries"][e.path]]


@dataclass(frozen=True)
class ZfsSpec:
    """A ZFS image to build: its *loader* (a repository reference), command line
    *cmdline*, minimum *size* (0: 10 GiB), *disk_format* (None: qcow2), the builder's
    *timeout* in seconds, and *update*: an existing qcow2 image is updated in place
    instead when it can be."""

    loader: str
    cmdline: str
    size: int = 0
    disk_format: DiskFormat | None = None
    timeout: float = 600
    update: bool = False


def compose_zfs(config: Config, entries: Sequence[Entry], spec: ZfsSpec, output: Path) -> int:
    """Build an OSv image whose root is ZFS at *output*, filled by the builder VM
    (reference 11.3); return how many entries were uploaded.

    Needs a ZFS-capable loader (e.g. ``osv-loader-with-zfs``) and the builder
    ``osv-zfs-builder`` in the repository (``capstan pull osv-zfs-builder``).
    """
    from capstan.core.fs import atomic_write, sha256_of
    from capstan.image import cmdline as osv_cmdline
    from capstan.image.compose import publishing
    from capstan.image.formats import DiskFormat as Fmt
    from capstan.image.formats import convert
    from capstan.services.store import LocalRepository

    spec = replace(spec, cmdline=osv_cmdline.with_rootfs(spec.cmdline, "zfs"))
    osv_cmdline.validate(spec.cmdline)
    repo = LocalRepository(config.root)
    loader_path = repo.resolve(spec.loader, kind="loader")
    now = {"layout": f"loader sha256 {sha256_of(loader_path)}, size {spec.size}",
           "entries": digests(entries)}
    changed = _changed(output, now, entries, spec.disk_format) if spec.update else None
    with publishing(output) as tmp:
        disk = tmp / "disk.qcow2"
        if changed is None:
            builder = repo.resolve(BUILDER, kind="ZFS builder (capstan pull osv-zfs-builder)")
            _empty_disk(loader_path, disk, spec)
            _run_builder(config, builder, disk, entries, spec.timeout)
        else:
            _update_disk(config, output, disk, changed, spec)
        fmt = spec.disk_format or Fmt.QCOW2
        if fmt is Fmt.QCOW2:
            disk.rename(tmp / output.name)
        else:
            convert(disk, tmp / output.name, fmt, source_fmt="qcow2")
            disk.unlink()
    # after the image: a record newer than its image would hide changes from an update
    atomic_write(_record(output), json.dumps(now).encode())
    return len(entries) if changed is None else len(changed)


def _empty_disk(loader_path: Path, disk: Path, spec: ZfsSpec) -> None:
    """Write at *disk* a qcow2 disk of the loader, the command line and an empty
    partition for the builder to fill."""
    from capstan.image import cmdline as osv_cmdline
    from capstan.image import mbr
    from capstan.image.formats import DiskFormat as Fmt
    from capstan.image.formats import convert
    from capstan.image.loader import read_loader

    loader = read_loader(loader_path)
    start = loader.partition_start
    total = mbr.align_up(max(spec.size or DEFAULT_SIZE, start + (64 << 20)), 1 << 20)
    raw = disk.with_name("disk.raw")
    sector0 = bytearray(loader.data[:512])
    mbr.set_partition(sector0, 2, start, total - start)
    with open(raw, "wb") as f:
        f.write(bytes(sector0) + osv_cmdline.area_bytes(spec.cmdline) + loader.data[32768:])
        f.truncate(total)
    convert(raw, disk, Fmt.QCOW2)
    raw.unlink()


def _update_disk(config: Config, output: Path, disk: Path, changed: Sequence[Entry],
                 spec: ZfsSpec) -> None:
    """Copy *output* to *disk*, upload the *changed* entries into it (booting the image
    itself with cpiod as its command), then give it back its command line."""
    from capstan.image import cmdline as osv_cmdline
    from capstan.image.formats import write_range

    shutil.copyfile(output, disk)
    if changed:
        write_range(disk, "qcow2", osv_cmdline.area_bytes(UPDATE_CMDLINE),
                    osv_cmdline.AREA_OFFSET)
        _run_builder(config, None, disk, changed, spec.timeout)
    write_range(disk, "qcow2", osv_cmdline.area_bytes(spec.cmdline), osv_cmdline.AREA_OFFSET)


def _run_builder(config: Config, builder: Path | None, disk: Path, entries: Sequence[Entry],
                 timeout: float) -> None:
    """Boot the *builder* (None: *disk* itself) on *disk* and upload *entries*."""
    from capstan.drivers.qemu import QemuDriver

    qemu = QemuDriver(config)
    port = pick_port()
    upload(builder_argv(qemu.qemu_binary(), None if builder is None else str(builder),
                        str(disk.absolute()), port, qemu.accelerator()), port, entries, timeout)
