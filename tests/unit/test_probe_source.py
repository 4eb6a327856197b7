"""The shipped probe loader is exactly what its nasm source assembles to."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from capstan.image import loader


def test_probe_loader_rebuilds_from_source(tmp_path: Path) -> None:
    shipped = loader.probe_loader_path()
    out = tmp_path / "probe.bin"
    subprocess.run(["nasm", "-f", "bin", "-o", out, shipped.with_suffix(".asm")], check=True)
    assert out.read_bytes() == shipped.read_bytes()


def test_probe_loader_is_shaped_like_an_osv_loader() -> None:
    ld = loader.read_loader(loader.probe_loader_path())
    assert ld.size == 65536 + 32768 and ld.count32 == 1
    assert ld.partition_start == 2 * 1024 * 1024 and ld.builtin_cmdline == ""
    assert ld.data[0x1B8:0x1BE] == b"VSO\0\0\0"


def test_probe_kernel_rebuilds_from_source(tmp_path: Path) -> None:
    shipped = loader.probe_kernel_path()
    out = tmp_path / "probe.elf"
    subprocess.run(["nasm", "-f", "bin", "-o", out, shipped.with_suffix(".asm")], check=True)
    assert out.read_bytes() == shipped.read_bytes()


def test_probe_kernel_is_a_pvh_elf() -> None:
    data = loader.probe_kernel_path().read_bytes()
    assert data[:7] == b"\x7fELF\x01\x01\x01"  # 32-bit, little-endian
    e_type, e_machine, _, entry, phoff = struct.unpack_from("<HHIII", data, 16)
    assert (e_type, e_machine) == (2, 3)  # ET_EXEC, EM_386
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    headers = [struct.unpack_from("<8I", data, phoff + i * phentsize) for i in range(phnum)]
    (load,) = [h for h in headers if h[0] == 1]
    (note,) = [h for h in headers if h[0] == 4]
    namesz, descsz, kind = struct.unpack_from("<III", data, note[1])
    assert (namesz, descsz, kind) == (4, 4, 18)  # XEN_ELFNOTE_PHYS32_ENTRY
    assert data[note[1] + 12:note[1] + 16] == b"Xen\0"
    (pvh_entry,) = struct.unpack_from("<I", data, note[1] + 16)
    assert pvh_entry == entry and load[3] <= entry < load[3] + load[4]
    assert load[1] == 0 and load[4] == len(data) <= load[5]
