"""QEMU's argv for an instance: a pure function of the spec and what the host gave.

No I/O and no environment reads happen here: the driver resolves everything
first (ports allocated, volumes probed and checked for ``O_DIRECT``, MACs chosen,
the bridge helper found) and hands it in, so the argv is golden-tested
(``tests/golden/qemu/``). Every value inside an option string is escaped by
:mod:`capstan.core.qemuopt`, so one option never becomes two.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from capstan.core import qemuopt
from capstan.core.errors import CapstanError, UsageError
from capstan.drivers.base import InstanceSpec, Volume, mac_address

__all__ = ["Host", "Paths", "argv", "builder_argv", "interface", "private_segment"]

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
NETWORKINGS = ("nat", "bridge", "tap", "none")
MACHINES = ("pc", "microvm")
# QEMU microvm as OSv boots on it: no ACPI (OSv then powers off by a triple fault, hence
# -no-reboot), no PCI; the virtio-mmio transports are listed on the kernel command line
MICROVM = "microvm,acpi=off,pcie=off,auto-kernel-cmdline=on"


def _absolute(path: Path, what: str) -> str:
    """*path* as text, for :func:`qemuopt.join` (which escapes it); it must
    already be absolute (making it so would read the working directory)."""
    if not path.is_absolute():
        raise CapstanError(f"{what} {path} reached the QEMU argv relative")
    return str(path)


@dataclass(frozen=True, slots=True, kw_only=True)
class Paths:
    """Where one instance's files and sockets are (absolute paths)."""

    disk: Path
    console: Path  # the interactive console's unix socket
    console_log: Path  # every byte from COM1
    qmp: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """What the driver found on the host for this launch."""

    qemu: str
    accel: str  # kvm, hvf or tcg
    aio: str = "threads"  # the boot disk's aio (native: with cache=none, which needs O_DIRECT)
    bridge_helper: Path | None = None  # needed by bridge networking only


def interface(name: str) -> str:
    """*name* if it can name a host network interface (bridge or tap)."""
    if not _IFNAME.fullmatch(name):
        raise UsageError(f"invalid network device {name!r}: use letters, digits, '.', '_' "
                         "and '-' (at most 15)")
    return name


def private_segment(name: str) -> tuple[str, int]:
    """The multicast group and port of private network *name*.

    Every instance on the network joins the group on the loopback interface,
    so they share one Ethernet segment that never leaves the host and needs no
    root, bridge or daemon.
    """
    h = hashlib.sha256(name.encode()).digest()
    return f"239.255.{h[0]}.{h[1] or 1}", 20000 + int.from_bytes(h[2:4], "big") % 40000


def argv(spec: InstanceSpec, paths: Paths, host: Host) -> list[str]:
    """QEMU's argv for *spec*: its forwards already allocated, its volumes probed.

    On ``microvm`` the kernel is loaded by QEMU (PVH) with the command line as
    ``-append``, and every virtio device sits on virtio-mmio (``-device``).
    """
    cpu = spec.cpu_model or ("host" if host.accel in ("kvm", "hvf") else "max")
    bus = _bus(spec)
    args = [
        host.qemu, "-name", qemuopt.join("", {"guest": spec.name}),
        "-machine", MICROVM if bus == "device" else "pc", "-accel", host.accel,
        "-cpu", cpu, "-m", str(spec.memory_mib),
        "-smp", str(spec.cpus), "-nodefaults", "-no-user-config", "-display", "none",
    ]
    if spec.kernel is not None:
        args += ["-no-reboot", "-kernel", _absolute(spec.kernel, "kernel"),
                 "-append", spec.cmdline or ""]
    args += [
        "-drive", qemuopt.join("", {"file": _absolute(paths.disk, "file"), "if": "none",
                                    "id": "hd0", "format": "qcow2", "aio": host.aio,
                                    # QEMU refuses aio=native with a cached mode
                                    "cache": "none" if host.aio == "native" else "writeback"}),
        "-device", "virtio-blk-pci,id=blk0,bootindex=0,drive=hd0" if bus == "pci" else
        "virtio-blk-device,id=blk0,drive=hd0",
        "-device", f"virtio-rng-{bus}",
        "-chardev", qemuopt.join("socket", {
            "id": "con0", "path": _absolute(paths.console, "path"), "server": "on",
            "wait": "off", "logfile": _absolute(paths.console_log, "logfile"),
            "logappend": "on"}),
        "-serial", "chardev:con0",
        "-qmp", f"unix:{qemuopt.escape(_absolute(paths.qmp, 'path'), 'path')},server=on,wait=off",
    ]
    for i, vol in enumerate(spec.volumes, start=1):
        args += ["-drive", volume_drive(vol, i),
                 "-device", f"virtio-blk-{bus},id=blk{i},drive=hd{i}"]
    args += network(spec, host)
    if spec.private_network:
        group, port = private_segment(spec.private_network)
        args += ["-netdev", f"socket,id=pn0,mcast={group}:{port},localaddr=127.0.0.1",
                 "-device", _nic(bus, "netdev=pn0,id=nic2", _mac(spec.private_mac))]
    return args


