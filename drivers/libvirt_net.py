"""Addresses of libvirt domains on a libvirt network (``libvirt_network: network:NAME``).

When the network hands out addresses (an IPv4 ``<ip>`` with ``<dhcp>``), each domain
gets a static DHCP host entry (its MAC, its name, a free address of the DHCP range, else
of the subnet) made with the domain and removed with it: its address is known before its
guest asks for one, and stays its own while it lives. The address reported is the
lease's, else the host ARP table's, else the reservation's. Everything libvirt says is
data from another host: an address is used only once it parses as an IP address.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from capstan.core.addresses import valid_ip
from capstan.core.errors import BackendError
from capstan.drivers.model import InstanceSpec, mac_address

__all__ = ["address", "release", "release_for", "reported", "reserve", "reserve_for",
           "valid_ip"]

# Addresses tried before giving up (each taken one is refused by libvirt itself).
_TRIES = 64


def _host_xml(mac: str, name: str, ip: str) -> str:
    return ET.tostring(ET.Element("host", mac=mac, name=name, ip=ip), encoding="unicode")


def _flags(net: Any) -> int:
    import libvirt

    flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG if net.isPersistent() else 0
    if net.isActive():
        flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
    return flags


def _network(conn: Any, network: str) -> Any:
    """The libvirt network of a ``network:NAME`` setting, or None (a bridge)."""
    import libvirt

    kind, _, name = network.partition(":")
    if kind != "network" or not name:
        return None
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as err:
        raise BackendError(f"libvirt: network {name}: {err.get_error_message()}") from err


def _candidates(net: Any) -> Iterator[ipaddress.IPv4Address] | None:
    """Free-looking IPv4 addresses of the network's first DHCP-serving ``<ip>``: its
    ranges, else its subnet without its own address; None without ``<dhcp>``."""
    root = ET.fromstring(net.XMLDesc(0))
    for ip in root.findall("ip"):
        dhcp = ip.find("dhcp")
        own = valid_ip(ip.get("address"))
        if dhcp is None or own is None or ip.get("family", "ipv4") != "ipv4":
            continue
        taken = {valid_ip(h.get("ip")) for h in dhcp.findall("host")}
        with contextlib.suppress(Exception):
            taken |= {valid_ip(lease.get("ipaddr")) for lease in net.DHCPLeases()}
        taken.add(own)
        return (candidate for start, end in _ranges(ip, dhcp, own)
                for candidate in map(ipaddress.IPv4Address, range(int(start), int(end) + 1))
                if str(candidate) not in taken)
    return None


def _ranges(ip: ET.Element, dhcp: ET.Element, own: str) -> list[tuple[Any, Any]]:
    found = []
    for r in dhcp.findall("range"):
        start, end = valid_ip(r.get("start")), valid_ip(r.get("end"))
        if start and end and "." in start and "." in end:
            found.append((ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)))
    if found:
        return found
    prefix = ip.get("prefix") or ip.get("netmask") or "24"
    subnet = ipaddress.IPv4Network(f"{own}/{prefix}", strict=False)
    return [(subnet.network_address + 1, subnet.broadcast_address - 1)]


def reserve(conn: Any, network: str, mac: str, name: str) -> str | None:
    """Reserve a free address of *network* for *mac* (host name *name*) unless one is
    already; the address, or None when the network hands out none (a bridge, no
    ``<dhcp>``)."""
    import libvirt

    net = _network(conn, network)
    if net is None:
        return None
    held = _reserved(net, mac)
    if held is not None:  # reserved for this MAC by the network's owner
        return held
    tried = 0
    try:
        candidates = _candidates(net)
        if candidates is None:
            return None
        for candidate in candidates:
            ip = str(candidate)
            try:
                net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                           libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
                           _host_xml(mac, name, ip), _flags(net))
                return ip
            except libvirt.libvirtError as err:
                tried += 1
                if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or \
                        tried >= _TRIES:
                    raise
    except libvirt.libvirtError as err:
        raise BackendError(f"libvirt: reserving an address on {network}: "
                           f"{err.get_error_message()}") from err
    except (ET.ParseError, ValueError) as err:
        raise BackendError(f"libvirt: {network}: unreadable network definition") from err
    raise BackendError(f"libvirt: no free address left on {network}")


def release(conn: Any, network: str, mac: str, name: str) -> None:
    """Remove the reservation of *mac* and *name* (gone already: nothing to do)."""
    import libvirt

    with contextlib.suppress(libvirt.libvirtError, BackendError):
        net = _network(conn, network)
        if net is not None and _reserved(net, mac) is not None:
            host = ET.tostring(ET.Element("host", mac=mac, name=name), encoding="unicode")
            net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
                       libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host, _flags(net))


def _reserved(net: Any, mac: str) -> str | None:
    """The address the network's DHCP host entry for *mac* holds, if a valid one."""
    try:
        root = ET.fromstring(net.XMLDesc(0))
    except ET.ParseError:
        return None
    for host in root.iterfind("ip/dhcp/host"):
        if str(host.get("mac", "")).lower() == mac:
            return valid_ip(host.get("ip"))
    return None


