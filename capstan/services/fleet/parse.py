"""Fleet files: ``capstan-fleet.yaml`` read and validated into a :class:`Fleet`."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capstan.core.errors import InputError, UsageError
from capstan.core.names import is_valid
from capstan.core.yamlfile import load_strict
from capstan.drivers.base import PortForward, Volume
from capstan.services.fleet.hosts import LOCAL, Host, parse_hosts

__all__ = ["DEFAULT_FILE", "MAX_COUNT", "Fleet", "Service", "load_fleet"]

DEFAULT_FILE = "capstan-fleet.yaml"
MAX_COUNT = 64
MAX_CPUS = 64  # per instance
_MAX_PREFIX = 29  # a smaller private network has too few addresses
_WILDCARD = {"0.0.0.0", "::", ""}
_FLEET_KEYS = {"name", "services", "private_network", "hosts"}
_SERVICE_KEYS = {"image", "count", "cpus", "memory", "env", "boot", "command", "ports",
                 "volumes", "driver", "networking", "depends_on", "host", "spread"}


@dataclass(frozen=True)
class Service:
    """One entry of ``services:``."""

    name: str
    image: str
    count: int = 1
    cpus: int = 1
    memory: str = "256M"
    env: tuple[str, ...] = ()
    boot: tuple[str, ...] = ()
    command: str | None = None
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    driver: str | None = None
    networking: str = "nat"
    depends_on: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # host: or spread: (empty: the local host)


@dataclass(frozen=True)
class Fleet:
    """A validated fleet file; ``services`` in start order."""

    name: str
    path: Path
    services: tuple[Service, ...]
    subnet: ipaddress.IPv4Network | None = None
    hosts: Mapping[str, Host] = field(default_factory=dict)

    def levels(self) -> list[list[Service]]:
        """Services grouped so that each group depends only on earlier groups."""
        level: dict[str, int] = {}
        for svc in self.services:  # already topologically ordered
            level[svc.name] = 1 + max((level[d] for d in svc.depends_on), default=-1)
        groups: list[list[Service]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for svc in self.services:
            groups[level[svc.name]].append(svc)
        return groups


def load_fleet(path: Path) -> Fleet:
    """Read and validate a fleet file; every mistake is one InputError line."""
    data = load_strict(path)

    def bad(where: str, message: str) -> InputError:
        return InputError(f"{path}: {where}: {message}")

    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with 'services'")
    _only(data, _FLEET_KEYS, "top level", bad)
    name = data.get("name", _slug(path.absolute().parent.name))
    if not is_valid(name, "fleet"):
        raise bad("name", f"'{name}' is not a valid fleet name (letters, digits, '.', '_', "
                  "'-', at most 40)")
    raw_services = data.get("services")
    if not isinstance(raw_services, dict) or not raw_services:
        raise bad("services", "expected a non-empty mapping of service name to settings")
    services = {str(key): _service(str(key), value, bad) for key, value in raw_services.items()}
    hosts = parse_hosts(data.get("hosts"), bad)
    _check_hosts(services.values(), hosts, bad)
    for svc in services.values():
        for dep in svc.depends_on:
            if dep not in services:
                raise bad(f"services.{svc.name}.depends_on", f"unknown service '{dep}'")
    _check_ports(services.values(), bad)
    subnet = _subnet(data.get("private_network", True), bad)
    ordered = _start_order(services, bad)
    total = sum(s.count for s in ordered)
    if subnet is not None and total > subnet.num_addresses - 3:
        raise bad("private_network", f"{total} instances do not fit {subnet}")
    return Fleet(name, path.absolute(), tuple(ordered), subnet, hosts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip("-.")[:40] or "fleet"


def _only(data: Mapping[str, Any], allowed: set[str], where: str,
          bad: Callable[[str, str], InputError]) -> None:
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise bad(where, f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")


@dataclass(frozen=True)
class _Settings:
    """One service's settings mapping, read with typed getters whose errors name *where*."""

    value: dict[str, Any]
    where: str
    bad: Callable[[str, str], InputError]

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        got = self.value.get(key, default)
        if isinstance(got, bool) or not isinstance(got, int) or not low <= got <= high:
            raise self.bad(f"{self.where}.{key}",
                           f"must be an integer from {low} to {high}, not {got!r}")
        return got

    def strings(self, key: str) -> tuple[str, ...]:
        got = self.value.get(key, [])
        got = [got] if isinstance(got, str | int) and not isinstance(got, bool) else got
        if not isinstance(got, list) or not all(isinstance(g, str | int) for g in got):
            raise self.bad(f"{self.where}.{key}", "expected a string or a list of strings")
        return tuple(str(g) for g in got)

    def env(self) -> tuple[str, ...]:
        """``env`` as ``KEY=VALUE`` items (a mapping or a list in the file)."""
        env = self.value.get("env", {})
        if isinstance(env, dict):
            return tuple(f"{k}={'' if v is None else v}" for k, v in env.items())
        return self.strings("env")

    def check_strings(self) -> None:
        """The plain string settings are strings, and every volume parses."""
        for key in ("command", "driver", "networking"):
            if key in self.value and not isinstance(self.value[key], str):
                raise self.bad(f"{self.where}.{key}", "expected a string")
        for text in self.strings("volumes"):
            try:
                Volume.parse(text)
            except UsageError as err:
                raise self.bad(f"{self.where}.volumes", str(err)) from err

    def memory(self) -> str:
        memory = self.value.get("memory", "256M")
        if isinstance(memory, bool) or not isinstance(memory, str | int):
            raise self.bad(f"{self.where}.memory", "expected a size such as 512M")
        return str(memory)


