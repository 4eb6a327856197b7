"""OSv loaders (base images): finding, converting and validating them."""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from capstan.core.errors import ImageError, LocalIOError, NotFound
from capstan.image import cmdline, formats
from capstan.image.mbr import PARTITION_ALIGN, SECTOR, TABLE, align_up

__all__ = [
    "PROBE_KERNEL", "PROBE_LOADER", "Loader", "probe_kernel_path", "probe_loader_path",
    "read_head", "read_loader", "sniff_format",
]

PROBE_LOADER = "probe-loader"
PROBE_KERNEL = "probe-kernel"
KERNEL_OFFSET = 65536
CHUNK = 32768
_HEADER = 65536
_VDI_MAGIC_AT = 0x40  # VirtualBox's image signature, little-endian
_VDI_MAGIC = 0xBEDA107F


@dataclass(frozen=True)
class Loader:
    """A pristine raw OSv loader: boot sector, command-line area, kernel."""

    source: Path
    data: bytes
    count32: int

    @property
    def size(self) -> int:
        """Bytes of the loader."""
        return len(self.data)

    @property
    def partition_start(self) -> int:
        """Where partition 2 starts: the loader's end aligned up to 2 MiB."""
        return align_up(self.size, PARTITION_ALIGN)

    @property
    def builtin_cmdline(self) -> str:
        """The command line the loader carries (empty in release loaders)."""
        area = self.data[cmdline.AREA_OFFSET:cmdline.AREA_OFFSET + cmdline.AREA_SIZE]
        return cmdline.read_area(area)


def probe_loader_path() -> Path:
    """The probe loader shipped with pycapstan (a stand-in for OSv)."""
    return Path(str(resources.files("capstan.image") / "probe" / "probe-loader.bin"))


def probe_kernel_path() -> Path:
    """The probe kernel shipped with pycapstan (a PVH stand-in for OSv's kernel ELF)."""
    return Path(str(resources.files("capstan.image") / "probe" / "probe-kernel.elf"))


def sniff_format(head: bytes) -> str:
    """The qemu-img format of a file starting with *head* (``raw`` if unknown)."""
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"KDMV") or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix"):
        return "vpc"
    if len(head) >= _VDI_MAGIC_AT + 4 and \
            struct.unpack_from("<I", head, _VDI_MAGIC_AT)[0] == _VDI_MAGIC:
        return "vdi"
    return "raw"


def read_head(path: Path, kind: str) -> bytes:
    """The first 64 KiB of the *kind* (image, loader) at *path*, with typed errors."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # a FIFO, a device...
                raise ImageError(f"{path}: not a regular file, so not a {kind}")
            return f.read(_HEADER)
    except FileNotFoundError as err:
        raise NotFound(f"no such {kind}: {path}") from err
    except IsADirectoryError as err:
        raise ImageError(f"{path}: is a directory, not a {kind}") from err
    except OSError as err:
        raise LocalIOError(f"cannot read {kind} {path}: {err.strerror}") from err


def read_loader(path: Path) -> Loader:
    """Read and validate the loader at *path*, in any qemu-img format."""
    head = read_head(path, "loader")
    fmt = sniff_format(head)
    if fmt == "raw":
        return _from_raw(path, path)
    backing = formats.info(path, fmt).backing_file
    if backing:  # qemu-img would read another host file into the image
        raise ImageError(f"{path}: a loader with a backing file ({backing!r}) is refused")
    with tempfile.TemporaryDirectory(prefix="capstan-loader-") as tmp:
        raw = Path(tmp) / "loader.raw"
        formats.convert(path, raw, formats.DiskFormat.RAW, source_fmt=fmt)
        return _from_raw(raw, path)


def _from_raw(raw: Path, source: Path) -> Loader:
    data = raw.read_bytes()
    if data[-512:].startswith(b"conectix"):
        data = data[:-512]  # a fixed VHD: raw bytes plus a footer
    if len(data) < SECTOR or data[510:512] != b"\x55\xaa":
        raise ImageError(f"{source}: not an OSv loader (no boot signature 55 AA)")
    (count32,) = struct.unpack_from("<H", data, 0x10)
    kernel_end = KERNEL_OFFSET + count32 * CHUNK
    if count32 < 1 or kernel_end > len(data):
        raise ImageError(
            f"{source}: not an OSv loader (kernel chunk count {count32} does not fit "
            f"a {len(data)}-byte file)")
    if data[KERNEL_OFFSET:KERNEL_OFFSET + 4] != b"\x7fELF":
        raise ImageError(f"{source}: not an OSv loader (no kernel at byte 65536)")
    if any(data[TABLE:510]):
        # A composed image: keep only its loader, with table and cmdline cleared.
        data = (data[:TABLE] + bytes(510 - TABLE) + data[510:512]
                + bytes(KERNEL_OFFSET - 512) + data[KERNEL_OFFSET:kernel_end])
    return Loader(source=source, data=bytes(data), count32=count32)
