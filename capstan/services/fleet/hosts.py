"""Fleet hosts: the ``hosts:`` map of a fleet file, each a driver and its settings.

A host is a driver with its own settings (a libvirt URI, an AWS region, a vSphere
datacenter, ...) layered over the configuration. A secret setting is never written in
the file: it is given as ``${VARIABLE}`` and read from the environment, and no message
shows a setting's value. The host named ``local`` is the configured driver unless the
file defines it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from capstan.core.addresses import is_host_address
from capstan.core.config import Config, Setting
from capstan.core.errors import BackendError, CapstanError, ConfigError, InputError
from capstan.core.names import problem
from capstan.core.secrets import MASK, redact
from capstan.drivers.base import Capability, Driver, Instance, driver_class, driver_names

__all__ = ["LOCAL", "Host", "HostSet", "HostUnreachable", "parse_hosts", "place",
           "scrub"]

LOCAL = "local"
_HOST_KEYS = {"driver", "address"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]{0,127})\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_VALUE = 1024

Bad = Callable[[str, str], InputError]


@dataclass(frozen=True)
class Host:
    """One entry of ``hosts:``; *settings* hold literal values and ``${VAR}`` references."""

    name: str
    driver: str
    settings: tuple[tuple[str, Any], ...] = ()
    address: str | None = None

    def reach_address(self) -> str:
        """The address other hosts reach this host's forwarded ports at: ``address:``,
        else the host part of a URL setting, else loopback."""
        if self.address:
            return self.address
        for _key, value in self.settings:
            if isinstance(value, str) and "://" in value:
                with contextlib.suppress(ValueError):
                    if hostname := urlparse(value).hostname:
                        return hostname
        return "127.0.0.1"


class HostUnreachable(BackendError):
    """A host whose driver could not be made or asked; the message names the host."""

    def __init__(self, host: str, cause: CapstanError, secrets: Iterable[str]) -> None:
        super().__init__(f"host {host}: {scrub(str(cause), secrets)}")
        self.host = host
        self.exit_code = cause.exit_code


def scrub(text: str, secrets: Iterable[str]) -> str:
    """*text* with credentials (:func:`redact`) and the given values masked."""
    text = redact(text)
    for value in secrets:
        text = text.replace(value, MASK)
    return text


def parse_hosts(raw: Any, bad: Bad) -> dict[str, Host]:
    """The ``hosts:`` map, each host's settings checked against its driver's."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad("hosts", "expected a mapping of host name to driver and settings")
    hosts = {}
    for name, value in raw.items():
        why = problem(name, "host")
        if why is not None:
            shown = ascii(name)[:72]
            raise bad("hosts", f"invalid host name {shown}: {why}")
        hosts[name] = _host(name, value, bad)
    return hosts


def _host(name: str, value: Any, bad: Bad) -> Host:
    where = f"hosts.{name}"
    if not isinstance(value, dict) or not isinstance(value.get("driver"), str):
        raise bad(where, "expected a mapping with 'driver' and the driver's settings")
    driver = value["driver"]
    if driver not in driver_names():
        raise bad(f"{where}.driver", f"unknown driver {ascii(driver)[:72]} (installed: "
                  f"{', '.join(driver_names())})")
    declared = {s.key: s for s in driver_class(driver).settings}
    address = value.get("address")
    if address is not None and not (_plain(address) and is_host_address(address)):
        raise bad(f"{where}.address", "expected a host name or IP address")
    settings = []
    for key, item in value.items():
        if key in _HOST_KEYS:
            continue
        setting = declared.get(str(key))
        if setting is None:
            allowed = ", ".join(sorted(declared)) or "none"
            raise bad(where, f"unknown setting {ascii(str(key))[:72]} for driver {driver} "
                      f"(its settings: {allowed})")
        settings.append((setting.key, _value(setting, item, f"{where}.{setting.key}", bad)))
    return Host(name, driver, tuple(settings), address)


def _plain(value: Any) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= _MAX_VALUE
            and not _CONTROL.search(value) and not value.startswith("-"))


def _value(setting: Setting, value: Any, where: str, bad: Bad) -> Any:
    """A setting's value as written; its text is never put in a message."""
    if isinstance(value, str) and _VARIABLE.fullmatch(value):
        return value
    if setting.secret:
        raise bad(where, "is a secret: write it as ${VARIABLE} and set the variable in "
                  "the environment (the file is not the place for it; value not shown)")
    if setting.type is bool:
        if not isinstance(value, bool):
            raise bad(where, "expected true or false")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not _plain(value):
        raise bad(where, "expected a string on one line (value not shown)")
    _no_password(value, where, bad)
    if setting.choices and value not in setting.choices:
        raise bad(where, f"must be one of {', '.join(setting.choices)}")
    return value


def _no_password(value: str, where: str, bad: Bad) -> None:
    """A URL setting carries no password (it would show in messages and listings)."""
    if "://" not in value:
        return
    try:
        password = urlparse(value).password
    except ValueError as err:
        raise bad(where, "not a valid URL (value not shown)") from err
    if password:
        raise bad(where, "a password in a URL is refused: use keys, or ${VARIABLE} for the "
                  "whole value (value not shown)")


