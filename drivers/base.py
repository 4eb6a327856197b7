"""The hypervisor-agnostic driver interface, its value types and the registry."""

from __future__ import annotations

import enum
import importlib.metadata
import os
import re
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

from capstan.core.checks import Finding, Status
from capstan.core.config import Config, Setting
from capstan.core.errors import (
    BackendError,
    CapstanError,
    Conflict,
    GuestFailure,
    GuestTimeout,
    NotFound,
    UnsupportedOperation,
    UsageError,
)

__all__ = [
    "OVERLAY",
    "UPLOAD",
    "Capability",
    "DiskFacts",
    "DiskForm",
    "DiskInfo",
    "DiskPreparer",
    "Driver",
    "Finding",
    "ImageStore",
    "Instance",
    "InstanceSpec",
    "InstanceState",
    "PortForward",
    "PreparedDisk",
    "Setting",
    "Status",
    "StoredImage",
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


def mac_address(text: str | None) -> str:
    """*text* normalised, or a random locally administered unicast MAC."""
    if text is None:
        octets = bytearray(os.urandom(6))
        octets[0] = (octets[0] | 0x02) & 0xFE
        return ":".join(f"{b:02x}" for b in octets)
    if not _MAC.fullmatch(text):
        raise UsageError(f"invalid MAC address {text!r}: use six hex pairs, e.g. "
                         "52:54:00:12:34:56")
    if int(text[:2], 16) & 1:
        raise UsageError(f"invalid MAC address {text!r}: it is a multicast address")
    return text.lower().replace("-", ":")


def free_port(addr: str, proto: str, port: int = 0) -> int:
    """*port* (or, for 0, a free one) on *addr*, checked by binding it now."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, kind) as s:
        try:
            s.bind((addr, port))
        except OSError as err:
            raise Conflict(f"cannot forward {addr}:{port}/{proto}: {err.strerror}") from err
        return int(s.getsockname()[1])


class InstanceState(enum.Enum):
    """Normalised instance state; each driver maps its own states onto these."""

    STARTING = "starting"  # asked to start, not yet running (EC2 pending, GCE staging)
    RUNNING = "running"
    PAUSED = "paused"  # suspended with its memory kept; resumed, not booted
    STOPPING = "stopping"  # shutting down
    STOPPED = "stopped"
    CRASHED = "crashed"  # the backend saw the guest fail (libvirt crashed, Nova ERROR)
    UNKNOWN = "unknown"
    DAMAGED = "damaged"  # its state file is unreadable; it can still be stopped and deleted

    @property
    def live(self) -> bool:
        """Whether the guest holds resources and may still run (its console still grows)."""
        return self in _LIVE


_LIVE = frozenset({InstanceState.STARTING, InstanceState.RUNNING, InstanceState.PAUSED,
                   InstanceState.STOPPING})


class Capability(enum.Enum):
    """What a driver can do beyond create, start, stop, delete, get and list."""

    CONSOLE = "console"  # an interactive serial console
    LOGS = "logs"  # a console log file that can be followed
    PORT_FORWARD = "port_forward"  # -f host ports forwarded to the guest
    VOLUMES = "volumes"  # --volume extra disks
    PRIVATE_NETWORK = "private_network"  # host-local segments shared by name
    DETACH = "detach"  # run -d
    GRACEFUL_STOP = "graceful_stop"  # an ACPI power-off before a hard one
    REMOTE = "remote"  # instances live on another host or in a cloud
    IMAGES = "images"  # an image store (images/rmi/image upload -p)
    DIRECT_KERNEL = "direct_kernel"  # --kernel K: the VMM loads the kernel (microVMs)


def required_capabilities(spec: InstanceSpec) -> frozenset[Capability]:
    """The capabilities a driver needs to create *spec*."""
    wanted = {Capability.PORT_FORWARD: bool(spec.forwards),
              Capability.VOLUMES: bool(spec.volumes),
              Capability.PRIVATE_NETWORK: spec.private_network is not None,
              Capability.DIRECT_KERNEL: spec.kernel is not None}
    return frozenset(cap for cap, needed in wanted.items() if needed)


_WHAT = {
    Capability.CONSOLE: "a serial console", Capability.LOGS: "console logs",
    Capability.PORT_FORWARD: "port forwards (-f)", Capability.VOLUMES: "volumes (--volume)",
    Capability.PRIVATE_NETWORK: "private networks", Capability.DETACH: "detached runs (-d)",
    Capability.GRACEFUL_STOP: "graceful stops", Capability.REMOTE: "remote instances",
    Capability.IMAGES: "images (they are files in the local repository)",
    Capability.DIRECT_KERNEL: "direct kernel boot (--kernel, --machine microvm)",
}
MAX_PORT = 65535
_FORWARD = re.compile(
    r"(?:(?P<addr>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d{1,5}):(?P<guest>\d{1,5})"
    r"(?:/(?P<proto>tcp|udp))?")
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")
_UNESCAPED_COLON = re.compile(r"(?<!\\):")
_CRASH = ("Aborted", "Assertion failed", "[backtrace]", "page fault outside application")
_STATUS = re.compile(rb"program (?:exited with status|.* returned) (\d+)")
_SETTING_COLON = re.compile(r":(?=(?:format|cache|aio)=)", re.IGNORECASE)


@dataclass(frozen=True)
class PortForward:
    """A host port forwarded to a guest port (``[addr:]host:guest[/udp]``)."""

    host_port: int
    guest_port: int
    protocol: str = "tcp"
    host_addr: str = "127.0.0.1"

    @classmethod
    def parse(cls, text: str) -> PortForward:
        """Parse Capstan's ``-f`` rule; host port 0 means "pick a free port"."""
        match = _FORWARD.fullmatch(text.strip())
        if match is None:
            raise UsageError(f"invalid port forward {text!r}: use [ADDR:]HOST:GUEST[/udp]")
        host, guest = int(match["host"]), int(match["guest"])
        if host > MAX_PORT or not 0 < guest <= MAX_PORT:
            raise UsageError(f"invalid port forward {text!r}: ports are 1-65535")
        return cls(host, guest, match["proto"] or "tcp", (match["addr"] or "127.0.0.1").strip("[]"))

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port}->{self.guest_port}/{self.protocol}"

    def allocate(self) -> PortForward:
        """This rule with its host port checked free now (0 becomes a free port)."""
        port = free_port(self.host_addr, self.protocol, self.host_port)
        return PortForward(port, self.guest_port, self.protocol, self.host_addr)


