"""vSphere driver with pyvmomi (``-p vsphere``).

The image (command line written) becomes a monolithicFlat VMDK uploaded to
``[datastore] capstan/<name>/`` over the datastore HTTP interface; the VM has a
PVSCSI disk, a VMXNET3 NIC and its serial port in ``console.log`` beside the
disk. Our VMs carry a ``pycapstan:`` annotation. TLS is verified unless
``vsphere_insecure`` is set; the password comes from ``vsphere_password`` or
``CAPSTAN_VSPHERE_PASSWORD`` and is never put on a command line or in a log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlparse

from capstan.core import timestamps
from capstan.core.config import Config
from capstan.core.errors import (
    BackendError,
    ConfigError,
    Conflict,
    NotFound,
    RemoteError,
    UnsupportedOperation,
)
from capstan.drivers.base import (
    Capability,
    DiskForm,
    DiskPreparer,
    Driver,
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    Setting,
    Status,
)

__all__ = ["VSphereDriver"]

MARK = "pycapstan:"
#: the disk vSphere is sent: a flat VMDK (its descriptor and a -flat.vmdk extent)
_VMDK = DiskForm("vmdk", ("subformat=monolithicFlat", "adapter_type=lsilogic"))
T = TypeVar("T")


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    """*method* with vSphere faults turned into BackendError (one line)."""

    @functools.wraps(method)
    def wrapper(self: VSphereDriver, *args: Any, **kwargs: Any) -> T:
        from pyVmomi import vmodl

        try:
            return method(self, *args, **kwargs)
        except vmodl.MethodFault as err:
            reason = getattr(err, "msg", "") or type(err).__name__.rsplit(".", 1)[-1]
            raise BackendError(f"vSphere: {reason}") from err

    return wrapper

#: vSphere power states
_STATES = {"poweredOn": InstanceState.RUNNING, "poweredOff": InstanceState.STOPPED,
           "suspended": InstanceState.PAUSED}


class VSphereDriver(Driver):
    """VMs on a vCenter or ESXi host."""

    name = "vsphere"
    capabilities = frozenset({Capability.DETACH, Capability.GRACEFUL_STOP, Capability.REMOTE})
    settings = (
        Setting("vsphere_url", help="https://vcenter.example.com/sdk"),
        Setting("vsphere_user"),
        Setting("vsphere_password", secret=True, help="best given as CAPSTAN_VSPHERE_PASSWORD"),
        Setting("vsphere_insecure", bool, False, help="skip TLS verification (not recommended)"),
        Setting("vsphere_cafile", help="CA bundle for a private certificate authority"),
        Setting("vsphere_datacenter", help="empty: the first one"),
        Setting("vsphere_datastore", help="empty: the datacenter's first one"),
        Setting("vsphere_network", default="VM Network"),
    )

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        if missing := cls.missing_library("pyVmomi", "pyvmomi"):
            return missing
        if not config.vsphere_url:
            return [Finding("vsphere", Status.MISSING, "pyvmomi found, no vsphere_url configured",
                            "set vsphere_url, vsphere_user and CAPSTAN_VSPHERE_PASSWORD")]
        if not (config.vsphere_password or config.vsphere_user):
            return [Finding("vsphere", Status.WARN, f"{config.vsphere_url}: no credentials",
                            "set vsphere_user and CAPSTAN_VSPHERE_PASSWORD")]
        return [Finding("vsphere", Status.OK, f"{config.vsphere_url} as {config.vsphere_user}")]

    def __init__(self, config: Config, disks: DiskPreparer | None = None) -> None:
        super().__init__(config, disks)
        self.url = self.setting("vsphere_url")
        self.user = self.setting("vsphere_user")
        self.password = self.setting("vsphere_password")
        self.insecure = bool(self.config.values.get("vsphere_insecure"))
        self.cafile = self.setting("vsphere_cafile") or None
        self.datacenter = self.setting("vsphere_datacenter")
        self.datastore = self.setting("vsphere_datastore")
        self.network = self.setting("vsphere_network")
        self._si: Any = None

    # -- connection ------------------------------------------------------------

    @property
    def si(self) -> Any:
        """The ServiceInstance, connected on first use."""
        if self._si is None:
            from pyVim.connect import SmartConnect
            from pyVmomi import vim

            if not self.url:
                raise ConfigError("no vSphere server: set vsphere_url "
                                  "(https://vcenter.example.com/sdk)")
            if not self.user or not self.password:
                raise ConfigError("no vSphere credentials: set vsphere_user and "
                                  "CAPSTAN_VSPHERE_PASSWORD")
            parsed = urlparse(self.url)
            try:
                self._si = SmartConnect(host=parsed.hostname, port=parsed.port or 443,
                                        user=self.user, pwd=self.password,
                                        sslContext=self._ssl(), connectionPoolTimeout=30)
            except vim.fault.InvalidLogin as err:
                raise ConfigError(f"vSphere at {parsed.hostname} rejected the login of "
                                  f"{self.user}") from err
            except ssl.SSLError as err:
                raise RemoteError(f"TLS verification of {parsed.hostname} failed: "
                                  f"{err.reason} (set vsphere_cafile, or vsphere_insecure "
                                  "to skip it)") from err
            except OSError as err:
                raise RemoteError(f"cannot reach vSphere at {self.url}: {err}") from err
        return self._si

    def _ssl(self) -> ssl.SSLContext:
        if self.insecure:
            return ssl._create_unverified_context()
        return ssl.create_default_context(cafile=self.cafile)

    def _content(self) -> Any:
        return self.si.RetrieveContent()

    def _find(self, kind: Any, name: str = "") -> list[Any]:
        content = self._content()
        view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
        try:
            return [o for o in view.view if not name or o.name == name]
        finally:
            view.Destroy()

    def _datacenter(self) -> Any:
        from pyVmomi import vim

        found = self._find(vim.Datacenter, self.datacenter)
        if not found:
            raise NotFound(f"no datacenter '{self.datacenter}' in vSphere" if self.datacenter
                           else "vSphere has no datacenter")
        return found[0]

    def _datastore(self, dc: Any) -> Any:
        stores = [d for d in dc.datastore if not self.datastore or d.name == self.datastore]
        if not stores:
            raise NotFound(f"no datastore '{self.datastore}' in datacenter {dc.name}")
        return stores[0]

    def _task(self, task: Any, what: str) -> Any:
        from pyVim.task import WaitForTask
        from pyVmomi import vmodl

        try:
            WaitForTask(task)
        except vmodl.MethodFault as err:
            reason = getattr(err, "msg", "") or type(err).__name__
            raise BackendError(f"vSphere {what}: {reason}") from err
        return task.info.result

    # -- datastore files -------------------------------------------------------

    def _upload(self, dc: Any, ds: Any, local: Path, remote: str) -> None:
        import requests

        parsed = urlparse(self.url)
        url = (f"https://{parsed.hostname}:{parsed.port or 443}/folder/{quote(remote)}"
               f"?dcPath={quote(dc.name)}&dsName={quote(ds.name)}")
        verify: bool | str = False if self.insecure else (self.cafile or True)
        try:
            with open(local, "rb") as data:
                reply = requests.put(url, data=data, verify=verify, timeout=(10, 600),
                                     headers={"Cookie": self.si._stub.cookie,
                                              "Content-Type": "application/octet-stream"})
        except requests.RequestException as err:
            raise RemoteError(f"upload of {remote} to {ds.name} failed: {err}") from err
        if reply.status_code not in (200, 201):
            raise RemoteError(f"upload of {remote} to {ds.name}: HTTP {reply.status_code}")

    def _delete_folder(self, dc: Any, ds: Any, folder: str) -> None:
        from pyVmomi import vmodl

        manager = self._content().fileManager
        with contextlib.suppress(vmodl.MethodFault, BackendError):
            self._task(manager.DeleteDatastoreFile_Task(name=f"[{ds.name}] {folder}",
                                                        datacenter=dc), "delete files")

    # -- lifecycle -------------------------------------------------------------

    @_translated
    def create(self, spec: InstanceSpec) -> Instance:
        from pyVmomi import vim

        if self._find(vim.VirtualMachine, spec.name):
            raise Conflict(f"vSphere already has a VM named {spec.name}")
        dc = self._datacenter()
        ds = self._datastore(dc)
        folder = f"capstan/{spec.name}"
        with tempfile.TemporaryDirectory(prefix="capstan-vsphere-") as tmp:
            disk = Path(tmp) / f"{spec.name}.vmdk"
            digest = self.disks.prepare(spec, disk, _VMDK).digest
            meta = {"image": str(spec.image.absolute()), "digest": digest,
                    "created": timestamps.now()}
            self._content().fileManager.MakeDirectory(name=f"[{ds.name}] {folder}",
                                                      datacenter=dc,
                                                      createParentDirectories=True)
            try:
                # the data extent first, its descriptor last
                self._upload(dc, ds, disk.with_name(f"{spec.name}-flat.vmdk"),
                             f"{folder}/{spec.name}-flat.vmdk")
                self._upload(dc, ds, disk, f"{folder}/{spec.name}.vmdk")
                vm = self._create_vm(spec, dc, ds, folder, meta)
            except BaseException:
                self._delete_folder(dc, ds, folder)
                raise
        return self._instance(vm)

    def _create_vm(self, spec: InstanceSpec, dc: Any, ds: Any, folder: str,
                   meta: dict[str, str]) -> Any:
        from pyVmomi import vim

        scsi = vim.vm.device.VirtualDeviceSpec(
            operation="add", device=vim.vm.device.ParaVirtualSCSIController(
                key=1000, busNumber=0, sharedBus="noSharing"))
        disk = vim.vm.device.VirtualDeviceSpec(
            operation="add", device=vim.vm.device.VirtualDisk(
                key=2000, controllerKey=1000, unitNumber=0,
                backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                    fileName=f"[{ds.name}] {folder}/{spec.name}.vmdk", diskMode="persistent")))
        nic = vim.vm.device.VirtualDeviceSpec(
            operation="add", device=vim.vm.device.VirtualVmxnet3(
                key=4000, backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                    deviceName=self.network)))
        serial = vim.vm.device.VirtualDeviceSpec(
            operation="add", device=vim.vm.device.VirtualSerialPort(
                key=9000, yieldOnPoll=True, backing=vim.vm.device.VirtualSerialPort.FileBackingInfo(
                    fileName=f"[{ds.name}] {folder}/console.log")))
        config = vim.vm.ConfigSpec(
            name=spec.name, guestId="otherLinux64Guest", memoryMB=spec.memory_mib,
            numCPUs=spec.cpus, annotation=MARK + json.dumps(meta),
            files=vim.vm.FileInfo(vmPathName=f"[{ds.name}] {folder}"),
            deviceChange=[scsi, disk, nic, serial])
        pool = self._find(vim.ResourcePool)
        if not pool:
            raise NotFound("vSphere has no resource pool to place the VM in")
        return self._task(dc.vmFolder.CreateVM_Task(config=config, pool=pool[0]),
                          f"create VM {spec.name}")

    def _vm(self, name: str) -> Any:
        from pyVmomi import vim

        for vm in self._find(vim.VirtualMachine, name):
            if (vm.config and (vm.config.annotation or "").startswith(MARK)):
                return vm
        raise NotFound(f"no such instance: {name} (in vSphere)")

    @_translated
    def start(self, name: str) -> Instance:
        vm = self._vm(name)
        if vm.runtime.powerState == "poweredOn":
            raise Conflict(f"instance {name} is already running")
        self._task(vm.PowerOnVM_Task(), f"power on {name}")
        return self._instance(vm)

    @_translated
    def stop(self, name: str, timeout: float = 30) -> Instance:
        from pyVmomi import vim

        vm = self._vm(name)
        if vm.runtime.powerState != "poweredOn":
            return self._instance(vm)
        with contextlib.suppress(vim.fault.ToolsUnavailable, vim.fault.InvalidState):
            vm.ShutdownGuest()  # graceful, through VMware Tools when the guest has them
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and vm.runtime.powerState == "poweredOn":
                time.sleep(0.5)
        if vm.runtime.powerState == "poweredOn":
            self._task(vm.PowerOffVM_Task(), f"power off {name}")
        return self._instance(vm)

    @_translated
    def delete(self, name: str) -> None:
        self.stop(name, timeout=5)
        vm = self._vm(name)
        dc = self._datacenter()
        path = vm.config.files.vmPathName  # "[ds] capstan/name"
        self._task(vm.Destroy_Task(), f"destroy {name}")
        store, _, folder = path.partition("] ")
        stores = [d for d in dc.datastore if d.name == store.lstrip("[")]
        if stores and folder.startswith("capstan/"):
            self._delete_folder(dc, stores[0], folder.split("/osv.vmx")[0])

    def _instance(self, vm: Any) -> Instance:
        meta: dict[str, str] = {}
        with contextlib.suppress(ValueError):
            meta = json.loads((vm.config.annotation or "")[len(MARK):])
        state = _STATES.get(str(vm.runtime.powerState), InstanceState.UNKNOWN)
        return Instance(vm.name, self.name, state, meta.get("image", ""),
                        image_digest=meta.get("digest", ""), created=meta.get("created", ""),
                        extra={"moref": vm._moId})

    @_translated
    def get(self, name: str) -> Instance:
        return self._instance(self._vm(name))

    def list(self) -> Iterator[Instance]:
        from pyVmomi import vim

        return iter([self._instance(vm) for vm in self._find(vim.VirtualMachine)
                     if vm.config and (vm.config.annotation or "").startswith(MARK)])

    def log_path(self, name: str) -> Path:
        raise UnsupportedOperation(self.name, "logs (the console log is on the datastore: "
                                   "capstan/NAME/console.log)")