def reserve_for(conn: Any, network: str, spec: InstanceSpec) -> tuple[InstanceSpec,
                                                                     dict[str, str]]:
    """*spec* with its MAC fixed, and the domain metadata of its NIC on *network*:
    ``network`` and ``mac``, the address reserved for it (when the network has DHCP)."""
    if not network:
        return spec, {}
    spec = replace(spec, mac=mac_address(spec.mac) if spec.mac else _own_mac(network, spec.name))
    reserve(conn, network, str(spec.mac), spec.name)
    return spec, {"network": network, "mac": str(spec.mac)}


def _own_mac(network: str, name: str) -> str:
    """The MAC instance *name* gets on *network* unless one is given: a function of both,
    so that a reservation a killed ``create`` left behind is found and reused."""
    digest = hashlib.sha256(f"{network}\0{name}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def release_for(conn: Any, name: str, meta: dict[str, str]) -> None:
    """Remove the reservation of the NIC in a domain's *meta* (if any)."""
    if meta.get("network") and meta.get("mac"):
        release(conn, meta["network"], meta["mac"].lower(), name)


def reported(dom: Any, meta: dict[str, str]) -> dict[str, str]:
    """``{"address": IP}`` for a domain on a network (its NIC in *meta*) whose address
    is known, else ``{}``."""
    if not meta.get("mac"):
        return {}
    import libvirt

    with contextlib.suppress(libvirt.libvirtError, BackendError):
        net = _network(dom.connect(), meta.get("network", ""))
        found = address(dom, meta["mac"].lower(),
                        _reserved(net, meta["mac"].lower()) if net is not None else None)
        if found:
            return {"address": found}
    return {}


def address(dom: Any, mac: str, reserved: str | None) -> str | None:
    """The address of the domain's NIC *mac*: its lease's, else the ARP table's, else
    *reserved*; only a valid IP address is returned."""
    import libvirt

    if dom.isActive():
        for source in (libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
                       libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP):
            with contextlib.suppress(libvirt.libvirtError):
                found = _first(dom.interfaceAddresses(source, 0), mac)
                if found:
                    return found
    return valid_ip(reserved)


def _first(interfaces: object, mac: str) -> str | None:
    """The first valid IPv4 (else IPv6) address of interface *mac* in libvirt's answer."""
    if not isinstance(interfaces, dict):
        return None
    found: list[str] = []
    for iface in interfaces.values():
        if not isinstance(iface, dict) or str(iface.get("hwaddr", "")).lower() != mac:
            continue
        for entry in iface.get("addrs") or ():
            ip = valid_ip(entry.get("addr")) if isinstance(entry, dict) else None
            if ip:
                found.append(ip)
    return min(found, key=lambda a: ":" in a, default=None)
