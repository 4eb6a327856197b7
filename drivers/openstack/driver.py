"""Nova servers from Glance images made of pycapstan images (``-p openstack``); the
flavor picker."""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from capstan.core.config import Config
from capstan.core.errors import BackendError, CapstanError, ConfigError, GuestTimeout, NotFound
from capstan.drivers.base import (
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    Setting,
    Status,
)
from capstan.drivers.openstack.images import GlanceStore

__all__ = ["Flavor", "OpenStackDriver", "pick_flavor"]

#: Nova server statuses
_STATES = {"BUILD": InstanceState.STARTING, "ACTIVE": InstanceState.RUNNING,
           "REBOOT": InstanceState.STARTING, "HARD_REBOOT": InstanceState.STARTING,
           "PAUSED": InstanceState.PAUSED, "SUSPENDED": InstanceState.PAUSED,
           "SHUTOFF": InstanceState.STOPPED, "STOPPED": InstanceState.STOPPED,
           "ERROR": InstanceState.CRASHED}


@dataclass(frozen=True)
class Flavor:
    """What the picker needs of a Nova flavor."""

    id: str
    name: str
    disk_gib: int
    ram_mib: int
    vcpus: int


def pick_flavor(flavors: Iterable[Flavor], disk_mib: int, memory_mib: int = -1,
                cpus: int = -1) -> Flavor:
    """The smallest flavor with at least *disk_mib* of disk, *memory_mib* of RAM and
    *cpus* vCPUs (a negative need is ignored): the smallest disk first, then the least
    RAM, then the fewest vCPUs, as Capstan picked."""
    if disk_mib <= 0:
        raise ConfigError("Please specify disk size.")
    fits = [f for f in flavors if f.disk_gib * 1024 >= disk_mib
            and (memory_mib < 0 or f.ram_mib >= memory_mib) and (cpus < 0 or f.vcpus >= cpus)]
    if not fits:
        raise ConfigError(f"No matching flavors to pick from: none has {disk_mib} MiB of "
                          f"disk, {max(memory_mib, 0)} MiB of memory and {max(cpus, 0)} "
                          "vCPUs (name one with openstack_flavor)")
    return min(fits, key=lambda f: (f.disk_gib, f.ram_mib, f.vcpus, f.name))


