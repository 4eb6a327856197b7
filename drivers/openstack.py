"""OpenStack driver: images go to Glance as qcow2, instances are Nova servers (``-p openstack``).

Settings come through ``clouds.yaml`` / ``OS_*`` as openstacksdk reads them (the cloud
named by ``openstack_cloud``, else ``OS_CLOUD`` or the ``OS_*`` variables); they are
never logged. Images carry Capstan's tags (``tagOSv``, ``tagCapstan``) and the
``hw_disk_bus``/``hw_vif_model`` virtio properties, and are reused when Glance holds
one with the same checksum. The flavor is the one named by ``openstack_flavor``, or
the smallest that fits the disk, memory and vCPUs asked for (Capstan's picker).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any

from capstan.core import proc
from capstan.core.config import Config
from capstan.core.errors import (
    BackendError,
    CapstanError,
    ConfigError,
    Conflict,
    GuestTimeout,
    NotFound,
    RemoteError,
)
from capstan.drivers.base import (
    Capability,
    DiskPreparer,
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    Setting,
    Status,
    StoredImage,
    UploadResult,
)
from capstan.drivers.cloud import CloudDriver

LOG = logging.getLogger(__name__)

__all__ = ["Flavor", "OpenStackDriver", "pick_flavor"]

TAGS = ["tagOSv", "tagCapstan"]
SHA256_KEY = "owner_specified.openstack.sha256"  # set by openstacksdk's create_image
GIB = 1 << 30
#: Nova server statuses
_STATES = {"BUILD": InstanceState.STARTING, "ACTIVE": InstanceState.RUNNING,
           "REBOOT": InstanceState.STARTING, "HARD_REBOOT": InstanceState.STARTING,
           "PAUSED": InstanceState.PAUSED, "SUSPENDED": InstanceState.PAUSED,
           "SHUTOFF": InstanceState.STOPPED, "STOPPED": InstanceState.STOPPED,
           "ERROR": InstanceState.CRASHED}
_MISSING = "the openstack driver needs openstacksdk: pip install 'pycapstan[openstack]'"


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


class OpenStackDriver(CloudDriver):
    """Nova servers from Glance images made of pycapstan images (``-p openstack``)."""

    name = "openstack"
    capabilities = frozenset({Capability.LOGS, Capability.IMAGES, Capability.DETACH,
                              Capability.GRACEFUL_STOP, Capability.REMOTE})
    settings = (
        Setting("openstack_cloud", help="clouds.yaml entry (empty: OS_* variables)"),
        Setting("openstack_flavor", help="empty: the smallest that fits"),
        Setting("openstack_network", help="empty: the project's only network"),
        Setting("openstack_floating_ip", bool, False, help="attach a floating IP"),
        Setting("openstack_floating_network", help="network floating IPs come from"),
    )

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        if importlib.util.find_spec("openstack") is None:
            return [Finding("openstack", Status.MISSING, "openstacksdk is not installed",
                            "pip install 'pycapstan[openstack]'")]
        where = config.openstack_cloud or ("OS_* variables" if os.environ.get("OS_AUTH_URL")
                                           else "")
        if not where:
            return [Finding("openstack", Status.WARN, "openstacksdk found, no cloud configured",
                            "set openstack_cloud (a clouds.yaml entry) or OS_AUTH_URL")]
        return [Finding("openstack", Status.OK, f"cloud {where}")]
    name_pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
    name_rule = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63"

    def __init__(self, config: Config, disks: DiskPreparer | None = None) -> None:
        super().__init__(config, disks)
        self.cloud = self.setting("openstack_cloud") or None
        self.flavor = self.setting("openstack_flavor") or None
        self.network = self.setting("openstack_network") or None
        self.floating_ip = bool(self.config.values.get("openstack_floating_ip"))
        self.floating_network = self.setting("openstack_floating_network") or None
        self._conn: Any = None
        self.bytes_sent = 0  # by the last upload

    # -- connection -----------------------------------------------------------

    def conn(self) -> Any:
        """An openstacksdk connection (clouds.yaml / OS_* through openstacksdk)."""
        if self._conn is None:
            try:
                openstack = importlib.import_module("openstack")
            except ImportError as err:
                raise BackendError(_MISSING) from err
            self._conn = self._call("connect", lambda: openstack.connect(
                cloud=self.cloud, app_name="pycapstan"))
        return self._conn

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """*fn()* with openstacksdk's and keystoneauth's errors as ours."""
        from keystoneauth1 import exceptions as ks
        from openstack import exceptions as sdk

        try:
            return fn()
        except (sdk.SDKException, ks.ClientException, ks.RetriableConnectionFailure) as err:
            raise _translated(what, err) from err

    # -- images ---------------------------------------------------------------

    def _our_images(self) -> list[Any]:
        conn = self.conn()
        return [i for i in self._call("images.list", lambda: list(conn.image.images(
            tag=TAGS[1]))) if TAGS[1] in (i.tags or [])]

    def find_image(self, checksum: str) -> str | None:
        """Our active Glance image whose checksum is *checksum* (md5, as Glance keeps it)."""
        for image in self._our_images():
            if image.checksum == checksum and image.status == "active":
                return str(image.id)
        return None

    def upload(self, image: Path, name: str, progress: Callable[..., None] | None = None,
               ) -> UploadResult:
        """A Glance image of *image* as qcow2 (reusing one with the same checksum)."""
        self.bytes_sent = 0
        with tempfile.TemporaryDirectory(prefix="capstan-openstack-") as tmp:
            facts = self.disks.info(image)
            disk = image
            if facts.format != "qcow2" or facts.backing_file:  # one self-contained qcow2
                disk = Path(tmp) / "disk.qcow2"
                proc.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(image), str(disk)])
            md5, sha256 = _hashes(disk)
            existing = self.find_image(md5)
            if existing:
                return UploadResult(existing, name, sha256, reused=True)
            glance = self.conn().image
            with open(disk, "rb") as f:
                created = self._call("images.create", lambda: glance.create_image(
                    name, data=f, md5=md5, sha256=sha256, disk_format="qcow2",
                    container_format="bare", tags=TAGS, allow_duplicates=True,
                    validate_checksum=False, wait=False,
                    min_disk=max(1, math.ceil(facts.virtual_size / GIB)),
                    hw_disk_bus="virtio", hw_vif_model="virtio", capstan_name=name[:255]))
            self.bytes_sent = disk.stat().st_size
        stored = self._call("images.get", lambda: glance.get_image(created.id))
        if stored.checksum != md5 or stored.status != "active":
            with contextlib.suppress(CapstanError):
                self._call("images.delete", lambda: glance.delete_image(created.id))
            raise BackendError(f"Glance stored image {created.id} as {stored.status} with "
                               f"checksum {stored.checksum}, not {md5} (deleted)")
        if progress:
            progress(self.bytes_sent)
        return UploadResult(str(created.id), name, sha256, reused=False,
                            bytes_sent=self.bytes_sent)

    def images(self) -> list[StoredImage]:
        """Our Glance images (their detail: format and status; their digest: the SHA-256
        of the qcow2 uploaded, as openstacksdk records it)."""
        return sorted((StoredImage(str(i.id), str(i.name),
                                   str((i.properties or {}).get(SHA256_KEY, "")),
                                   f"{i.disk_format}, {i.status}", str(i.created_at))
                       for i in self._our_images()), key=lambda r: r.created)

    def remove_image(self, ref: str) -> None:
        """Delete our Glance image *ref* (id or name)."""
        matches = [i for i in self._our_images() if ref in (i.id, i.name)]
        if not matches:
            raise NotFound(f"no pycapstan Glance image '{ref[:80]}'")
        glance = self.conn().image
        for image_id in [str(i.id) for i in matches]:
            self._call("images.delete", partial(glance.delete_image, image_id))

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


def _hashes(path: Path) -> tuple[str, str]:
    """MD5 (Glance's checksum) and SHA-256 of *path*, in one pass."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def _line(err: BaseException) -> str:
    """The first line of *err*'s message."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _translated(what: str, err: Exception) -> CapstanError:
    """Our error for openstacksdk's or keystoneauth's *err*, raised by operation *what*."""
    from keystoneauth1 import exceptions as ks
    from openstack import exceptions as sdk

    table: tuple[tuple[type[Exception] | tuple[type[Exception], ...],
                       Callable[[], CapstanError]], ...] = (
        ((ks.MissingRequiredOptions, ks.MissingAuthPlugin), lambda: ConfigError(
            "no OpenStack credentials: set openstack_cloud (a clouds.yaml entry), OS_CLOUD "
            "or the OS_* variables")),
        (ks.Unauthorized, lambda: ConfigError("OpenStack rejected the credentials")),
        ((ks.ConnectFailure, ks.ConnectTimeout, ks.SSLError, ks.RetriableConnectionFailure,
          ks.DiscoveryFailure, ks.EndpointNotFound),
         lambda: RemoteError(f"OpenStack {what}: {type(err).__name__}: {_line(err)}")),
        (sdk.ConfigException, lambda: ConfigError(f"OpenStack configuration: {_line(err)}")),
        (sdk.NotFoundException, lambda: NotFound(f"OpenStack {what}: {_line(err)}")),
        (sdk.ConflictException, lambda: Conflict(f"OpenStack {what}: {_line(err)}")),
    )
    for kinds, make in table:
        if isinstance(err, kinds):
            return make()
    status = getattr(err, "status_code", None) if isinstance(err, sdk.HttpException) else None
    if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        return ConfigError(f"OpenStack {what}: access denied: {_line(err)}")
    if status and status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        return RemoteError(f"OpenStack {what}: {_line(err)}")
    return BackendError(f"OpenStack {what}: {_line(err)}")
