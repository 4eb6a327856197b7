"""The hypervisor-agnostic driver interface (:class:`Driver`) and the registry of
installed drivers. The contract's value types come from :mod:`.model`, image stores
from :mod:`.images`, the disk service from :mod:`.disks` and a foreground run's
primitives from :mod:`.foreground`; all are re-exported here."""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, ClassVar

from capstan.core.checks import Finding, Status, has_module
from capstan.core.config import Config, Setting
from capstan.core.errors import BackendError, CapstanError, NotFound, UnsupportedOperation
from capstan.drivers.disks import (
    OVERLAY,
    UPLOAD,
    DiskDelta,
    DiskFacts,
    DiskForm,
    DiskInfo,
    DiskPreparer,
    PreparedDisk,
)
from capstan.drivers.foreground import Foreground, LogFollower
from capstan.drivers.images import ImageStore, StoredImage, UploadResult
from capstan.drivers.logs import FileLog, LogReader
from capstan.drivers.model import (
    VOLUME_SETTINGS,
    Capability,
    Instance,
    InstanceSpec,
    InstanceState,
    PortForward,
    Volume,
    console_verdict,
    free_port,
    mac_address,
    required_capabilities,
)

__all__ = [
    "OVERLAY",
    "UPLOAD",
    "Capability",
    "DiskDelta",
    "DiskFacts",
    "DiskForm",
    "DiskInfo",
    "DiskPreparer",
    "Driver",
    "FileLog",
    "Finding",
    "Foreground",
    "ImageStore",
    "Instance",
    "InstanceSpec",
    "InstanceState",
    "LogReader",
    "PortForward",
    "PreparedDisk",
    "Setting",
    "Status",
    "StoredImage",
    "VOLUME_SETTINGS",
    "UploadResult",
    "Volume",
    "console_verdict",
    "driver_class",
    "driver_classes",
    "driver_names",
    "free_port",
    "get_driver",
    "mac_address",
    "required_capabilities",
]

_WHAT = {
    Capability.CONSOLE: "a serial console", Capability.LOGS: "console logs",
    Capability.PORT_FORWARD: "port forwards (-f)", Capability.VOLUMES: "volumes (--volume)",
    Capability.PRIVATE_NETWORK: "private networks", Capability.DETACH: "detached runs (-d)",
    Capability.GRACEFUL_STOP: "graceful stops", Capability.REMOTE: "remote instances",
    Capability.IMAGES: "images (they are files in the local repository)",
    Capability.DIRECT_KERNEL: "direct kernel boot (--kernel, --machine microvm)",
}


