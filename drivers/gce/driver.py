"""Compute Engine VMs from GCE images made of pycapstan images (``-p gce``)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

from capstan.core.config import Config
from capstan.core.errors import CapstanError, ConfigError, NotFound
from capstan.drivers.base import (
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    Setting,
    Status,
)
from capstan.drivers.cloud import label_value
from capstan.drivers.gce.images import LABEL, GceImages

__all__ = ["GceDriver"]

_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
#: GCE instance statuses (REPAIRING is unknown: Google is moving it)
_STATES = {"PROVISIONING": InstanceState.STARTING, "STAGING": InstanceState.STARTING,
           "RUNNING": InstanceState.RUNNING, "STOPPING": InstanceState.STOPPING,
           "SUSPENDING": InstanceState.STOPPING, "STOPPED": InstanceState.STOPPED,
           "SUSPENDED": InstanceState.PAUSED, "TERMINATED": InstanceState.STOPPED}


class GceDriver(GceImages):
    """Compute Engine VMs from GCE images made of pycapstan images (``-p gce``)."""

    name = "gce"
    settings = (
        Setting("gce_project", help="empty: the credentials' project"),
        Setting("gce_zone", default="us-central1-a"),
        Setting("gce_machine_type", default="e2-small"),
        Setting("gce_network", default="default"),
        Setting("gce_bucket", help="Cloud Storage bucket for image uploads"),
        Setting("gce_endpoint", help="Compute API endpoint (empty: Google's)"),
    )

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        if missing := cls.missing_library("google.cloud.compute_v1", "google-cloud-compute"):
            return missing
        if not config.gce_bucket:
            return [Finding("gce", Status.WARN, "no gce_bucket: images cannot be uploaded",
                            "set gce_bucket to a Cloud Storage bucket you can write")]
        return [Finding("gce", Status.OK, f"zone {config.gce_zone}, bucket {config.gce_bucket}")]
    name_pattern = _NAME
    name_rule = ("lowercase letters, digits and '-', starting with a letter, at most 63 "
                 "characters (RFC 1035)")

    # -- instances -------------------------------------------------------------

    def _check_target(self) -> None:
        """The zone and machine type exist (ConfigError otherwise)."""
        project = self._auth()[1]
        try:
            self._call("zones.get", self.client("zones").get, project=project, zone=self.zone)
        except NotFound as err:
            raise ConfigError(f"unknown GCE zone '{self.zone}'") from err
        try:
            self._call("machineTypes.get", self.client("machine_types").get,
                       project=project, zone=self.zone, machine_type=self.machine_type)
        except NotFound as err:
            raise ConfigError(f"unknown GCE machine type '{self.machine_type}' in "
                              f"{self.zone}") from err

    def dry_run(self, spec: InstanceSpec) -> Sequence[str]:
        """What create and start would do, without calling Google."""
        self.check_name(spec.name)
        return [f"upload {spec.image} as a GCE tarball to gs://{self.bucket or '<gce_bucket>'}"
                " and import it with images.insert, unless an image of the same bytes exists",
                f"create instance {spec.name}: {self.machine_type} in {self.zone}, network "
                f"{self.network}, labels {LABEL}=true capstan-name={label_value(spec.name)}"]

    def plan(self, spec: InstanceSpec) -> dict[str, Any]:
        self._check_target()
        return {"project": self.project, "zone": self.zone, "instance": None}

    def start(self, name: str) -> Instance:
        data = self.load_record(name)
        project, zone = self._auth()[1], str(data["zone"])
        instances = self.client("instances")
        if data.get("instance"):
            operation = self._call("instances.start", instances.start_unary, project=project,
                                   zone=zone, instance=name)
            self._wait("instances.start", operation, zone)
            return self.get(name)
        from google.cloud import compute_v1

        resource = compute_v1.Instance(
            name=name, machine_type=f"zones/{zone}/machineTypes/{self.machine_type}",
            labels={LABEL: "true", "capstan-name": label_value(name)},
            disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params={
                "source_image": f"projects/{data['project']}/global/images/{data['image']}"})],
            network_interfaces=[compute_v1.NetworkInterface(
                network=f"global/networks/{self.network}",
                access_configs=[compute_v1.AccessConfig(name="External NAT",
                                                        type_="ONE_TO_ONE_NAT")])])
        operation = self._call("instances.insert", instances.insert_unary, project=project,
                               zone=zone, instance_resource=resource)
        try:
            self._wait("instances.insert", operation, zone)
        except CapstanError:
            with contextlib.suppress(CapstanError):  # a half-made VM is removed
                self._wait("instances.delete", self._call(
                    "instances.delete", instances.delete_unary, project=project, zone=zone,
                    instance=name), zone)
            raise
        data["instance"] = name
        self.save_record(name, data)
        return self.get(name)

    def stop(self, name: str, timeout: float = 30) -> Instance:
        data = self.load_record(name)
        if data.get("instance"):
            operation = self._call("instances.stop", self.client("instances").stop_unary,
                                   project=self._auth()[1], zone=data["zone"], instance=name)
            self._wait("instances.stop", operation, str(data["zone"]))
        return self.get(name)

    def delete(self, name: str) -> None:
        data = self.load_record(name)
        if data.get("instance"):
            with contextlib.suppress(NotFound):
                operation = self._call("instances.delete",
                                       self.client("instances").delete_unary,
                                       project=self._auth()[1], zone=data["zone"],
                                       instance=name)
                self._wait("instances.delete", operation, str(data["zone"]))
        self.drop_record(name)

    def get(self, name: str) -> Instance:
        data = self.load_record(name)
        state = InstanceState.STOPPED
        extra: dict[str, Any] = {"gce_image": data.get("image", ""), "zone": data["zone"]}
        ports: tuple[str, ...] = ()
        if data.get("instance"):
            vm = self._call("instances.get", self.client("instances").get,
                            project=self._auth()[1], zone=data["zone"], instance=name)
            state = _STATES.get(vm.status, InstanceState.UNKNOWN)
            ips = [c.nat_i_p for n in vm.network_interfaces for c in n.access_configs
                   if c.nat_i_p]
            ports = tuple(ips)
            extra.update(machine_type=vm.machine_type.rpartition("/")[2], status=vm.status)
        return Instance(name, self.name, state, str(data.get("source", "")), ports=ports,
                        extra=extra)

    def read_log(self, name: str) -> bytes:
        """The instance's serial port 1 output."""
        data = self.load_record(name)
        if not data.get("instance"):
            return b""
        reply = self._call("instances.getSerialPortOutput",
                           self.client("instances").get_serial_port_output,
                           request={"project": self._auth()[1], "zone": data["zone"],
                                    "instance": name, "port": 1})
        return str(reply.contents).encode()
