"""Where a dependent reaches its dependencies on other hosts (its ``FLEET_HOSTS``).

A dependency is reached at its host's address and its first forwarded port
(``ADDR:PORT``), or at the address its driver reports (an instance on a libvirt
network), or at its host's address alone. What a driver or a remote host says is
checked to be an IP address (or, for a host's configured address, a host name) and
a port before it goes into a command line.
"""

from __future__ import annotations

from collections.abc import Iterable

from capstan.core.addresses import is_host_address, valid_ip
from capstan.core.errors import CapstanError, InputError
from capstan.drivers.base import Instance
from capstan.services.fleet.hosts import HostSet
from capstan.services.fleet.plan import Member

__all__ = ["given", "reachable"]

_MAX_PORT = 65535
_WILDCARD = ("0.0.0.0", "::", "")


def reachable(hosts: HostSet, deps: Iterable[Member]) -> dict[str, str]:
    """Dependency name -> where instances on another host reach it; a dependency that
    is not there (its own outcome says why) is left out."""
    found: dict[str, str] = {}
    for dep in deps:
        try:
            inst = hosts.driver(dep.host, dep.service.driver).get(dep.name)
        except CapstanError:
            continue
        found[dep.name] = _where(inst, hosts.reach_address(dep.host), dep.host)
    return found


def given(member: Member, found: dict[str, str]) -> str:
    """The remote part of *member*'s ``FLEET_HOSTS`` for the addresses *found*."""
    return ",".join(f"{n}={found.get(n, '')}" for n in member.remote)


def _where(inst: Instance, base: str, host: str) -> str:
    """``ADDR:PORT``, or an address alone, for *inst* on a host reached at *base*."""
    if not inst.ports:
        reported = inst.extra.get("address")
        return _checked(reported, inst.name, host) if reported else _host(base, host)
    bound, _, port = str(inst.ports[0]).split("->", 1)[0].rpartition(":")
    bound = bound.strip("[]")
    if not (port.isascii() and port.isdecimal()) or not 0 < int(port) <= _MAX_PORT:
        raise _bad(port, inst.name, host, "port")
    where = _host(base, host) if bound in _WILDCARD or bound.startswith("127.") or \
        bound == "::1" else _checked(bound, inst.name, host)
    return f"[{where}]:{port}" if ":" in where else f"{where}:{port}"


def _checked(value: object, name: str, host: str) -> str:
    """*value* as an IP address, else InputError."""
    ip = valid_ip(str(value))
    if ip is None:
        raise _bad(value, name, host, "IP address")
    return ip


def _host(base: str, host: str) -> str:
    """A host's configured address, if it is an IP address or a host name."""
    if not is_host_address(base):
        raise InputError(f"host {host}: its address {ascii(base)[:72]} is not an IP "
                         "address or host name: not passed to dependents")
    return valid_ip(base) or base


def _bad(value: object, name: str, host: str, what: str) -> InputError:
    return InputError(f"{name} on host {host} is reported at {ascii(value)[:72]}, "
                      f"which is not a valid {what}: not passed to its dependents")
