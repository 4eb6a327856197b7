"""The probe kernel boots under QEMU microvm (TCG) and reports what the VM gives it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from capstan.image.loader import probe_kernel_path

from guest import boot_kernel

pytestmark = pytest.mark.qemu

HEAD = bytes(range(0xA0, 0xB0))


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 1 MiB raw disk whose sector 0 starts with HEAD."""
    path = tmp_path / "disk.raw"
    path.write_bytes(HEAD + bytes(1024 * 1024 - len(HEAD)))
    return path


@pytest.mark.parametrize(("machine", "extra", "version"), [
    ("microvm", (), "1"),
    ("microvm,acpi=off,auto-kernel-cmdline=on", (), "1"),
    ("microvm,acpi=off", ("-global", "virtio-mmio.force-legacy=false"), "2"),
])
def test_probe_kernel_reports_cmdline_and_sector0(
        tmp_path: Path, disk: Path, machine: str, extra: tuple[str, ...], version: str) -> None:
    report = boot_kernel(probe_kernel_path(), "--nopci hello world", disk, tmp_path / "log",
                         machine=machine, extra=extra)
    assert report["cmdline"].startswith("[--nopci hello world")
    assert report["virtio-blk"].endswith(f" version={version}")
    assert report["sector0"] == HEAD.hex()
    assert "done" in report and "fail" not in report


def test_auto_kernel_cmdline_names_the_transport_the_probe_found(
        tmp_path: Path, disk: Path) -> None:
    report = boot_kernel(probe_kernel_path(), "x", disk, tmp_path / "log",
                         machine="microvm,acpi=off,auto-kernel-cmdline=on")
    address = report["virtio-blk"].split()[0]
    assert f"virtio_mmio.device=512@0x{address}:" in report["cmdline"]


def test_probe_kernel_without_a_disk(tmp_path: Path) -> None:
    report = boot_kernel(probe_kernel_path(), "", None, tmp_path / "log")
    assert report["cmdline"] == "[]"
    assert report["virtio-blk"] == "none" and "sector0" not in report and "done" in report


def test_deaf_probe_kernel_never_powers_off() -> None:
    argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(probe_kernel_path()), "-append", "@deaf"]
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.startswith(b"PROBE done"):
                    break
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        finally:
            proc.kill()


def test_probe_kernel_follows_partition_2(tmp_path: Path) -> None:
    sector0 = bytearray(512)
    sector0[0x1CE + 4] = 0x83
    sector0[0x1D6:0x1DE] = bytes.fromhex("02000000" "03000000")  # LBA 2, 3 sectors
    sector0[510:] = b"\x55\xaa"
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(sector0) + bytes(4096))  # no ROFS superblock at LBA 2
    report = boot_kernel(probe_kernel_path(), "", disk, tmp_path / "log")
    assert report["part2"] == "lba=00000002 sectors=00000003"
    assert report["rofs-magic"] == "bad" and "done" in report
