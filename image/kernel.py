"""OSv's kernel ELF for direct boot (``loader-stripped.elf``): checked to be a PVH kernel.

A VMM boots a kernel directly through its PVH entry, the ELF note
``XEN_ELFNOTE_PHYS32_ENTRY`` (type 18, owner ``Xen``) in a ``PT_NOTE`` segment
(osv-image-format.md, section 10). Only the headers and notes are read, every
offset and size bounded by the file, so a hostile file is refused in one line.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO

from capstan.core.errors import ImageError, LocalIOError, NotFound

__all__ = ["read_kernel"]

_ELF_MAGIC = b"\x7fELF"
_CLASS_32, _CLASS_64 = 1, 2
_LITTLE_ENDIAN = 1
_MACHINES = {3: "i386", 62: "x86_64"}
_PT_NOTE = 4
_PHYS32_ENTRY = 18
_MAX_PHNUM = 256
_MAX_NOTES = 1 << 16  # bytes of one note segment
_IDENT = 16  # e_ident
_NOTE_HEADER = 12  # namesz, descsz, type
_HEADER = {_CLASS_32: struct.Struct("<16sHHIIIIIHHHHHH"),
           _CLASS_64: struct.Struct("<16sHHIQQQIHHHHHH")}
# (p_type, p_offset, p_filesz) positions in each class's program header
_PHDR = {_CLASS_32: (struct.Struct("<IIIIIIII"), 0, 1, 4),
         _CLASS_64: (struct.Struct("<IIQQQQQQ"), 0, 2, 5)}


def read_kernel(path: Path, shown: Path | None = None) -> str:
    """The architecture of the PVH kernel ELF *path* (named *shown* in errors, by
    default itself); ImageError when it is none."""
    shown = shown or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError as err:
        raise NotFound(f"kernel {shown}: no such file") from err
    except OSError as err:
        raise LocalIOError(f"cannot read {shown}: {err.strerror}") from err
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ImageError(f"kernel {shown}: not a regular file")
        size = os.fstat(f.fileno()).st_size
        try:
            return _pvh(f, size)
        except (ImageError, struct.error) as err:
            raise ImageError(f"kernel {shown}: {_reason(err)}") from err


def _reason(err: Exception) -> str:
    return str(err) if isinstance(err, ImageError) else "truncated ELF headers"


def _read(f: BinaryIO, offset: int, length: int, size: int) -> bytes:
    if offset < 0 or length < 0 or offset + length > size:
        raise ImageError("an ELF header points outside the file")
    f.seek(offset)
    return f.read(length)


def _pvh(f: BinaryIO, size: int) -> str:
    ident = _read(f, 0, _IDENT, size) if size >= _IDENT else b""
    if ident[:4] != _ELF_MAGIC:
        raise ImageError("not an ELF file (OSv's kernel is loader-stripped.elf)")
    elf_class = ident[4]
    if elf_class not in _HEADER or ident[5] != _LITTLE_ENDIAN:
        raise ImageError("not a little-endian 32- or 64-bit ELF")
    header = _HEADER[elf_class].unpack(_read(f, 0, _HEADER[elf_class].size, size))
    machine, phoff, phentsize, phnum = header[2], header[5], header[9], header[10]
    if machine not in _MACHINES:
        raise ImageError(f"an ELF for machine {machine}, not x86")
    layout, p_type, p_offset, p_filesz = _PHDR[elf_class]
    if phnum > _MAX_PHNUM or phentsize < layout.size:
        raise ImageError("malformed program headers")
    for index in range(phnum):
        entry = layout.unpack(_read(f, phoff + index * phentsize, layout.size, size))
        if entry[p_type] == _PT_NOTE and entry[p_filesz] <= _MAX_NOTES and \
                _has_pvh_note(_read(f, entry[p_offset], entry[p_filesz], size)):
            return _MACHINES[machine]
    raise ImageError("no PVH entry (ELF note XEN_ELFNOTE_PHYS32_ENTRY): a VMM cannot boot "
                     "it directly")


def _has_pvh_note(notes: bytes) -> bool:
    """Whether *notes* (a PT_NOTE segment) hold Xen's PHYS32_ENTRY note."""
    at = 0
    while at + _NOTE_HEADER <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, at)
        name_end = at + _NOTE_HEADER + namesz
        if name_end > len(notes):
            return False
        if kind == _PHYS32_ENTRY and notes[at + _NOTE_HEADER:name_end].rstrip(b"\0") == b"Xen":
            return True
        at = name_end + (-namesz % 4) + descsz + (-descsz % 4)
    return False
