"""What the desktop-hypervisor drivers (VirtualBox, VMware) share.

Each instance lives in ``$CAPSTAN_ROOT/instances/<platform>/<name>/`` with a
disk converted from the image (command line written first), ``console.log``
from the serial port and ``instance.json``. The hypervisor's own CLI is the
source of truth for state; our record only says the VM is ours.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from capstan.core import proc, timestamps
from capstan.core.errors import CommandFailed, Conflict, NotFound, ToolMissing, UsageError
from capstan.core.fs import atomic_write
from capstan.drivers.base import DiskForm, Driver, Instance, InstanceSpec, InstanceState

__all__ = ["HostedDriver"]


class HostedDriver(Driver):
    """A driver that runs VMs through a hypervisor's command-line tool."""

    platform: str  # directory under instances/, e.g. "vbox"
    tool: str  # the CLI, e.g. "VBoxManage"
    install_hint: str

    @property
    def home(self) -> Path:
        """``<root>/instances/<platform>``."""
        return self.config.instances / self.platform

    def folder(self, name: str) -> Path:
        """The directory of instance *name*."""
        if not name or "/" in name or name.startswith("."):
            raise UsageError(f"invalid instance name '{name}'")
        return self.home / name

    def cli(self, *args: str, what: str = "") -> str:
        """Run the hypervisor's CLI; its failure becomes a one-line CommandFailed."""
        self._tool_present()
        argv = [self.tool, *args]
        try:
            return proc.run(argv, timeout=300).stdout.decode(errors="replace")
        except CommandFailed as err:
            lines = [ln for ln in err.stderr.splitlines() if ln.strip()]
            detail = lines[0] if lines else f"exit status {err.returncode}"
            raise CommandFailed(argv, err.returncode, detail) from err

    def _tool_present(self) -> None:
        if not shutil.which(self.tool):
            raise ToolMissing(f"{self.tool} not found: {self.install_hint}")

    # -- records ---------------------------------------------------------------

    def record(self, name: str) -> dict[str, Any]:
        """Our ``instance.json`` of *name*; NotFound when it is not ours."""
        try:
            data: dict[str, Any] = json.loads((self.folder(name) / "instance.json").read_text())
        except FileNotFoundError as err:
            raise NotFound(f"no such instance: {name}") from err
        return data

    def disk(self, spec: InstanceSpec, folder: Path, fmt: str, options: Sequence[str] = (),
             name: str = "disk") -> Path:
        """The instance disk: *spec*'s image with its command line, converted to *fmt*."""
        form = DiskForm(fmt, tuple(options), standalone=True)
        return self.disks.prepare(spec, folder / f"{name}.{fmt}", form).path

    def create(self, spec: InstanceSpec) -> Instance:
        folder = self.folder(spec.name)
        self._tool_present()
        if folder.exists():
            raise Conflict(f"instance {spec.name} exists: delete it first")
        if self.exists(spec.name):
            raise Conflict(f"{self.tool} already has a VM named {spec.name} that pycapstan "
                           "did not create; choose another name")
        forwards = tuple(f.allocate() for f in spec.forwards)
        folder.mkdir(parents=True)
        try:
            self.build(spec, folder, forwards)
        except BaseException:
            with contextlib.suppress(Exception):
                self.destroy(spec.name, folder)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        atomic_write(folder / "instance.json", json.dumps({
            "image": str(spec.image.absolute()),
            "digest": self.disks.facts(spec.image).sha256,
            "created": timestamps.now(),
            "ports": [str(f) for f in forwards]}).encode())
        return self.get(spec.name)

    def delete(self, name: str) -> None:
        self.record(name)
        self.stop(name)
        self.destroy(name, self.folder(name))
        shutil.rmtree(self.folder(name), ignore_errors=True)

    def stop(self, name: str, timeout: float = 30) -> Instance:
        self.record(name)
        if self.state(name).live:
            self.soft_stop(name)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.state(name).live:
                time.sleep(0.2)
            if self.state(name).live:
                self.hard_stop(name)
        return self.get(name)

    def get(self, name: str) -> Instance:
        data = self.record(name)
        return Instance(name, self.name, self.state(name), data["image"],
                        ports=tuple(data.get("ports", [])), image_digest=data.get("digest", ""),
                        created=data.get("created", ""))

    def list(self) -> Iterator[Instance]:
        found = []
        for record in sorted(self.home.glob("*/instance.json")) if self.home.is_dir() else []:
            with contextlib.suppress(NotFound):
                found.append(self.get(record.parent.name))
        return iter(found)

    def log_path(self, name: str) -> Path:
        self.record(name)
        return self.folder(name) / "console.log"

    # -- the hypervisor ----------------------------------------------------------

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the hypervisor knows a VM called *name*."""

    @abstractmethod
    def build(self, spec: InstanceSpec, folder: Path, forwards: Sequence[Any]) -> None:
        """Create the VM and its disk in *folder* (not started)."""

    @abstractmethod
    def destroy(self, name: str, folder: Path) -> None:
        """Remove the VM from the hypervisor (it is stopped)."""

    @abstractmethod
    def state(self, name: str) -> InstanceState:
        """The VM's state as the hypervisor reports it."""

    @abstractmethod
    def soft_stop(self, name: str) -> None:
        """Press the ACPI power button."""

    @abstractmethod
    def hard_stop(self, name: str) -> None:
        """Power off at once."""
