"""Address reservations on a libvirt network, against a network that answers like libvirtd
(a duplicate MAC, name or address is refused), without a daemon."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt
import pytest

from capstan.core.errors import BackendError
from capstan.drivers import libvirt_net

NET = """<network><name>n</name><ip address='10.9.0.1' netmask='255.255.255.0'>
<dhcp>{dhcp}</dhcp></ip></network>"""


class _Net:
    """A network holding DHCP host entries; libvirt's refusal of duplicates included."""

    def __init__(self, dhcp: str = "<range start='10.9.0.10' end='10.9.0.12'/>",
                 leases: tuple[str, ...] = ()) -> None:
        self.root = ET.fromstring(NET.format(dhcp=dhcp))
        self.leases = leases
        self.flags: list[int] = []

    def XMLDesc(self, _flags: int) -> str:
        return ET.tostring(self.root, encoding="unicode")

    def DHCPLeases(self) -> list[dict[str, Any]]:
        return [{"ipaddr": ip} for ip in self.leases]

    def isActive(self) -> bool:
        return True

    def isPersistent(self) -> bool:
        return True

    def update(self, command: int, _section: int, _index: int, xml: str, flags: int) -> None:
        host, dhcp = ET.fromstring(xml), self.root.find("ip/dhcp")
        assert dhcp is not None
        self.flags.append(flags)
        if command == libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE:
            for old in dhcp.findall("host"):
                if all(old.get(k) == v for k, v in host.attrib.items()):
                    dhcp.remove(old)
            return
        if any(old.get(k) == v for old in dhcp.findall("host") for k, v in host.attrib.items()):
            err = libvirt.libvirtError("there is an existing dhcp host entry")
            err.err = (libvirt.VIR_ERR_OPERATION_INVALID, 0, "existing entry", 0, "", "", "",
                       0, 0)
            raise err
        dhcp.append(host)

    def hosts(self) -> list[dict[str, str]]:
        return [dict(h.attrib) for h in self.root.iterfind("ip/dhcp/host")]


class _Conn:
    def __init__(self, net: _Net) -> None:
        self.net = net

    def networkLookupByName(self, _name: str) -> _Net:
        return self.net


def test_free_addresses_are_reserved_and_released() -> None:
    net = _Net(leases=("10.9.0.10",))  # leased already: skipped
    conn = _Conn(net)
    assert libvirt_net.reserve(conn, "network:n", "02:00:00:00:00:01", "a") == "10.9.0.11"
    assert libvirt_net.reserve(conn, "network:n", "02:00:00:00:00:02", "b") == "10.9.0.12"
    with pytest.raises(BackendError, match="no free address left"):
        libvirt_net.reserve(conn, "network:n", "02:00:00:00:00:03", "c")
    flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    assert set(net.flags) == {flags}
    libvirt_net.release(conn, "network:n", "02:00:00:00:00:01", "a")
    assert [h["name"] for h in net.hosts()] == ["b"]


def test_an_address_the_owner_reserved_for_the_mac_is_used_and_kept() -> None:
    net = _Net("<host mac='02:00:00:00:00:01' name='theirs' ip='10.9.0.50'/>")
    conn = _Conn(net)
    assert libvirt_net.reserve(conn, "network:n", "02:00:00:00:00:01", "a") == "10.9.0.50"
    libvirt_net.release(conn, "network:n", "02:00:00:00:00:01", "a")
    assert net.hosts() == [{"mac": "02:00:00:00:00:01", "name": "theirs", "ip": "10.9.0.50"}]


def test_a_static_only_network_reserves_from_its_subnet() -> None:
    conn = _Conn(_Net(""))
    assert libvirt_net.reserve(conn, "network:n", "02:00:00:00:00:01", "a") == "10.9.0.2"


def test_bridges_and_networks_without_dhcp_reserve_nothing() -> None:
    net = _Net()
    net.root = ET.fromstring("<network><name>n</name></network>")
    assert libvirt_net.reserve(_Conn(net), "network:n", "02:00:00:00:00:01", "a") is None
    assert libvirt_net.reserve(_Conn(net), "bridge:br0", "02:00:00:00:00:01", "a") is None


def test_a_reservation_a_killed_create_left_is_reused() -> None:
    from pathlib import Path

    from capstan.drivers.base import InstanceSpec

    net = _Net()
    conn = _Conn(net)
    spec = InstanceSpec("web", Path("x.qcow2"))
    first, nic = libvirt_net.reserve_for(conn, "network:n", spec)  # then killed: no domain
    again, nic_again = libvirt_net.reserve_for(conn, "network:n", spec)
    assert (again.mac, nic_again) == (first.mac, nic)
    assert [h["name"] for h in net.hosts()] == ["web"]
    other, _ = libvirt_net.reserve_for(conn, "network:n", InstanceSpec("db", Path("x.qcow2")))
    assert other.mac != first.mac and len(net.hosts()) == 2
    libvirt_net.release_for(conn, "web", nic)
    assert [h["name"] for h in net.hosts()] == ["db"]
