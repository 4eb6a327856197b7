"""Cloud Hypervisor driver (``-p cloud-hypervisor``): everything on its command line.

``cloud-hypervisor --kernel K --cmdline TEXT --disk path=DISK --cpus boot=N
--memory size=NM --serial file=console.log --console off [--net tap=TAP,mac=M]``
with no API socket. Its devices are virtio-pci, so OSv's command line has no
``--nopci``. Option values are comma-separated ``key=value`` lists, so a path
holding a comma is refused.
"""

from __future__ import annotations

from pathlib import Path

from capstan.core.checks import tool_check
from capstan.core.errors import UsageError
from capstan.drivers.base import Setting
from capstan.drivers.microvm import MicroVmDriver, Vm

__all__ = ["CloudHypervisorDriver"]


def _value(path: str, what: str) -> str:
    """*path* as a value of a ``key=value,...`` option."""
    if "," in path:
        raise UsageError(f"{what} {path!r}: Cloud Hypervisor cannot take a path with a comma")
    return path


class CloudHypervisorDriver(MicroVmDriver):
    """OSv on Cloud Hypervisor."""

    name = "cloud-hypervisor"
    platform = "cloud-hypervisor"
    tool = "cloud-hypervisor"
    install_hint = ("install Cloud Hypervisor (https://github.com/cloud-hypervisor/"
                    "cloud-hypervisor/releases) and put 'cloud-hypervisor' on PATH")
    kernel_setting = "cloud_hypervisor_kernel"
    pci = True
    serial_on_stdout = False
    settings = (Setting("cloud_hypervisor_kernel", help="OSv kernel ELF (loader-stripped.elf) "
                        "booted when run gives no --kernel"),)
    doctor_check = tool_check("cloud-hypervisor", "cloud-hypervisor", ["--version"],
                              "install Cloud Hypervisor from its GitHub releases (needs "
                              "/dev/kvm)")

    def configure(self, vm: Vm, folder: Path) -> None:
        self.arguments(vm, folder)  # every path checked now, not at start

    def arguments(self, vm: Vm, folder: Path) -> list[str]:
        console = str((folder / "console.log").absolute())
        argv = ["--kernel", vm.kernel, "--cmdline", vm.cmdline,
                "--disk", f"path={_value(vm.disk, 'disk')}",
                "--cpus", f"boot={vm.cpus}", "--memory", f"size={vm.memory_mib}M",
                "--serial", f"file={_value(console, 'console log')}", "--console", "off"]
        if vm.tap is not None:
            argv += ["--net", f"tap={vm.tap},mac={vm.mac}"]
        return argv