def host_config(config: Config, host: Host, where: str) -> tuple[Config, list[str]]:
    """*config* with *host*'s settings on top, ``${VAR}`` read from the environment,
    and the values that must not be shown."""
    values: dict[str, Any] = {}
    hidden: list[str] = []
    for key, value in host.settings:
        match = _VARIABLE.fullmatch(value) if isinstance(value, str) else None
        if match:
            got = os.environ.get(match[1])
            if not got:
                raise ConfigError(f"{where}: hosts.{host.name}.{key} is read from the "
                                  f"environment variable {match[1]}, which is not set")
            value = got
            hidden.append(got)
        values[key] = value
    return config.with_layer(f"{where}: hosts.{host.name}", values), hidden


class HostSet:
    """The drivers of a fleet's hosts, each made and asked on first use; a failure of a
    host becomes :class:`HostUnreachable` naming it, and says nothing of the others."""

    def __init__(self, config: Config, hosts: Mapping[str, Host], where: str) -> None:
        self.config = config
        self.hosts = hosts
        self.where = where
        self._drivers: dict[tuple[str, str | None], Driver] = {}
        self._listed: dict[tuple[str, str | None], dict[str, Instance]] = {}
        self._hidden: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def driver_name(self, host: str, driver: str | None = None) -> str:
        """The driver a host (or, on the default host, a service's ``driver:``) uses."""
        if host in self.hosts:
            return self.hosts[host].driver
        return driver or str(self.config.hypervisor)

    def private(self, host: str, driver: str | None = None) -> bool:
        """Whether the host's driver can join its instances in a private segment."""
        try:
            cls = driver_class(self.driver_name(host, driver))
        except CapstanError:
            return False
        return Capability.PRIVATE_NETWORK in cls.capabilities

    def driver(self, host: str, driver: str | None = None) -> Driver:
        """The host's driver (one object per host)."""
        key = (host, None if host in self.hosts else driver)
        with self._lock:
            if key not in self._drivers:
                self._drivers[key] = self._make(host, driver)
            return self._drivers[key]

    def _make(self, host: str, driver: str | None) -> Driver:
        from capstan.services.instances import driver_for

        if host == LOCAL and host not in self.hosts:
            return driver_for(self.config, driver)
        if host not in self.hosts:
            raise self.unreachable(host, InputError(
                f"not among the hosts of {self.where} (put it back to reach its instances)"))
        try:
            config, self._hidden[host] = host_config(self.config, self.hosts[host], self.where)
            return driver_for(config, self.hosts[host].driver)
        except CapstanError as err:
            raise self.unreachable(host, err) from err

    def unreachable(self, host: str, err: CapstanError) -> HostUnreachable:
        """*err* as the host's one-line failure, secrets masked."""
        if isinstance(err, HostUnreachable):
            return err
        return HostUnreachable(host, err, self._hidden.get(host, ()))

    def scrub(self, host: str, text: str) -> str:
        """*text* with the host's secrets and anything that looks like one masked."""
        return scrub(text, self._hidden.get(host, ()))

    def reach_address(self, host: str) -> str:
        """The address other hosts reach *host*'s forwarded ports at."""
        return self.hosts[host].reach_address() if host in self.hosts else "127.0.0.1"

    def instances(self, host: str, driver: str | None = None) -> dict[str, Instance]:
        """The host's instances by name, listed once."""
        key = (host, None if host in self.hosts else driver)
        if key not in self._listed:
            made = self.driver(host, driver)
            try:
                self._listed[key] = {i.name: i for i in made.list()}
            except CapstanError as err:
                raise self.unreachable(host, err) from err
        return self._listed[key]

    def forget(self) -> None:
        """Drop the listings (instances changed)."""
        self._listed.clear()

    def free_memory(self, host: str) -> int | None:
        """The host's free memory (MiB) as its driver reports it, or None."""
        try:
            return self.driver(host).free_memory_mib()
        except CapstanError as err:
            raise self.unreachable(host, err) from err


def place(indexes: Iterable[int], hosts: tuple[str, ...], *,
          free: Mapping[str, int | None] | None = None, memory_mib: int = 0,
          kept: Mapping[int, str] | None = None) -> dict[int, str]:
    """The host of each instance index of a service spread over *hosts*.

    An index in *kept* (its instance already runs there) stays. The others go by free
    memory when every host reports it (the most free first, each placement taking
    *memory_mib*), else round-robin by index.
    """
    kept = kept or {}
    placed = {i: h for i, h in kept.items() if h in hosts}
    todo = [i for i in indexes if i not in placed]
    left = dict(free or {})
    if todo and len(left) == len(hosts) and all(left.get(h) is not None for h in hosts):
        for index in todo:
            best = max(hosts, key=lambda h: (left[h], -hosts.index(h)))
            placed[index] = best
            left[best] = int(left[best] or 0) - memory_mib
        return placed
    for index in todo:
        placed[index] = hosts[(index - 1) % len(hosts)]
    return placed