class Driver(ABC):
    """One hypervisor backend. Drivers connect lazily: constructing one is free.

    *disks* is the disk service (:class:`DiskPreparer`) the services hand in; a driver
    made without one can list its instances but touches no image file.
    """

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: the configuration keys this driver reads (resolved when it is constructed)
    settings: ClassVar[tuple[Setting, ...]] = ()

    def __init__(self, config: Config, disks: DiskPreparer | None = None) -> None:
        self.config = config.with_settings(self.settings)
        self._disks = disks

    def setting(self, key: str) -> str:
        """This driver's setting *key* as text; when it is empty, its declared default
        (``""`` when there is none)."""
        declared = next(s for s in self.settings if s.key == key)
        return str(self.config.values.get(key) or "") or str(declared.default or "")

    @property
    def disks(self) -> DiskPreparer:
        """The disk service this driver was handed."""
        if self._disks is None:
            raise CapstanError(f"driver {self.name} was made without a disk service")
        return self._disks

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        """``capstan doctor``'s checks of this driver (*config* holds its settings)."""
        return ()

    @classmethod
    def missing_library(cls, module: str, package: str) -> list[Finding]:
        """A MISSING finding when *module* (PyPI's *package*) cannot be imported: install
        ``pycapstan[<driver>]``; else none."""
        if has_module(module):
            return []
        return [Finding(cls.name, Status.MISSING, f"{package} is not installed",
                        f"pip install 'pycapstan[{cls.name}]'")]

    @abstractmethod
    def create(self, spec: InstanceSpec) -> Instance:
        """Prepare an instance (disk, state files) without starting it; Conflict when
        an instance of that name exists."""

    def replace(self, spec: InstanceSpec) -> Instance:
        """Create *spec* where a stopped instance of that name may be replaced (QEMU:
        Capstan's ``run -i``); by default the same as :meth:`create`."""
        return self.create(spec)

    @abstractmethod
    def start(self, name: str) -> Instance:
        """Start a created or stopped instance in the background."""

    @abstractmethod
    def stop(self, name: str, timeout: float = 30) -> Instance:
        """Power the guest off gracefully, escalating after *timeout* seconds."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Stop the instance if needed and remove everything it owns."""

    @abstractmethod
    def get(self, name: str) -> Instance:
        """The instance called *name*, or NotFound."""

    @abstractmethod
    def list(self) -> Iterator[Instance]:
        """Every instance of this driver."""

    def image_store(self) -> ImageStore:
        """This driver as an image store (UnsupportedOperation without one)."""
        self.require(Capability.IMAGES)
        if not isinstance(self, ImageStore):
            raise UnsupportedOperation(self.name, _WHAT[Capability.IMAGES])
        return self

    def require(self, *capabilities: Capability) -> None:
        """UnsupportedOperation naming the first of *capabilities* this driver lacks."""
        for cap in capabilities:
            if cap not in self.capabilities:
                raise UnsupportedOperation(self.name, _WHAT[cap])

    def log_path(self, name: str) -> Path:
        """The file holding the instance's console output."""
        raise UnsupportedOperation(self.name, "logs")

    def free_memory_mib(self) -> int | None:
        """Memory the host has free for new instances (MiB), or None when it does not say."""
        return None

    def open_log(self, name: str) -> LogReader:
        """The instance's console log, to read as it grows (by default the file
        :meth:`log_path` names); nothing is read yet."""
        return FileLog(self.log_path(name))

    def read_log(self, name: str) -> bytes:
        """The console output so far."""
        with self.open_log(name) as log:
            return log.rest()

    def dry_run(self, spec: InstanceSpec) -> Sequence[str]:
        """What create and start would do for *spec*, one line each."""
        return [f"create instance {spec.name} from {spec.image} "
                f"({spec.memory_mib} MiB, {spec.cpus} vCPUs)", f"start {spec.name}"]

    def foreground(self, name: str) -> Foreground:
        """Start *name* for a foreground run: the primitives the instances service's
        loop drives (by default: state from :meth:`get`, the console from
        :meth:`open_log`, :meth:`stop`)."""
        return LogFollower(self, name)

    def console(self, name: str, stdin: int, stdout: BinaryIO, escape: bytes | None) -> None:
        """Attach *stdin* (a file descriptor) and *stdout* to the guest's serial console.

        Returns when the guest goes away, when *escape* is read from *stdin*, or
        (with no escape, i.e. not a terminal) once *stdin* ends and the guest stops.
        """
        raise UnsupportedOperation(self.name, "console")


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The ``capstan.drivers`` entry points, none loaded, from stevedore's cache
    (which cliff has already read for its formatters)."""
    from stevedore.named import NamedExtensionManager

    eps = NamedExtensionManager("capstan.drivers", names=[]).list_entry_points()
    return {ep.name: ep for ep in eps}


def driver_names() -> list[str]:
    """Names of every installed driver."""
    return sorted(_entry_points())


def driver_class(name: str) -> type[Driver]:
    """The class of driver *name*, imported only now."""
    ep = _entry_points().get(name)
    if ep is None:
        raise NotFound(f"'{name}' is not a supported hypervisor "
                       f"(installed: {', '.join(driver_names())})")
    try:
        cls = ep.load()
    except ImportError as err:
        raise BackendError(f"driver '{name}' cannot load: {err} "
                           f"(install pycapstan[{name}])") from err
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise BackendError(f"driver '{name}' is not a capstan driver ({ep.value})")
    return cls


def driver_classes() -> list[type[Driver]]:
    """Every installed driver's class, by name (all imported now)."""
    return [driver_class(name) for name in driver_names()]


def get_driver(name: str, config: Config, disks: DiskPreparer | None = None) -> Driver:
    """An instance of driver *name*, imported only now, handed the disk service *disks*."""
    return driver_class(name)(config, disks)