#: each volume setting and the values it takes (``vhd`` is QEMU's ``vpc``)
VOLUME_SETTINGS: Mapping[str, Mapping[str, str]] = {
    "format": {f: f for f in ("raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx")} | {"vhd": "vpc"},
    "cache": {c: c for c in ("none", "writeback", "writethrough", "directsync", "unsafe")},
    "aio": {a: a for a in ("threads", "native", "io_uring")},
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Volume:
    """An extra disk attached to the instance; ``format`` None until probed, ``cache``
    and ``aio`` empty for "the default" until :meth:`resolved` where it is attached."""

    path: Path
    format: str | None = None
    cache: str = ""
    aio: str = ""

    def resolved(self, direct_io: bool) -> Volume:
        """The settings QEMU gets: Capstan's defaults ``cache=none,aio=native`` where the
        file takes ``O_DIRECT`` (*direct_io*); without it (tmpfs) nothing that needs it:
        ``cache=writeback,aio=threads``. ``aio=native`` only ever with an uncached mode
        (QEMU refuses it otherwise)."""
        uncached = ("none", "directsync")
        if direct_io:
            cache = self.cache or "none"
            aio = self.aio or ("native" if cache in uncached else "threads")
        else:
            cache = "writeback" if self.cache in ("", *uncached) else self.cache
            aio = "threads" if self.aio in ("", "native") else self.aio
        return replace(self, cache=cache, aio=aio)

    @classmethod
    def parse(cls, text: str, defaults: Mapping[str, str] | None = None) -> Volume:
        """Parse ``PATH[:format=F][:cache=C][:aio=A]`` (Capstan's ``--volume``).

        A ``:`` inside the path is written ``\\:``, or the path given first as
        ``path=P`` (then only ``:format=``, ``:cache=`` and ``:aio=`` split).
        *defaults* supply settings the text leaves out. Keys and values come from
        :data:`VOLUME_SETTINGS`; anything else is a :class:`UsageError`.
        """
        splitter = _SETTING_COLON if text.startswith("path=") else _UNESCAPED_COLON
        parts = [p.replace("\\:", ":") for p in splitter.split(text)]
        values = dict(defaults or {})
        path = "" if parts[0].startswith("path=") else parts.pop(0)
        for item in parts:
            key, sep, value = item.partition("=")
            if not sep or not value:
                raise UsageError(f"invalid volume {text!r}: use '=' for settings, "
                                 "e.g. --volume /vol.img:format=raw")
            if key.lower() not in ("path", *VOLUME_SETTINGS):
                raise UsageError(f"invalid volume {text!r}: unknown setting {key!r} "
                                 f"(use {', '.join(VOLUME_SETTINGS)})")
            values[key.lower()] = value
        path = values.pop("path", path)
        if not path or _CONTROL.search(path):
            raise UsageError(f"invalid volume {text!r}: the path is empty or holds a "
                             "control character")
        for key, value in values.items():
            choice = VOLUME_SETTINGS[key].get(value.lower())
            if choice is None:
                raise UsageError(f"invalid volume {text!r}: {key} must be one of "
                                 f"{', '.join(VOLUME_SETTINGS[key])}, not {value!r}")
            values[key] = choice
        if values.get("aio") == "native" and values.get("cache", "none") not in ("none",
                                                                                "directsync"):
            raise UsageError(f"invalid volume {text!r}: aio=native needs cache=none or "
                             "cache=directsync")
        try:
            return cls(Path(path).expanduser().absolute(), **values)
        except RuntimeError as err:  # ~user of no such user
            raise UsageError(f"invalid volume {text!r}: {err}") from err


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a driver needs to create an instance."""

    name: str
    image: Path
    memory_mib: int = 1024
    cpus: int = 2
    networking: str = "nat"
    bridge: str | None = None
    mac: str | None = None
    private_network: str | None = None  # a host-local segment shared by name
    private_mac: str | None = None
    forwards: tuple[PortForward, ...] = ()
    volumes: tuple[Volume, ...] = ()
    cmdline: str | None = None  # with a kernel: what the VMM passes, else written to the disk
    cpu_model: str | None = None
    machine: str = "pc"  # pc, or microvm (virtio-mmio, no PCI, no ACPI; needs a kernel)
    kernel: Path | None = None  # booted directly (PVH), the disk holding only the root
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """An instance as a driver sees it now."""

    name: str
    driver: str
    state: InstanceState
    image: str
    pid: int | None = None
    ports: tuple[str, ...] = ()
    image_digest: str = ""
    created: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadResult:
    """What :meth:`ImageStore.upload` made, or found made of the same bytes."""

    id: str  # the store's identifier (AMI id, GCE image name, Glance id)
    name: str  # the name it was uploaded under
    digest: str  # SHA-256 of the bytes the store keys it by
    reused: bool  # an image of the same bytes was there already: nothing was sent
    bytes_sent: int = 0


@dataclass(frozen=True)
class StoredImage:
    """A machine image in a cloud's store, made by pycapstan."""

    id: str
    name: str
    digest: str
    detail: str = ""  # the store's own words: snapshot ids, size and status
    created: str = ""


class ImageStore(ABC):
    """A cloud's machine images made of pycapstan images (AMIs, GCE images, Glance
    images); a driver with :attr:`Capability.IMAGES` is also one."""

    @abstractmethod
    def upload(self, image: Path, name: str,
               progress: Callable[..., None] | None = None) -> UploadResult:
        """A machine image of *image*, reusing one made of the same bytes."""

    @abstractmethod
    def images(self) -> list[StoredImage]:
        """The images pycapstan made in this store, oldest first."""

    @abstractmethod
    def remove_image(self, ref: str) -> None:
        """Delete image *ref* (id or name), or NotFound."""


@dataclass(frozen=True)
class DiskForm:
    """The disk a driver boots: *format* with qemu-img ``-o`` *options*. A qcow2 disk
    that is not *standalone* is an overlay on the image; with *reuse_image* the image
    itself serves when there is no command line to write (an upload of its bytes)."""

    format: str = "qcow2"
    options: tuple[str, ...] = ()
    standalone: bool = False
    reuse_image: bool = False


#: a qcow2 overlay on the image, the run's command line written into it
OVERLAY = DiskForm()
#: what a cloud uploads: the image itself, or an overlay holding the run's command line
UPLOAD = DiskForm(reuse_image=True)


@dataclass(frozen=True)
class PreparedDisk:
    """What :meth:`DiskPreparer.prepare` made: the disk, and the image's SHA-256."""

    path: Path
    digest: str


@dataclass(frozen=True)
class DiskFacts:
    """An image file's format and SHA-256 (cached by the service)."""

    format: str
    sha256: str


@dataclass(frozen=True)
class DiskInfo:
    """What ``qemu-img info`` says of a disk."""

    format: str
    virtual_size: int
    backing_file: str | None


class DiskPreparer(Protocol):
    """The disk service a driver is handed: it turns images into the disks drivers
    boot or upload. Drivers never read, convert or write image files themselves."""

    def prepare(self, spec: InstanceSpec, disk: Path, form: DiskForm = OVERLAY,
                ) -> PreparedDisk:
        """*spec*'s image as *disk* in *form*, with *spec*'s command line written in."""

    def facts(self, image: Path) -> DiskFacts:
        """The format and SHA-256 of *image*."""

    def info(self, image: Path) -> DiskInfo:
        """``qemu-img info`` of *image*."""

    def export(self, image: Path, target: Path, kind: str) -> None:
        """*image* written to *target* as *kind* (``gce``: the tarball GCE imports)."""

    def attachable(self, volume: Volume) -> Volume:
        """*volume* probed: a standalone image of the format it names (ImageError else)."""


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

    @abstractmethod
    def create(self, spec: InstanceSpec) -> Instance:
        """Prepare an instance (disk, state files) without starting it."""

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

    def read_log(self, name: str) -> bytes:
        """The console output so far."""
        path = self.log_path(name)
        return path.read_bytes() if path.exists() else b""

    def dry_run(self, spec: InstanceSpec) -> Sequence[str]:
        """What create and start would do for *spec*, one line each."""
        return [f"create instance {spec.name} from {spec.image} "
                f"({spec.memory_mib} MiB, {spec.cpus} vCPUs)", f"start {spec.name}"]

    def run_foreground(self, name: str, out: BinaryIO, timeout: float | None = None) -> int:
        """Start *name*, stream its console log to *out* until the guest stops.

        Returns 0 after a clean power-off, or the application's non-zero status
        when the guest reports one; raises GuestFailure for a crash, GuestTimeout
        after *timeout*. Ctrl-C stops the guest gracefully (a second one
        stops it at once) and is re-raised.
        """
        log = self.log_path(name)
        offset = 0
        seen = bytearray()

        def pump() -> None:
            nonlocal offset
            try:
                with open(log, "rb") as f:
                    if os.fstat(f.fileno()).st_size < offset:
                        offset = 0  # the log was restarted
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                return
            offset += len(data)
            seen.extend(data)
            out.write(data)
            out.flush()

        self.start(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.get(name).state.live:
                pump()
                if deadline is not None and time.monotonic() > deadline:
                    self.stop(name)
                    raise GuestTimeout(f"instance {name} did not finish within {timeout} s")
                time.sleep(0.1)
        except KeyboardInterrupt:
            out.write(b"\r\ncapstan: stopping the guest (Ctrl-C again stops it at once)...\r\n")
            out.flush()
            try:
                self.stop(name)
            except KeyboardInterrupt:
                self.stop(name, timeout=0)
            raise
        finally:
            pump()
        return console_verdict(name, bytes(seen))

    def console(self, name: str, stdin: int, stdout: BinaryIO, escape: bytes | None) -> None:
        """Attach *stdin* (a file descriptor) and *stdout* to the guest's serial console.

        Returns when the guest goes away, when *escape* is read from *stdin*, or
        (with no escape, i.e. not a terminal) once *stdin* ends and the guest stops.
        """
        raise UnsupportedOperation(self.name, "console")


def console_verdict(name: str, console: bytes) -> int:
    """The outcome a guest's console shows: GuestFailure for a crash marker, else
    the last application status OSv reported (0 when there is none)."""
    marker = next((m for m in _CRASH if m.encode() in console), None)
    if marker is not None:
        raise GuestFailure(f"guest {name} crashed ('{marker}' on its console)")
    statuses = _STATUS.findall(console)
    return int(statuses[-1]) % 256 if statuses else 0


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
