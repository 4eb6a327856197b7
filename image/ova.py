"""OVA export: OVF descriptor, SHA-256 manifest and a streamOptimized VMDK, in one tar.

The member order is the one DSP0243 requires (descriptor, manifest, disk), and
the virtual hardware is what both VirtualBox and vSphere import: an LSI Logic
SCSI disk, an E1000 NIC, 64-bit "other Linux".
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from capstan.core import proc
from capstan.core.fs import sha256_of
from capstan.image.formats import info

__all__ = ["Appliance", "OvaResult", "OvfDisk", "descriptor", "export_ova"]

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


@dataclass(frozen=True)
class OvaResult:
    """What was written."""

    path: Path
    capacity: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class Appliance:
    """The virtual machine an OVA describes."""

    name: str
    memory_mib: int = 1024
    cpus: int = 2


@dataclass(frozen=True)
class OvfDisk:
    """The OVA's disk: its member *file*, that file's *size* and the disk's *capacity*."""

    file: str
    size: int
    capacity: int


def _o(tag: str) -> str:
    return f"{{{OVF}}}{tag}"


def descriptor(vm: Appliance, disk: OvfDisk) -> bytes:
    """The OVF 1.0 descriptor of one VM with one disk."""
    for prefix, uri in (("ovf", OVF), ("rasd", RASD), ("vssd", VSSD)):
        ET.register_namespace(prefix, uri)
    o = _o
    env = ET.Element(o("Envelope"), {o("version"): "1.0"})
    refs = ET.SubElement(env, o("References"))
    ET.SubElement(refs, o("File"), {o("id"): "file1", o("href"): disk.file,
                                    o("size"): str(disk.size)})
    disks = ET.SubElement(env, o("DiskSection"))
    ET.SubElement(disks, o("Info")).text = "Virtual disks"
    ET.SubElement(disks, o("Disk"), {o("capacity"): str(disk.capacity),
                                     o("capacityAllocationUnits"): "byte",
                                     o("diskId"): "vmdisk1", o("fileRef"): "file1",
                                     o("format"): STREAM})
    nets = ET.SubElement(env, o("NetworkSection"))
    ET.SubElement(nets, o("Info")).text = "Logical networks"
    net = ET.SubElement(nets, o("Network"), {o("name"): "nat"})
    ET.SubElement(net, o("Description")).text = "The VM's network"
    system = ET.SubElement(env, o("VirtualSystem"), {o("id"): vm.name})
    ET.SubElement(system, o("Info")).text = "An OSv unikernel made by pycapstan"
    ET.SubElement(system, o("Name")).text = vm.name
    os_section = ET.SubElement(system, o("OperatingSystemSection"), {o("id"): "101"})
    ET.SubElement(os_section, o("Info")).text = "The guest operating system"
    ET.SubElement(os_section, o("Description")).text = "Other Linux (64-bit)"
    _hardware(ET.SubElement(system, o("VirtualHardwareSection")), vm)
    ET.indent(env)
    body: bytes = ET.tostring(env, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def export_ova(source: Path, source_fmt: str, target: Path, scratch: Path,
               vm: Appliance) -> OvaResult:
    """Write *target* (an OVA of *vm*) from the image *source*; *scratch* holds the parts."""
    name = vm.name
    disk_file = f"{name}-disk1.vmdk"
    disk = scratch / disk_file
    proc.run(["qemu-img", "convert", "-q", "-f", source_fmt, "-O", "vmdk", "-o",
              "subformat=streamOptimized,adapter_type=lsilogic", str(source), str(disk)])
    capacity = info(source, source_fmt).virtual_size
    ovf = scratch / f"{name}.ovf"
    ovf.write_bytes(descriptor(vm, OvfDisk(disk_file, disk.stat().st_size, capacity)))
    manifest = scratch / f"{name}.mf"
    manifest.write_text("".join(f"SHA256({p.name})= {sha256_of(p)}\n" for p in (ovf, disk)))
    members = (ovf, manifest, disk)
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member in members:
            entry = tar.gettarinfo(str(member), arcname=member.name)
            entry.uid = entry.gid = 0
            entry.uname = entry.gname = ""
            entry.mtime = 0
            with open(member, "rb") as f:
                tar.addfile(entry, f)
    return OvaResult(target, capacity, tuple(m.name for m in members))


def _hardware(hw: ET.Element, vm: Appliance) -> None:
    """Fill the VirtualHardwareSection *hw*: CPUs, memory, SCSI disk and NIC."""
    ET.SubElement(hw, _o("Info")).text = "Virtual hardware requirements"
    sys_el = ET.SubElement(hw, _o("System"))
    for tag, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                      ("VirtualSystemIdentifier", vm.name),
                      ("VirtualSystemType", "vmx-10 virtualbox-2.2")):
        ET.SubElement(sys_el, f"{{{VSSD}}}{tag}").text = text
    cpus, memory_mib = vm.cpus, vm.memory_mib
    items = [  # rasd elements in the schema's (alphabetical) order
        {"AllocationUnits": "hertz * 10^6", "ElementName": f"{cpus} virtual CPU(s)",
         "InstanceID": "1", "ResourceType": "3", "VirtualQuantity": str(cpus)},
        {"AllocationUnits": "byte * 2^20", "ElementName": f"{memory_mib} MB of memory",
         "InstanceID": "2", "ResourceType": "4", "VirtualQuantity": str(memory_mib)},
        {"Address": "0", "ElementName": "SCSI controller 0", "InstanceID": "3",
         "ResourceSubType": "lsilogic", "ResourceType": "6"},
        {"AddressOnParent": "0", "ElementName": "Hard disk 1",
         "HostResource": "ovf:/disk/vmdisk1", "InstanceID": "4", "Parent": "3",
         "ResourceType": "17"},
        {"AutomaticAllocation": "true", "Connection": "nat", "ElementName": "Network adapter 1",
         "InstanceID": "5", "ResourceSubType": "E1000", "ResourceType": "10"},
    ]
    for fields in items:
        item = ET.SubElement(hw, _o("Item"))
        for tag, text in fields.items():
            ET.SubElement(item, f"{{{RASD}}}{tag}").text = text
