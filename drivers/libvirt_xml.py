"""The libvirt domain XML of an instance spec: a pure function, golden-tested; our
domains carry a ``<capstan:instance>`` element in ``<metadata>``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from capstan.core import qemuopt
from capstan.core.errors import CapstanError
from capstan.drivers.base import InstanceSpec, PortForward, mac_address

__all__ = ["NS", "QEMU_NS", "DomainHost", "domain_xml"]

NS = "https://pycapstan.dev/xmlns/instance/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_SOURCE_KEYS = ("file", "pool", "volume")


@dataclass(frozen=True)
class DomainHost:
    """How the host runs a domain: the libvirt *domain_type*, the *disk*
    (``{"file": PATH}`` or ``{"pool": P, "volume": V}``, with ``"backing"``: the path of
    its qcow2 backing file on the host), the *console_log* file, the
    *network* (``""``: user mode, *forwards* through QEMU's own ``hostfwd``;
    ``network:NAME`` or ``bridge:NAME``) and our *meta* data."""

    domain_type: str
    disk: dict[str, str]
    console_log: str | None
    network: str
    meta: dict[str, str]
    forwards: tuple[PortForward, ...] = ()


def domain_xml(spec: InstanceSpec, host: DomainHost) -> str:
    """The domain XML for *spec* as *host* runs it."""
    ET.register_namespace("capstan", NS)
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.Element("domain", type=host.domain_type)
    ET.SubElement(dom, "name").text = spec.name
    metadata = ET.SubElement(ET.SubElement(dom, "metadata"), f"{{{NS}}}instance")
    for key, value in host.meta.items():
        ET.SubElement(metadata, f"{{{NS}}}{key}").text = value
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(dom, "vcpu").text = str(spec.cpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    if spec.cpu_model:
        ET.SubElement(ET.SubElement(dom, "cpu", mode="custom", match="exact"),
                      "model", fallback="allow").text = spec.cpu_model
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"),
                          ("on_crash", "destroy")):
        ET.SubElement(dom, event).text = action
    _devices(ET.SubElement(dom, "devices"), spec, host)
    if host.forwards and not host.network:
        # libvirt 9 has port forwards only with passt; QEMU's slirp does them itself.
        rules = "".join("," + qemuopt.join("", {
            "hostfwd": f"{f.protocol}:{f.host_addr}:{f.host_port}-:{f.guest_port}"})
            for f in host.forwards)
        cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in ("-netdev", f"user,id=capstan-un0{rules}",
                    "-device", "virtio-net-pci,netdev=capstan-un0,romfile=,bus=pci.0,addr=0x1e"):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def _devices(devices: ET.Element, spec: InstanceSpec, host: DomainHost) -> None:
    """Fill the domain's *devices*: disks, network, serial console, RNG."""
    _disk(devices, host.disk, "qcow2", "vda")
    for i, vol in enumerate(spec.volumes, start=1):
        if vol.format is None:
            raise CapstanError(f"volume {vol.path} reached the libvirt driver unprobed")
        _disk(devices, {"file": str(vol.path)}, vol.format, f"vd{chr(ord('a') + i)}",
              cache=vol.cache or "writeback")
    if host.network:
        kind, _, name = host.network.partition(":")
        iface = ET.SubElement(devices, "interface", type=kind)
        ET.SubElement(iface, "source", {kind: name})
        ET.SubElement(iface, "mac", address=mac_address(spec.mac))
        ET.SubElement(iface, "model", type="virtio")
    elif not host.forwards:
        ET.SubElement(ET.SubElement(devices, "interface", type="user"), "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="pty")
    if host.console_log:
        ET.SubElement(serial, "log", file=host.console_log, append="off")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(ET.SubElement(devices, "console", type="pty"), "target", type="serial",
                  port="0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    ET.SubElement(devices, "memballoon", model="none")


def _disk(devices: ET.Element, source: dict[str, str], fmt: str, target: str,
          cache: str = "writeback") -> None:
    kind = "volume" if "pool" in source else "file"
    disk = ET.SubElement(devices, "disk", type=kind, device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt, cache=cache)
    ET.SubElement(disk, "source", {k: v for k, v in source.items() if k in _SOURCE_KEYS})
    if "backing" in source:  # the chain, stated: libvirt and QEMU probe nothing
        store = ET.SubElement(disk, "backingStore", type="file")
        ET.SubElement(store, "format", type="qcow2")
        ET.SubElement(store, "source", file=source["backing"])
        ET.SubElement(store, "backingStore")
    ET.SubElement(disk, "target", dev=target, bus="virtio")
