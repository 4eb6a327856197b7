"""The shipped probe loader is exactly what its nasm source assembles to."""

from __future__ import annotations

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
