"""Firecracker driver (``-p firecracker``): API-less, from a generated config file.

``firecracker --no-api --config-file vm.json`` boots the kernel (OSv's
``loader-stripped.elf``) with ``boot-source.boot_args`` as OSv's command line
(``--nopci`` first: Firecracker has no PCI; it appends the virtio-mmio devices
itself), the raw root disk as the root drive, an existing tap device as the
network (``-n tap -b TAP``) and the serial console on its standard output,
which goes to ``console.log``. The config's fields are those of Firecracker's
``FullVmConfiguration`` (swagger ``firecracker.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path

from capstan.core.checks import tool_check
from capstan.core.errors import UsageError
from capstan.core.fs import atomic_write
from capstan.drivers.base import Setting
from capstan.drivers.microvm import MicroVmDriver, Vm

__all__ = ["FirecrackerDriver"]

#: Firecracker's limit on the kernel command line (x86_64), in bytes
MAX_BOOT_ARGS = 2048
MAX_VCPUS = 32


class FirecrackerDriver(MicroVmDriver):
    """OSv on Firecracker microVMs."""

    name = "firecracker"
    platform = "firecracker"
    tool = "firecracker"
    install_hint = ("install Firecracker (https://github.com/firecracker-microvm/firecracker/"
                    "releases) and put 'firecracker' on PATH")
    kernel_setting = "firecracker_kernel"
    settings = (Setting("firecracker_kernel", help="OSv kernel ELF (loader-stripped.elf) "
                        "booted when run gives no --kernel"),)
    doctor_check = tool_check("firecracker", "firecracker", ["--version"],
                              "install Firecracker from its GitHub releases (needs /dev/kvm)")

    def check(self, cmdline: str, cpus: int) -> None:
        size = len(cmdline.encode())
        if size > MAX_BOOT_ARGS:
            raise UsageError(f"the command line is {size} bytes: Firecracker takes at most "
                             f"{MAX_BOOT_ARGS}")
        if cpus != 1 and (cpus % 2 or cpus > MAX_VCPUS):
            raise UsageError(f"invalid cpu count {cpus}: Firecracker takes 1 or an even "
                             f"number up to {MAX_VCPUS}")

    def configure(self, vm: Vm, folder: Path) -> None:
        (folder / "vmm.log").touch(0o600)  # Firecracker's logger opens, never creates, it
        config: dict[str, object] = {
            "boot-source": {"kernel_image_path": vm.kernel, "boot_args": vm.cmdline},
            "drives": [{"drive_id": "rootfs", "path_on_host": vm.disk,
                        "is_root_device": True, "is_read_only": False}],
            "machine-config": {"vcpu_count": vm.cpus, "mem_size_mib": vm.memory_mib,
                               "smt": False},
            "logger": {"log_path": str((folder / "vmm.log").absolute()), "level": "Warning"},
        }
        if vm.tap is not None:
            config["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": vm.tap,
                                             "guest_mac": vm.mac}]
        atomic_write(folder / "vm.json", (json.dumps(config, indent=2) + "\n").encode(), 0o600)

    def arguments(self, vm: Vm, folder: Path) -> list[str]:
        return ["--no-api", "--config-file", str((folder / "vm.json").absolute())]