def _bus(spec: InstanceSpec) -> str:
    """``pci`` (machine pc) or ``device`` (virtio-mmio, machine microvm): the suffix
    of the virtio device names."""
    if spec.machine not in MACHINES:
        raise UsageError(f"machine '{spec.machine}' is not supported by the qemu driver "
                         f"(use {' or '.join(MACHINES)})")
    if spec.machine == "microvm":
        if spec.kernel is None:
            raise UsageError("machine microvm has no firmware to boot a disk: give --kernel")
        return "device"
    return "pci"


def _nic(bus: str, props: str, mac: str | None = None) -> str:
    """The virtio-net ``-device`` on *bus* with *props* (a PCI NIC without its option
    ROM)."""
    text = f"virtio-net-pci,{props},romfile=" if bus == "pci" else f"virtio-net-device,{props}"
    return text + (f",mac={mac}" if mac else "")


def _mac(text: str | None) -> str:
    """*text* normalised; the driver has chosen one already (a random one is I/O)."""
    if text is None:
        raise CapstanError("a MAC address reached the QEMU argv unchosen")
    return mac_address(text)


def volume_drive(vol: Volume, index: int) -> str:
    """``-drive`` of volume *vol*: its probed format, settings from closed sets."""
    if vol.format is None:
        raise CapstanError(f"volume {vol.path} reached the qemu driver unprobed")
    return qemuopt.join("", {"file": _absolute(vol.path, "file"), "if": "none",
                             "id": f"hd{index}", "format": vol.format,
                             "cache": vol.cache or "writeback", "aio": vol.aio or "threads"})


def network(spec: InstanceSpec, host: Host) -> list[str]:
    """The ``-netdev``/``-device`` pair of *spec*'s networking (none: nothing)."""
    if spec.networking not in NETWORKINGS:
        raise UsageError(f"networking '{spec.networking}' is not supported by the qemu "
                         "driver (use nat, bridge, tap or none)")
    if spec.networking == "none":
        return []
    if spec.networking == "nat":
        netdev = "user,id=un0,net=192.168.122.0/24,host=192.168.122.1"
        for fwd in spec.forwards:
            netdev += "," + qemuopt.join("", {"hostfwd": f"{fwd.protocol}:{fwd.host_addr}:"
                                                         f"{fwd.host_port}-:{fwd.guest_port}"})
        return ["-netdev", netdev, "-device", _nic(_bus(spec), "netdev=un0")]
    if spec.forwards:
        raise UsageError(f"port forwards need nat networking, not '{spec.networking}' "
                         "(the guest is reachable on its own address)")
    if spec.networking == "bridge":
        if host.bridge_helper is None:
            raise CapstanError("bridge networking reached the QEMU argv without its helper")
        netdev = qemuopt.join("bridge", {
            "id": "hn0", "br": interface(spec.bridge or "virbr0"),
            "helper": _absolute(host.bridge_helper, "helper")})
    else:
        if not spec.bridge:
            raise UsageError("tap networking needs the tap device: -b TAP")
        netdev = qemuopt.join("tap", {"id": "hn0", "ifname": interface(spec.bridge),
                                      "script": "no", "downscript": "no"})
    return ["-netdev", netdev,
            "-device", _nic(_bus(spec), "netdev=hn0,id=nic1", _mac(spec.mac))]


BUILDER_CMDLINE = ("--console=serial --norandom --nomount --noinit --preload-zfs-library "
                   "/tools/mkfs.so; /tools/cpiod.so --prefix /zfs/zfs; "
                   "/zfs.so set compression=off osv")


def builder_argv(qemu: str, builder: str | None, disk: str, port: int,
                 accel: str) -> list[str]:
    """The ZFS upload VM, cpiod's port forwarded to *port*: the *builder* kernel with
    the new image as its disk, or (*builder* None) the image itself, booted from disk."""
    boot = (["-kernel", builder, "-append", BUILDER_CMDLINE, "-device",
             "virtio-blk-pci,drive=hd0"] if builder else
            ["-device", "virtio-blk-pci,drive=hd0,bootindex=0"])
    return [qemu, "-machine", "pc", "-accel", accel, "-m", "512", "-smp", "1", "-nodefaults",
            "-display", "none", "-no-user-config", "-serial", "stdio", *boot,
            "-drive", qemuopt.join("", {"file": _absolute(Path(disk), "file"), "if": "none",
                                        "id": "hd0", "format": "qcow2"}),
            "-netdev", f"user,id=un0,hostfwd=tcp:127.0.0.1:{port}-:10000",
            "-device", "virtio-net-pci,netdev=un0,romfile="]
