"""The driver contract's value types: instance specs and states, capabilities, port
forwards, volumes, and the verdict a guest's console gives."""

from __future__ import annotations

import enum
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from capstan.core.errors import Conflict, GuestFailure, UsageError

__all__ = [
    "MAX_PORT",
    "VOLUME_SETTINGS",
    "Capability",
    "Instance",
    "InstanceSpec",
    "InstanceState",
    "PortForward",
    "Volume",
    "console_verdict",
    "free_port",
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


def console_verdict(name: str, console: bytes) -> int:
    """The outcome a guest's console shows: GuestFailure for a crash marker, else
    the last application status OSv reported (0 when there is none)."""
    marker = next((m for m in _CRASH if m.encode() in console), None)
    if marker is not None:
        raise GuestFailure(f"guest {name} crashed ('{marker}' on its console)")
    statuses = _STATUS.findall(console)
    return int(statuses[-1]) % 256 if statuses else 0
