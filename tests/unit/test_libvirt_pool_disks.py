"""Pooled libvirt disks without libvirtd: the overlay's header names the host's base
volume, and the domain XML states that backing chain."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from capstan.core.errors import InputError
from capstan.drivers.base import InstanceSpec
from capstan.drivers.disks import DiskForm
from capstan.drivers.libvirt_pool import Base
from capstan.drivers.libvirt_xml import DomainHost, domain_xml
from capstan.image.cmdline import AREA_OFFSET, AREA_SIZE, area_bytes
from capstan.services.disks import LocalDisks

REMOTE = "/var/lib/libvirt/images/" + Base.of("0f" * 32).volume
CLUSTER = 1 << 16  # qemu-img's default qcow2 cluster


def _backing(qcow2: Path) -> tuple[str, bytes]:
    """The backing file name in *qcow2*'s header, and the header's first 4 bytes."""
    head = qcow2.read_bytes()[:CLUSTER]
    offset, size = struct.unpack(">QI", head[8:20])
    return head[offset:offset + size].decode(), head[:4]


def test_the_overlay_names_the_remote_base(image: Path, capstan_root: Path,
                                           tmp_path: Path) -> None:
    spec = InstanceSpec(name="a", image=image, cmdline="--rootfs=rofs /one")
    disk = LocalDisks(capstan_root).prepare(spec, tmp_path / "o.qcow2",
                                            DiskForm(backing=REMOTE))
    assert _backing(disk.path) == (REMOTE, b"QFI\xfb")
    assert disk.path.stat().st_size < 8 * CLUSTER  # the command line's cluster and tables
    assert area_bytes("--rootfs=rofs /one")[:32] in disk.path.read_bytes()
    assert AREA_OFFSET + AREA_SIZE <= CLUSTER  # one cluster holds the whole area


@pytest.mark.parametrize("backing", ["relative.qcow2", "/a\nb", "", "/" + "x" * 1100])
def test_a_backing_path_must_be_absolute_and_plain(image: Path, capstan_root: Path,
                                                   tmp_path: Path, backing: str) -> None:
    spec = InstanceSpec(name="a", image=image)
    with pytest.raises(InputError, match="not a usable backing file path"):
        LocalDisks(capstan_root).prepare(spec, tmp_path / "o.qcow2",
                                         DiskForm(backing=backing))


def test_the_domain_states_its_backing_chain() -> None:
    base = Base.of("0f" * 32)
    disk = {"pool": "p", "volume": "n.qcow2", "base": base.volume, "backing": REMOTE}
    root = ET.fromstring(domain_xml(InstanceSpec(name="n", image=Path("/i")), DomainHost(
        domain_type="qemu", disk=disk, console_log=None, network="",
        meta={"base": base.volume})))
    found = root.find("devices/disk")
    assert found is not None and found.get("type") == "volume"
    assert found.find("source").attrib == {"pool": "p", "volume": "n.qcow2"}  # type: ignore[union-attr]
    store = found.find("backingStore")
    assert store is not None and store.get("type") == "file"
    assert store.find("format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert store.find("source").attrib == {"file": REMOTE}  # type: ignore[union-attr]
    end = store.find("backingStore")  # the base is standalone: the chain ends there
    assert end is not None and not list(end) and not end.attrib
    plain = ET.fromstring(domain_xml(InstanceSpec(name="n", image=Path("/i")), DomainHost(
        domain_type="qemu", disk={"file": "/d.qcow2"}, console_log=None, network="",
        meta={})))
    assert plain.find("devices/disk/backingStore") is None


def test_base_names_come_from_the_digest_only() -> None:
    base = Base.of("0123456789abcdef" * 4)
    assert base.volume == "capstan-base-0123456789abcdef01234567.qcow2"
    assert base.marker == "capstan-base-0123456789abcdef01234567.ok"
    assert Base.named(base.volume) == base
    for bad in ("../x", "0123", "G" * 64, "0123456789abcdef" * 4 + "\n"):
        with pytest.raises(Exception, match="not a SHA-256 digest"):
            Base.of(bad)