def _service(name: str, value: Any, bad: Callable[[str, str], InputError]) -> Service:
    where = f"services.{name}"
    if not is_valid(name, "service"):
        raise bad(where, "invalid service name (letters, digits, '.', '_', '-')")
    if not isinstance(value, dict):
        raise bad(where, "expected a mapping of settings")
    _only(value, _SERVICE_KEYS, where, bad)
    if not isinstance(value.get("image"), str) or not value["image"]:
        raise bad(f"{where}.image", "required: an image name or file")
    settings = _Settings(value, where, bad)
    env_items = settings.env()
    settings.check_strings()
    memory = settings.memory()
    hosts = _service_hosts(value, where, bad)
    return Service(
        name=name, image=value["image"], count=settings.integer("count", 1, 0, MAX_COUNT),
        cpus=settings.integer("cpus", 1, 1, MAX_CPUS), memory=memory, env=env_items,
        boot=settings.strings("boot"), command=value.get("command"),
        ports=settings.strings("ports"), volumes=settings.strings("volumes"),
        driver=value.get("driver"), networking=value.get("networking", "nat"),
        depends_on=settings.strings("depends_on"), hosts=hosts,
    )


def _service_hosts(value: Mapping[str, Any], where: str,
                   bad: Callable[[str, str], InputError]) -> tuple[str, ...]:
    """``host: NAME`` or ``spread: [NAME, ...]`` (not both), as a tuple of names."""
    if "host" in value and "spread" in value:
        raise bad(where, "'host' and 'spread' together: use one")
    if "host" in value:
        got: Any = [value["host"]]
    else:
        got = value.get("spread", [])
        if not isinstance(got, list) or ("spread" in value and not got):
            raise bad(f"{where}.spread", "expected a non-empty list of host names")
    for host in got:
        if not is_valid(host, "host"):
            raise bad(where, f"invalid host name {ascii(host)[:72]}")
    return tuple(got)


def _check_hosts(services: Iterable[Service], hosts: Mapping[str, Host],
                 bad: Callable[[str, str], InputError]) -> None:
    """Each service's hosts are declared, named once, and not mixed with ``driver:``."""
    for svc in services:
        where = f"services.{svc.name}"
        if svc.hosts and svc.driver is not None:
            raise bad(where, "'driver' and 'host'/'spread' together: a host names its driver")
        if len(set(svc.hosts)) != len(svc.hosts):
            raise bad(f"{where}.spread", "a host is named twice")
        for host in svc.hosts:
            if host not in hosts and host != LOCAL:
                raise bad(where, f"unknown host {ascii(host)[:72]} (hosts: "
                          f"{', '.join(sorted({*hosts, LOCAL}))})")


def _check_ports(services: Iterable[Service], bad: Callable[[str, str], InputError]) -> None:
    """Every port rule parses, and no fixed host port is used twice (each instance of a
    service binds its ports; a wildcard address clashes with every address)."""
    from capstan.drivers.base import PortForward

    taken: list[tuple[PortForward, str]] = []
    for svc in services:
        for text in svc.ports:
            try:
                rule = PortForward.parse(text)
            except UsageError as err:
                raise bad(f"services.{svc.name}.ports", str(err)) from err
            if rule.host_port == 0 or svc.count == 0:
                continue
            if svc.count > 1:
                raise bad(f"services.{svc.name}.ports", f"host port {rule.host_port} would be "
                          f"bound by each of its {svc.count} instances (use 0 for a free port)")
            for other, owner in taken:
                if (other.host_port, other.protocol) == (rule.host_port, rule.protocol) and (
                        _WILDCARD & {other.host_addr, rule.host_addr}
                        or other.host_addr == rule.host_addr):
                    raise bad(f"services.{svc.name}.ports", f"host port {rule.host_port}/"
                              f"{rule.protocol} is also used by {owner}")
            taken.append((rule, svc.name))


def _subnet(value: Any, bad: Callable[[str, str], InputError]) -> ipaddress.IPv4Network | None:
    if value is False:
        return None
    if value is True:
        return ipaddress.IPv4Network("10.77.0.0/24")
    try:
        net = ipaddress.IPv4Network(str(value))
    except ValueError as err:
        raise bad("private_network", f"expected true, false or a subnet: {err}") from err
    if net.prefixlen > _MAX_PREFIX:
        raise bad("private_network", f"{net} is too small")
    return net


def _start_order(services: Mapping[str, Service],
                 bad: Callable[[str, str], InputError]) -> list[Service]:
    """Services with dependencies first (file order among equals); cycles refused."""
    done: dict[str, Service] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in path:
            cycle = [*path[path.index(name):], name]
            raise bad("depends_on", f"dependency cycle {' -> '.join(cycle)}")
        path.append(name)
        for dep in services[name].depends_on:
            visit(dep)
        path.pop()
        done[name] = services[name]

    for name in services:
        visit(name)
    return list(done.values())