class OpenStackDriver(GlanceStore):
    """Nova servers from Glance images made of pycapstan images (``-p openstack``)."""

    name = "openstack"
    settings = (
        Setting("openstack_cloud", help="clouds.yaml entry (empty: OS_* variables)"),
        Setting("openstack_flavor", help="empty: the smallest that fits"),
        Setting("openstack_network", help="empty: the project's only network"),
        Setting("openstack_floating_ip", bool, False, help="attach a floating IP"),
        Setting("openstack_floating_network", help="network floating IPs come from"),
    )

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        if missing := cls.missing_library("openstack", "openstacksdk"):
            return missing
        where = config.openstack_cloud or ("OS_* variables" if os.environ.get("OS_AUTH_URL")
                                           else "")
        if not where:
            return [Finding("openstack", Status.WARN, "openstacksdk found, no cloud configured",
                            "set openstack_cloud (a clouds.yaml entry) or OS_AUTH_URL")]
        return [Finding("openstack", Status.OK, f"cloud {where}")]
    name_pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
    name_rule = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63"

    # -- flavors --------------------------------------------------------------

    def choose_flavor(self, disk_mib: int, memory_mib: int, cpus: int) -> Flavor:
        """``openstack_flavor`` (checked to fit the disk), else the picker's choice."""
        compute = self.conn().compute
        found = [Flavor(str(f.id), str(f.name), int(f.disk or 0), int(f.ram or 0),
                        int(f.vcpus or 0))
                 for f in self._call("flavors.list", lambda: list(compute.flavors()))]
        if not self.flavor:
            return pick_flavor(found, disk_mib, memory_mib, cpus)
        named = [f for f in found if self.flavor in (f.name, f.id)]
        if not named:
            raise ConfigError(f"unknown OpenStack flavor '{self.flavor[:80]}' (have: "
                              f"{', '.join(sorted(f.name for f in found))})")
        if named[0].disk_gib * 1024 < disk_mib:
            raise ConfigError(f"flavor '{named[0].name}' (disk {named[0].disk_gib} GiB) is "
                              f"smaller than the image ({disk_mib} MiB)")
        return named[0]

    # -- instances -------------------------------------------------------------

    def dry_run(self, spec: InstanceSpec) -> Sequence[str]:
        """What create and start would do, without calling OpenStack."""
        self.check_name(spec.name)
        flavor = (f"flavor {self.flavor}" if self.flavor else
                  f"the smallest flavor with {spec.memory_mib} MiB, {spec.cpus} vCPUs and "
                  "the image's disk")
        lines = [f"upload {spec.image} to Glance as qcow2 (hw_disk_bus=virtio, "
                 "hw_vif_model=virtio, tags tagOSv tagCapstan), unless an image with the "
                 "same checksum exists",
                 f"create server {spec.name}: {flavor}, network "
                 f"{self.network or 'the default'}"]
        if self.floating_ip:
            pool = self.floating_network or "the first external network"
            lines.append(f"attach a floating IP from {pool}")
        return lines

    def plan(self, spec: InstanceSpec) -> dict[str, Any]:
        disk_mib = math.ceil(self.disks.info(spec.image).virtual_size / (1 << 20))
        flavor = self.choose_flavor(disk_mib, spec.memory_mib, spec.cpus)
        return {"flavor": flavor.id, "flavor_name": flavor.name, "network": self._network_id(),
                "server": None, "floating_ip": None}

    def _network_id(self) -> str | None:
        if not self.network:
            return None
        net, wanted = self.conn().network, self.network
        try:
            found = self._call("networks.find",
                               lambda: net.find_network(wanted, ignore_missing=False))
        except NotFound as err:
            raise ConfigError(f"unknown OpenStack network '{wanted[:80]}'") from err
        return str(found.id)

    def start(self, name: str) -> Instance:
        data = self.load_record(name)
        compute = self.conn().compute
        if data.get("server"):
            self._call("servers.start", lambda: compute.start_server(data["server"]))
            return self.get(name)
        kwargs: dict[str, Any] = {"name": name, "image_id": data["image"],
                                  "flavor_id": data["flavor"],
                                  "metadata": {"capstan-managed": "true"}}
        if data.get("network"):
            kwargs["networks"] = [{"uuid": data["network"]}]
        server = self._call("servers.create", lambda: compute.create_server(**kwargs))
        data["server"] = str(server.id)
        self.save_record(name, data)  # recorded first: a crash now leaves it deletable
        try:
            self._wait_status(name, str(server.id), "ACTIVE")
            if self.floating_ip:
                data["floating_ip"] = self._attach_floating_ip(str(server.id))
                self.save_record(name, data)
        except CapstanError:
            with contextlib.suppress(CapstanError):
                self._remove_server(data)
            data["server"] = data["floating_ip"] = None
            self.save_record(name, data)
            raise
        return self.get(name)

    def _wait_status(self, name: str, server_id: str, status: str,
                     timeout: float = 600) -> None:
        compute = self.conn().compute
        deadline = time.monotonic() + timeout
        while True:
            server = self._call("servers.get", lambda: compute.get_server(server_id))
            if server.status == status:
                return
            if server.status == "ERROR":
                fault = (server.fault or {}).get("message", "no fault recorded")
                raise BackendError(f"OpenStack server {name} went to ERROR: {fault}")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"OpenStack server {name} is {server.status}, not {status},"
                                   f" after {timeout:.0f} s")
            time.sleep(self.poll_seconds)

    def _attach_floating_ip(self, server_id: str) -> str:
        """A new floating IP on the server's first port; its id."""
        net = self.conn().network
        if self.floating_network:
            pool = self.floating_network
            try:
                external = self._call("networks.find",
                                      lambda: net.find_network(pool, ignore_missing=False))
            except NotFound as err:
                raise ConfigError(f"unknown OpenStack network '{pool[:80]}'") from err
        else:
            external = next(iter(self._call("networks.list", lambda: list(
                net.networks(is_router_external=True)))), None)
        if external is None:
            raise ConfigError("no external network for a floating IP (set "
                              "openstack_floating_network)")
        ports = self._call("ports.list", lambda: list(net.ports(device_id=server_id)))
        if not ports:
            raise BackendError(f"server {server_id} has no port to attach a floating IP to")
        fip = self._call("floating_ips.create", lambda: net.create_ip(
            floating_network_id=external.id, port_id=ports[0].id,
            description="pycapstan"))
        return str(fip.id)

    def _remove_server(self, data: dict[str, Any]) -> None:
        net, compute = self.conn().network, self.conn().compute
        if data.get("floating_ip"):
            self._call("floating_ips.delete", lambda: net.delete_ip(data["floating_ip"],
                                                                     ignore_missing=True))
        if data.get("server"):
            self._call("servers.delete", lambda: compute.delete_server(data["server"],
                                                                        ignore_missing=True))

    def stop(self, name: str, timeout: float = 30) -> Instance:
        data = self.load_record(name)
        if data.get("server"):
            compute = self.conn().compute
            self._call("servers.stop", lambda: compute.stop_server(data["server"]))
            self._wait_status(name, data["server"], "SHUTOFF", max(timeout, 60))
        return self.get(name)

    def delete(self, name: str) -> None:
        data = self.load_record(name)
        self._remove_server(data)
        self.drop_record(name)

    def get(self, name: str) -> Instance:
        data = self.load_record(name)
        state = InstanceState.STOPPED
        extra: dict[str, Any] = {"glance_image": data.get("image", ""),
                                 "flavor": data.get("flavor_name", "")}
        ports: tuple[str, ...] = ()
        if data.get("server"):
            compute = self.conn().compute
            server = self._call("servers.get", lambda: compute.get_server(data["server"]))
            state = _STATES.get(str(server.status), InstanceState.UNKNOWN)
            ports = tuple(a["addr"] for rows in (server.addresses or {}).values()
                          for a in rows if isinstance(a, dict) and a.get("addr"))
            extra.update(server=data["server"], status=server.status)
        return Instance(name, self.name, state, str(data.get("source", "")), ports=ports,
                        extra=extra)

    def read_log(self, name: str) -> bytes:
        """The server's console log (Nova's os-getConsoleOutput)."""
        data = self.load_record(name)
        if not data.get("server"):
            return b""
        compute = self.conn().compute
        reply = self._call("servers.console", lambda: compute.get_server_console_output(
            data["server"]))
        return str((reply or {}).get("output") or "").encode()
