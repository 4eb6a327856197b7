"""Helpers for tests that boot the probe loader under QEMU TCG."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from capstan.image.inspect import OsvImage

QEMU_FORMAT = {
    "qcow2": "qcow2", "raw": "raw", "vmdk": "vmdk", "vmdk-stream": "vmdk",
    "vmdk-flat": "vmdk", "vdi": "vdi", "vhd": "vpc", "vhdx": "vhdx",
}
_LINE = re.compile(r"PROBE ([^=\s]+)[=\s]?(.*)")


def fnv1a(data: bytes) -> str:
    """FNV-1a 32 of *data*, as the probe prints it."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return f"{h:08x}"


def expected_report(image: Path) -> dict[str, str]:
    """What the probe must print for *image*, computed on the host."""
    with OsvImage(image) as img:
        part = img.partition
        assert part is not None
        data = b"".join(img.partition_chunks())
        return {
            "cmdline": f"[{img.cmdline}]",
            "part2": f"lba={part.start // 512:08x} sectors={part.size // 512:08x}",
            "rofs-magic": "ok",
            "fnv1a": fnv1a(data),
        }


def boot(image: Path, fmt: str, log: Path, bus: str = "virtio",
         extra: tuple[str, ...] = (), timeout: float = 60) -> dict[str, str]:
    """Boot *image* with the probe under TCG; return the PROBE lines by key."""
    drive = f"file={image},format={QEMU_FORMAT[fmt]},snapshot=on"
    if bus == "ahci":
        disk = ["-M", "q35", "-drive", f"{drive},if=none,id=d0",
                "-device", "ide-hd,drive=d0,bus=ide.0"]
    elif bus == "pvscsi":  # VMware's paravirtual SCSI controller
        disk = ["-M", "pc", "-device", "pvscsi,id=s0", "-drive", f"{drive},if=none,id=d0",
                "-device", "scsi-hd,drive=d0,bus=s0.0"]
    else:
        disk = ["-M", "pc", "-drive", f"{drive},if={bus}"]
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "64", "-nodefaults",
            "-display", "none", "-serial", f"file:{log}", "-no-reboot", *disk, *extra]
    done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return parse_report(log.read_text(errors="replace"))


def boot_kernel(kernel: Path, append: str, disk: Path | None, log: Path,
                machine: str = "microvm", extra: tuple[str, ...] = (),
                timeout: float = 60) -> dict[str, str]:
    """Boot *kernel* (PVH) under TCG with *disk* on virtio-mmio; return the PROBE lines."""
    argv = ["qemu-system-x86_64", "-M", machine, "-accel", "tcg", "-m", "64", "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", f"file:{log}", "-no-reboot",
            "-kernel", str(kernel), "-append", append, *extra]
    if disk is not None:
        argv += ["-drive", f"id=d0,file={disk},format=raw,if=none,snapshot=on",
                 "-device", "virtio-blk-device,drive=d0"]
    done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return parse_report(log.read_text(errors="replace"))


def parse_report(text: str) -> dict[str, str]:
    """The PROBE lines of a console log, by key."""
    report: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match:
            report[match.group(1)] = match.group(2)
    return report
