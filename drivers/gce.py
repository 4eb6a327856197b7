"""Google Compute Engine driver: images become GCE images, instances are VMs (``-p gce``).

Upload: the image (with a run's command line written into an overlay first) becomes
the ``.tar.gz`` Compute Engine imports (``disk.raw``, sparse, oldgnu tar), sent to
``gce_bucket`` with a resumable upload, then ``images.insert`` and a wait on the
operation; the object is deleted afterwards. Images are labelled ``capstan-managed``
and with the image's SHA-256, so the same bytes reuse the same image. Credentials come
from Google's standard chain (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's application
default credentials, the metadata server) and are never logged.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from capstan.core.checks import has_module
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
from capstan.drivers.cloud import CloudDriver, label_value

LOG = logging.getLogger(__name__)

__all__ = ["GceDriver"]

LABEL = "capstan-managed"
DIGEST = "capstan-digest"
CHUNK = 8 << 20  # resumable upload chunks (a multiple of 256 KiB)
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
#: GCE instance statuses (REPAIRING is unknown: Google is moving it)
_STATES = {"PROVISIONING": InstanceState.STARTING, "STAGING": InstanceState.STARTING,
           "RUNNING": InstanceState.RUNNING, "STOPPING": InstanceState.STOPPING,
           "SUSPENDING": InstanceState.STOPPING, "STOPPED": InstanceState.STOPPED,
           "SUSPENDED": InstanceState.PAUSED, "TERMINATED": InstanceState.STOPPED}
_NO_CREDENTIALS = ("no Google credentials: run 'gcloud auth application-default login' or "
                   "set GOOGLE_APPLICATION_CREDENTIALS")


class GceDriver(CloudDriver):
    """Compute Engine VMs from GCE images made of pycapstan images (``-p gce``)."""

    name = "gce"
    capabilities = frozenset({Capability.LOGS, Capability.IMAGES, Capability.DETACH,
                              Capability.GRACEFUL_STOP, Capability.REMOTE})
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
        if not has_module("google.cloud.compute_v1"):
            return [Finding("gce", Status.MISSING, "google-cloud-compute is not installed",
                            "pip install 'pycapstan[gce]'")]
        if not config.gce_bucket:
            return [Finding("gce", Status.WARN, "no gce_bucket: images cannot be uploaded",
                            "set gce_bucket to a Cloud Storage bucket you can write")]
        return [Finding("gce", Status.OK, f"zone {config.gce_zone}, bucket {config.gce_bucket}")]
    name_pattern = _NAME
    name_rule = ("lowercase letters, digits and '-', starting with a letter, at most 63 "
                 "characters (RFC 1035)")

    def __init__(self, config: Config, disks: DiskPreparer | None = None) -> None:
        super().__init__(config, disks)
        self.project = self.setting("gce_project") or None
        self.zone = self.setting("gce_zone")
        self.machine_type = self.setting("gce_machine_type")
        self.network = self.setting("gce_network")
        self.bucket = self.setting("gce_bucket") or None
        self.endpoint = self.setting("gce_endpoint") or None
        self._clients: dict[str, Any] = {}
        self._credentials: Any = None
        self.bytes_sent = 0  # by the last upload

    # -- clients --------------------------------------------------------------

    def _auth(self) -> tuple[Any, str]:
        """Credentials from Google's standard chain and the project to use."""
        if self._credentials is None:
            try:
                import google.auth
                from google.auth.exceptions import DefaultCredentialsError
            except ImportError as err:
                raise BackendError("the gce driver needs the Google Cloud libraries: pip "
                                   "install 'pycapstan[gce]'") from err
            try:
                creds, found = google.auth.default(scopes=SCOPES)
            except (DefaultCredentialsError, OSError, ValueError) as err:
                named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
                if named:  # its content is never shown: it may be a private key
                    raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS ({named[:200]}) is not "
                                      "a readable Google credentials file") from err
                raise ConfigError(_NO_CREDENTIALS) from err
            self._credentials = creds
            self.project = self.project or found
        if not self.project:
            raise ConfigError("no GCE project: set gce_project or GOOGLE_CLOUD_PROJECT")
        return self._credentials, self.project

    def client(self, service: str) -> Any:
        """A Compute Engine client (``images``, ``instances``, ``zones``, ``machine_types``,
        ``global_operations``, ``zone_operations``) or ``storage``."""
        if service not in self._clients:
            if not _ZONE.fullmatch(self.zone):
                raise ConfigError(f"invalid GCE zone '{self.zone[:80]}': e.g. us-central1-a")
            try:
                compute_v1 = importlib.import_module("google.cloud.compute_v1")
                storage = importlib.import_module("google.cloud.storage")
            except ImportError as err:
                raise BackendError("the gce driver needs the Google Cloud libraries: pip "
                                   "install 'pycapstan[gce]'") from err
            creds, project = self._auth()
            if service == "storage":
                self._clients[service] = storage.Client(project=project, credentials=creds)
            else:
                cls = getattr(compute_v1, "".join(p.title() for p in service.split("_"))
                              + "Client")
                options = {"api_endpoint": self.endpoint} if self.endpoint else None
                self._clients[service] = cls(credentials=creds, client_options=options)
        return self._clients[service]

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """*fn(**kwargs)* with Google's errors as ours."""
        import requests
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        try:
            return fn(**kwargs)
        except auth.DefaultCredentialsError as err:
            raise ConfigError(_NO_CREDENTIALS) from err
        except auth.RefreshError as err:
            raise ConfigError("Google rejected the credentials (refreshing the access "
                              "token failed)") from err
        except (auth.TransportError, requests.ConnectionError, requests.Timeout) as err:
            raise RemoteError(f"GCE {what}: cannot reach Google: {type(err).__name__}") from err
        except api.NotFound as err:
            raise NotFound(f"GCE {what}: {err.message}") from err
        except (api.Unauthorized, api.Forbidden) as err:
            raise ConfigError(f"GCE {what}: access denied: {err.message}") from err
        except api.Conflict as err:
            raise Conflict(f"GCE {what}: {err.message}") from err
        except (api.TooManyRequests, api.ServiceUnavailable, api.RetryError,
                api.DeadlineExceeded) as err:
            raise RemoteError(f"GCE {what}: {err} (run the command again)") from err
        except api.GoogleAPICallError as err:
            raise BackendError(f"GCE {what}: {err.code}: {err.message}") from err

    def _wait(self, what: str, operation: Any, zone: str | None = None,
              timeout: float = 1800) -> None:
        """Wait until *operation* is done; BackendError with its first error if it failed."""
        from google.cloud import compute_v1

        done = compute_v1.Operation.Status.DONE
        deadline = time.monotonic() + timeout
        while operation.status != done:
            if time.monotonic() > deadline:
                raise GuestTimeout(f"GCE {what} did not finish within {timeout:.0f} s")
            if zone:
                operation = self._call(f"{what} (wait)", self.client("zone_operations").wait,
                                       project=self.project, zone=zone,
                                       operation=operation.name)
            else:
                operation = self._call(f"{what} (wait)",
                                       self.client("global_operations").wait,
                                       project=self.project, operation=operation.name)
        errors = list(operation.error.errors) if operation.error else []
        if errors:
            raise BackendError(f"GCE {what} failed: {errors[0].code}: {errors[0].message}")

    # -- images ---------------------------------------------------------------

    def _our_images(self) -> list[Any]:
        request = {"project": self._auth()[1], "filter": f'labels.{LABEL} = "true"'}
        found = self._call("images.list",
                           lambda: list(self.client("images").list(request=request)))
        return [i for i in found if i.labels.get(LABEL) == "true"]

    def find_image(self, digest: str) -> str | None:
        """Our READY image made from an image with SHA-256 *digest*; a FAILED one is removed."""
        for image in self._our_images():
            if f"sha256:{digest}" not in image.description:
                continue
            if image.status == "READY":
                return str(image.name)
            if image.status == "FAILED":
                self._delete_image(str(image.name))
        return None

    def upload(self, image: Path, name: str, progress: Callable[..., None] | None = None,
               ) -> UploadResult:
        """Make a GCE image of *image* (reusing one made of the same bytes)."""
        digest = self.disks.facts(image).sha256
        self.bytes_sent = 0
        existing = self.find_image(digest)
        if existing:
            return UploadResult(existing, name, digest, reused=True)
        if not self.bucket:
            raise ConfigError("gce_bucket is not set: the image is uploaded there first")
        image_name = f"{_slug(name)[:49]}-{digest[:12]}"
        blob = self.client("storage").bucket(self.bucket).blob(f"capstan/{digest}.tar.gz",
                                                              chunk_size=CHUNK)
        try:
            with tempfile.TemporaryDirectory(prefix="capstan-gce-") as tmp:
                tarball = Path(tmp) / "disk.tar.gz"
                self.disks.export(image, tarball, "gce")
                blob.metadata = {LABEL: "true", DIGEST: digest}
                with open(tarball, "rb") as f:  # no size given: a resumable upload, always
                    self._call("upload to Cloud Storage", blob.upload_from_file, file_obj=f,
                               size=None, content_type="application/gzip")
                self.bytes_sent = tarball.stat().st_size
            if progress:
                progress(self.bytes_sent)
            self._insert_image(image_name, name, digest,
                               f"https://storage.googleapis.com/{self.bucket}/{blob.name}")
        finally:
            with contextlib.suppress(CapstanError):
                self._call("delete the uploaded object", blob.delete)
        return UploadResult(image_name, name, digest, reused=False, bytes_sent=self.bytes_sent)

    def _insert_image(self, image_name: str, name: str, digest: str, source: str) -> None:
        """images.insert from the tarball at *source*; a failed image is deleted."""
        from google.cloud import compute_v1

        resource = compute_v1.Image(
            name=image_name, description=f"pycapstan image {name} sha256:{digest}",
            raw_disk=compute_v1.RawDisk(source=source), architecture="X86_64",
            labels={LABEL: "true", DIGEST: digest[:63], "capstan-name": label_value(name)})
        operation = self._call("images.insert", self.client("images").insert_unary,
                               project=self.project, image_resource=resource)
        try:
            self._wait("images.insert", operation)
        except CapstanError:
            with contextlib.suppress(CapstanError):
                self._delete_image(image_name)
            raise

    def _delete_image(self, image_name: str) -> None:
        operation = self._call("images.delete", self.client("images").delete_unary,
                               project=self.project, image=image_name)
        self._wait("images.delete", operation)

    def images(self) -> list[StoredImage]:
        """Our GCE images (their detail: size and status)."""
        rows = [StoredImage(str(image.id), str(image.name),
                            image.description.rpartition("sha256:")[2],
                            f"{image.disk_size_gb} GiB, {image.status}",
                            str(image.creation_timestamp)) for image in self._our_images()]
        return sorted(rows, key=lambda r: r.created)

    def remove_image(self, ref: str) -> None:
        """Delete our GCE image *ref* (name, id or the name it was uploaded under)."""
        matches = [i for i in self._our_images()
                   if ref in (i.name, str(i.id)) or i.labels.get("capstan-name") == ref]
        if not matches:
            raise NotFound(f"no pycapstan GCE image '{ref[:80]}' in project {self.project}")
        for image in matches:
            self._delete_image(str(image.name))

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


def _slug(name: str) -> str:
    """*name* as the start of a GCE resource name."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return slug if slug[:1].isalpha() else f"capstan-{slug}".rstrip("-")
