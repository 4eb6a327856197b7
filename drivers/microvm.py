"""What the direct-kernel microVM drivers (Firecracker, Cloud Hypervisor) share.

There is no API socket: each instance is one VMM process started with
everything on its command line or in a generated config file, and it ends when
the guest powers off. ``$CAPSTAN_ROOT/instances/<platform>/<name>/`` holds the
raw root disk (converted from the image; the image itself is never written),
``vmm.json`` (kernel, command line, machine), ``console.log`` (the serial
console), ``vmm.log`` (the VMM's own messages) and ``vmm.pid``. The exit status
is read from the console, as for every driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from capstan.core import pids, proc
from capstan.core.config import Config
from capstan.core.errors import UsageError
from capstan.core.fs import atomic_write
from capstan.drivers.base import (
    Capability,
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    mac_address,
)
from capstan.drivers.hosted import HostedDriver

__all__ = ["KERNEL_LESS_BOOT", "MicroVmDriver", "Vm"]

#: the command line of a kernel-less image that gives none (OSv's default run script)
KERNEL_LESS_BOOT = "--rootfs=rofs runscript /run/default;"
_TAP = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@dataclass(frozen=True)
class Vm:
    """``vmm.json``: what the VMM is started with."""

    kernel: str
    cmdline: str
    disk: str
    memory_mib: int
    cpus: int
    tap: str | None = None
    mac: str | None = None


class MicroVmDriver(HostedDriver):
    """A VMM process per instance, the kernel loaded by the VMM (PVH)."""

    capabilities = frozenset({Capability.LOGS, Capability.DETACH, Capability.DIRECT_KERNEL})
    #: the setting naming the kernel used when ``run`` gives no ``--kernel``
    kernel_setting: ClassVar[str]
    #: whether the guest sees PCI (else OSv needs ``--nopci``)
    pci: ClassVar[bool] = False
    #: whether the serial console is the VMM's standard output
    serial_on_stdout: ClassVar[bool] = True
    doctor_check: ClassVar[Callable[[Config], Finding]]

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        return [cls.doctor_check(config)]

    # -- HostedDriver ---------------------------------------------------------

    def exists(self, name: str) -> bool:
        return False  # no registry: a VMM knows only the guest it runs

    def build(self, spec: InstanceSpec, folder: Path, forwards: Sequence[Any]) -> None:
        vm = self.vm(spec, folder)
        atomic_write(folder / "vmm.json", json.dumps(asdict(vm)).encode(), 0o600)
        self.configure(vm, folder)

    def destroy(self, name: str, folder: Path) -> None:
        """Nothing outside *folder* is ours."""

    def state(self, name: str) -> InstanceState:
        return InstanceState.RUNNING if self._alive(name) else InstanceState.STOPPED

    def soft_stop(self, name: str) -> None:
        self._signal(name, signal.SIGTERM)

    def hard_stop(self, name: str) -> None:
        self._signal(name, signal.SIGKILL)

    # -- lifecycle --------------------------------------------------------------

    def start(self, name: str) -> Instance:
        self.record(name)
        folder = self.folder(name)
        if self._alive(name):
            return self.get(name)
        self._tool_present()
        argv = [self.tool, *self.arguments(self._vm(folder), folder)]
        fd = os.open(folder / "vmm.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "ab") as log, open(folder / "console.log", "ab") as console:
            child = proc.spawn(argv, stdout=console if self.serial_on_stdout else log,
                               stderr=log, outlive=True)
        atomic_write(folder / "vmm.pid", f"{pids.token(child.pid)}\n".encode(), 0o600)
        return self.get(name)

    def vm(self, spec: InstanceSpec, folder: Path) -> Vm:
        """*spec* checked for this VMM, its disk made in *folder*."""
        kernel = spec.kernel or self._default_kernel()
        if spec.networking not in ("nat", "none", "tap"):
            raise UsageError(f"driver '{self.name}' networking: -n tap -b TAP (an existing "
                             "tap device) or -n none")
        tap = None
        if spec.networking == "tap":
            tap = spec.bridge or ""
            if not _TAP.fullmatch(tap):
                raise UsageError(f"invalid tap device {tap!r}: give -b TAP (1-15 of "
                                 "A-Z a-z 0-9 _ . -)")
        cmdline = self.cmdline(spec.cmdline or KERNEL_LESS_BOOT)
        self.check(cmdline, spec.cpus)
        disk = self.disk(replace(spec, cmdline=None), folder, "raw")
        return Vm(kernel=str(kernel.absolute()), cmdline=cmdline, disk=str(disk.absolute()),
                  memory_mib=spec.memory_mib, cpus=spec.cpus, tap=tap,
                  mac=mac_address(spec.mac) if tap else None)

    def check(self, cmdline: str, cpus: int) -> None:
        """Refuse what this VMM cannot boot (UsageError), before any disk is made."""

    def cmdline(self, text: str) -> str:
        """OSv's command line for this VMM: ``--nopci`` first without PCI, none with it."""
        words = text.split(" ")
        if self.pci:
            return " ".join(w for w in words if w != "--nopci")
        return text if "--nopci" in words else f"--nopci {text}"

    def _default_kernel(self) -> Path:
        configured = str(self.config.values.get(self.kernel_setting) or "")
        if not configured:
            raise UsageError(f"driver '{self.name}' boots a kernel directly: give --kernel K "
                             f"(OSv's loader-stripped.elf) or set {self.kernel_setting}")
        path = Path(configured).expanduser()
        if not path.is_file():
            raise UsageError(f"{self.kernel_setting}: {configured}: no such file")
        return path

    # -- the process ------------------------------------------------------------

    def _vm(self, folder: Path) -> Vm:
        data = json.loads((folder / "vmm.json").read_text())
        return Vm(**data)

    def _token(self, name: str) -> tuple[int | None, str]:
        """The VMM's pid and start time as recorded at spawn (``PID-STARTED``)."""
        try:
            pid, _, started = (self.folder(name) / "vmm.pid").read_text().strip().partition("-")
            return int(pid), started
        except (OSError, ValueError):
            return None, ""

    def _pid(self, name: str) -> int | None:
        return self._token(name)[0]

    def _alive(self, name: str) -> bool:
        """Whether the VMM of *name* runs: its pid, not a zombie, of our real uid, started
        when it was recorded (its argv is no proof: it is empty while the VMM execs, and
        any user can copy one)."""
        pid, started = self._token(name)
        found = pids.look(pid)
        return found is not None and not found.zombie and found.uid == os.getuid() and \
            bool(started) and found.started == started

    def _signal(self, name: str, sig: signal.Signals) -> None:
        pid = self._pid(name)
        if pid is not None and self._alive(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # -- the VMM ------------------------------------------------------------------

    @abstractmethod
    def configure(self, vm: Vm, folder: Path) -> None:
        """Write what the VMM reads besides its argv (a config file) into *folder*."""

    @abstractmethod
    def arguments(self, vm: Vm, folder: Path) -> list[str]:
        """The VMM's argv after its program name."""

