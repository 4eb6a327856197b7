"""VMware Workstation/Fusion driver through ``vmrun`` (Capstan's ``-p vmw``).

The ``.vmx`` keeps Capstan's device choices (PVSCSI disk, VMXNET3 NIC, HPET,
COM1) with the serial port written to ``console.log``; the disk is a
monolithicSparse VMDK made by us with the command line already in it.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

from capstan.core.checks import tool_check
from capstan.core.config import Config
from capstan.core.errors import CommandFailed, UsageError
from capstan.core.fs import atomic_write
from capstan.drivers.base import (
    Capability,
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    PortForward,
    mac_address,
)
from capstan.drivers.hosted import HostedDriver

__all__ = ["VMwareDriver", "vmx"]


def vmx(spec: InstanceSpec, disk: Path, console: Path) -> str:
    """The ``.vmx`` of *spec* (``key = "value"`` lines)."""
    if spec.networking == "nat":
        net = "nat"
    elif spec.networking == "bridge":
        net = "bridged"
    else:
        raise UsageError(f"networking '{spec.networking}' is not supported by VMware "
                         "(nat or bridge)")
    settings = {
        ".encoding": "UTF-8", "config.version": "8", "virtualHW.version": "14",
        "virtualHW.productCompatibility": "hosted", "displayName": spec.name,
        "guestOS": "ubuntu-64", "memsize": str(spec.memory_mib),
        "numvcpus": str(spec.cpus), "nvram": "osv.nvram", "hpet0.present": "TRUE",
        "pciBridge0.present": "TRUE", "pciBridge4.present": "TRUE",
        "pciBridge4.virtualDev": "pcieRootPort", "pciBridge4.functions": "8",
        "scsi0.present": "TRUE", "scsi0.virtualDev": "pvscsi",
        "scsi0:0.present": "TRUE", "scsi0:0.fileName": str(disk),
        "ethernet0.present": "TRUE", "ethernet0.virtualDev": "vmxnet3",
        "ethernet0.connectionType": net, "ethernet0.addressType": "static",
        "ethernet0.address": mac_address(spec.mac or _vmware_mac(spec.name)),
        "serial0.present": "TRUE", "serial0.fileType": "file",
        "serial0.fileName": str(console), "serial0.startConnected": "TRUE",
        "usb.present": "FALSE", "sound.present": "FALSE", "floppy0.present": "FALSE",
        "tools.syncTime": "FALSE", "cleanShutdown": "TRUE", "softPowerOff": "FALSE",
    }
    return "".join(f'{key} = "{value}"\n' for key, value in settings.items())


def _vmware_mac(name: str) -> str:
    """A stable address in VMware's static range 00:50:56:00:00:00-3F:FF:FF."""
    import hashlib

    h = hashlib.sha256(name.encode()).digest()
    return f"00:50:56:{h[0] & 0x3F:02x}:{h[1]:02x}:{h[2]:02x}"


class VMwareDriver(HostedDriver):
    """VMs managed with vmrun; disks converted to VMDK."""

    name = "vmw"
    platform = "vmw"
    tool = "vmrun"
    install_hint = "install VMware Workstation (Linux, Windows) or Fusion (macOS)"
    capabilities = frozenset({Capability.LOGS, Capability.DETACH, Capability.GRACEFUL_STOP})
    doctor_check = tool_check("vmware", "vmrun", None,
                              "install VMware Workstation (Linux, Windows) or Fusion (macOS)")

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        return [cls.doctor_check(config)]

    @property
    def host_type(self) -> str:
        """``fusion`` on macOS, ``ws`` elsewhere."""
        return "fusion" if platform.system() == "Darwin" else "ws"

    def _vmx(self, name: str) -> Path:
        return self.folder(name) / "osv.vmx"

    def exists(self, name: str) -> bool:
        return self._vmx(name).exists()

    def build(self, spec: InstanceSpec, folder: Path, forwards: Sequence[PortForward]) -> None:
        disk = self.disk(spec, folder, "vmdk", ("adapter_type=lsilogic",
                                                "subformat=monolithicSparse"), name="osv")
        atomic_write(folder / "osv.vmx", vmx(spec, disk, folder / "console.log").encode())

    def destroy(self, name: str, folder: Path) -> None:
        if self._vmx(name).exists():
            self.cli("-T", self.host_type, "deleteVM", str(self._vmx(name)))

    def start(self, name: str) -> Instance:
        self.record(name)
        self.cli("-T", self.host_type, "start", str(self._vmx(name)), "nogui")
        return self.get(name)

    def state(self, name: str) -> InstanceState:
        try:
            listing = self.cli("list")
        except CommandFailed:
            return InstanceState.UNKNOWN
        running = {Path(line.strip()).resolve() for line in listing.splitlines()[1:]
                   if line.strip()}
        return InstanceState.RUNNING if self._vmx(name).resolve() in running \
            else InstanceState.STOPPED

    def soft_stop(self, name: str) -> None:
        self.cli("-T", self.host_type, "stop", str(self._vmx(name)), "soft")

    def hard_stop(self, name: str) -> None:
        self.cli("-T", self.host_type, "stop", str(self._vmx(name)), "hard")


