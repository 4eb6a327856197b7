"""VirtualBox driver through ``VBoxManage`` (Capstan's ``-p vbox``).

Capstan's sequence, with its bugs fixed: the image is converted to VDI by us
with the command line already written; NAT rules are named per host port and
protocol; the serial port goes to ``console.log``; stop presses the ACPI
button before powering off; a half-created VM is unregistered and deleted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from capstan.core.checks import tool_check
from capstan.core.config import Config
from capstan.core.errors import CommandFailed, UsageError
from capstan.drivers.base import (
    Capability,
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    PortForward,
    Setting,
    mac_address,
)
from capstan.drivers.hosted import HostedDriver

__all__ = ["VirtualBoxDriver"]

_STATE = re.compile(r'^VMState="([^"]*)"', re.MULTILINE)
#: VirtualBox machine states (showvminfo's VMState); aborted is a crashed VM process
_STATES = {"starting": InstanceState.STARTING, "restoring": InstanceState.STARTING,
           "running": InstanceState.RUNNING, "paused": InstanceState.PAUSED,
           "saving": InstanceState.STOPPING, "stopping": InstanceState.STOPPING,
           "poweroff": InstanceState.STOPPED, "powered off": InstanceState.STOPPED,
           "saved": InstanceState.STOPPED, "aborted": InstanceState.CRASHED}
_NAMES = re.compile(r'^"(.*)" \{[0-9a-f-]+\}$', re.MULTILINE)


class VirtualBoxDriver(HostedDriver):
    """VMs managed with VBoxManage; disks converted to VDI."""

    name = "vbox"
    platform = "vbox"
    tool = "VBoxManage"
    install_hint = "install VirtualBox (https://www.virtualbox.org/wiki/Downloads)"
    capabilities = frozenset({Capability.LOGS, Capability.PORT_FORWARD, Capability.DETACH,
                              Capability.GRACEFUL_STOP})
    settings = (Setting("vbox_storage", default="ahci", choices=("ahci", "virtio-scsi"),
                        help="the disk controller"),)
    doctor_check = tool_check("virtualbox", "VBoxManage", ["--version"],
                              "install VirtualBox from virtualbox.org")

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        return [cls.doctor_check(config)]

    def exists(self, name: str) -> bool:
        return name in _NAMES.findall(self.cli("list", "vms"))

    def build(self, spec: InstanceSpec, folder: Path, forwards: Sequence[PortForward]) -> None:
        controller = self.setting("vbox_storage")
        if controller not in ("ahci", "virtio-scsi"):
            raise UsageError(f"invalid VirtualBox storage '{controller}': ahci or virtio-scsi")
        disk = self.disk(spec, folder, "vdi")
        n = spec.name
        self.cli("createvm", "--name", n, "--basefolder", str(self.home), "--ostype",
                 "Linux26_64")
        self.cli("registervm", str(folder / f"{n}.vbox"))
        if controller == "ahci":
            self.cli("storagectl", n, "--name", "SATA", "--add", "sata", "--controller",
                     "IntelAHCI", "--hostiocache", "on")
            self.cli("storageattach", n, "--storagectl", "SATA", "--port", "0", "--device", "0",
                     "--type", "hdd", "--medium", str(disk))
        else:
            self.cli("storagectl", n, "--name", "VirtIO", "--add", "virtio", "--controller",
                     "VirtIO", "--hostiocache", "on")
            self.cli("storageattach", n, "--storagectl", "VirtIO", "--port", "0", "--device",
                     "0", "--type", "hdd", "--medium", str(disk))
        if spec.networking == "nat":
            self.cli("modifyvm", n, "--nic1", "nat", "--nictype1", "virtio")
            for f in forwards:
                rule = f"capstan-{f.protocol}-{f.host_port},{f.protocol},{f.host_addr}," \
                       f"{f.host_port},,{f.guest_port}"
                self.cli("modifyvm", n, "--natpf1", rule)
        elif spec.networking in ("bridge", "tap"):
            if forwards:
                raise UsageError("port forwards need nat networking")
            self.cli("modifyvm", n, "--nic1", "bridged", "--bridgeadapter1",
                     spec.bridge or "vboxnet0", "--macaddress1",
                     mac_address(spec.mac).replace(":", ""), "--nictype1", "virtio")
        elif spec.networking != "none":
            raise UsageError(f"networking '{spec.networking}' is not supported by VirtualBox")
        self.cli("modifyvm", n, "--hpet", "on", "--memory", str(spec.memory_mib), "--cpus",
                 str(spec.cpus), "--uart1", "0x3f8", "4", "--uartmode1", "file",
                 str(folder / "console.log"))

    def destroy(self, name: str, folder: Path) -> None:
        if self.exists(name):
            self.cli("unregistervm", name, "--delete")

    def start(self, name: str) -> Instance:
        self.record(name)
        self.cli("startvm", name, "--type", "headless")
        return self.get(name)

    def state(self, name: str) -> InstanceState:
        try:
            info = self.cli("showvminfo", name, "--machinereadable")
        except CommandFailed:
            return InstanceState.UNKNOWN
        match = _STATE.search(info)
        value = match.group(1) if match else ""
        return _STATES.get(value, InstanceState.UNKNOWN)

    def soft_stop(self, name: str) -> None:
        self.cli("controlvm", name, "acpipowerbutton")

    def hard_stop(self, name: str) -> None:
        self.cli("controlvm", name, "poweroff")
