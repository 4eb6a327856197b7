"""libvirt driver: instances as persistent libvirt domains, local or remote.

State comes from libvirt, not from our files: our domains carry a
``<capstan:instance>`` element in ``<metadata>``. With a local URI and no
pool the disk is an overlay in ``$CAPSTAN_ROOT/instances/libvirt/<name>/``;
otherwise the image (command line applied, flattened to qcow2) is uploaded into
a volume of a storage pool through libvirt's stream API.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import stat
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlparse

from capstan.core import timestamps
from capstan.core.checks import has_module, install_command
from capstan.core.config import Config
from capstan.core.errors import (
    BackendError,
    ConfigError,
    Conflict,
    NotFound,
    UsageError,
)
from capstan.drivers import libvirt_net
from capstan.drivers.base import (
    Capability,
    DiskPreparer,
    Driver,
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    LogReader,
    Setting,
    Status,
)
from capstan.drivers.libvirt_console import relay
from capstan.drivers.libvirt_logs import open_console, remote_log_file, remove_remote_log
from capstan.drivers.libvirt_pool import Pool, call, metadata, send
from capstan.drivers.libvirt_xml import NS, DomainHost, domain_xml
from capstan.drivers.qemu.accel import QEMU_ACCEL

LOG = logging.getLogger(__name__)

__all__ = ["NS", "DomainHost", "LibvirtDriver", "domain_xml"]

T = TypeVar("T")


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    """*method* with libvirt's exceptions turned into ours (a vanished domain is
    NotFound: another client may remove it at any moment)."""

    @functools.wraps(method)
    def wrapper(self: LibvirtDriver, *args: Any, **kwargs: Any) -> T:
        import libvirt

        try:
            return method(self, *args, **kwargs)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"no such instance ({err.get_error_message()})") from err
            raise BackendError(f"libvirt: {err.get_error_message()}") from err

    return wrapper


class LibvirtDriver(Driver):
    """Run images as libvirt domains (``-p libvirt``; URI from ``libvirt_uri``)."""

    name = "libvirt"
    capabilities = frozenset({Capability.CONSOLE, Capability.LOGS, Capability.PORT_FORWARD,
                              Capability.VOLUMES, Capability.DETACH, Capability.GRACEFUL_STOP,
                              Capability.REMOTE})
    settings = (
        Setting("libvirt_uri", default="qemu:///system",
                help="connection URI, e.g. qemu:///system or qemu+ssh://root@host/system"),
        Setting("libvirt_pool", help="storage pool for instance disks (empty: a local file)"),
        Setting("libvirt_network", help="network:NAME or bridge:NAME (empty: user mode)"),
        QEMU_ACCEL,
    )

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        fix = install_command("apt-get install libvirt-daemon-system python3-libvirt",
                              "dnf install libvirt-daemon-kvm python3-libvirt",
                              "brew install libvirt")
        if not has_module("libvirt"):
            return [Finding("libvirt", Status.MISSING, "libvirt-python is not installed",
                            f"{fix}, or pip install libvirt-python")]
        sockets = ("/run/libvirt/libvirt-sock", "/var/run/libvirt/libvirt-sock")
        if not any(Path(s).exists() for s in sockets):
            return [Finding("libvirt", Status.WARN, "libvirt-python found but libvirtd is not "
                            "running (no /run/libvirt/libvirt-sock)",
                            "sudo systemctl start libvirtd")]
        return [Finding("libvirt", Status.OK, "libvirt-python and libvirtd found")]

    def __init__(self, config: Config, disks: DiskPreparer | None = None) -> None:
        super().__init__(config, disks)
        self.uri = self.setting("libvirt_uri")
        self.pool = self.setting("libvirt_pool")
        self.network = self.setting("libvirt_network")
        self._conn: Any = None

    # -- connection ---------------------------------------------------------

    @property
    def remote(self) -> bool:
        """Whether the URI names another host (then disks go through a pool)."""
        return bool(urlparse(self.uri).hostname)

    @property
    def conn(self) -> Any:
        """The libvirt connection, opened on first use."""
        if self._conn is None:
            import libvirt

            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as err:
                raise BackendError(f"cannot connect to libvirt at {self.uri}: "
                                   f"{err.get_error_message()} (is libvirtd running? "
                                   "see 'capstan doctor')") from err
        return self._conn

    def _domain(self, name: str) -> Any:
        import libvirt

        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"no such instance: {name} (at {self.uri})") from err
            raise BackendError(f"libvirt: {err.get_error_message()}") from err
        if metadata(dom) is None:
            raise NotFound(f"domain {name} at {self.uri} was not made by pycapstan")
        return dom

    def _home(self, name: str) -> Path:
        return self.config.instances / "libvirt" / name

    # -- creation -----------------------------------------------------------

    def domain_type(self) -> str:
        """``kvm`` when the host offers it and it is wanted, else ``qemu`` (TCG)."""
        wanted = self.config.qemu_accel
        if wanted == "tcg" or self.config.disable_kvm:
            return "qemu"
        caps = ET.fromstring(call("capabilities", self.conn.getCapabilities))
        kvm = caps.find("./guest/arch[@name='x86_64']/domain[@type='kvm']") is not None
        if not kvm and wanted == "kvm":
            raise BackendError(f"KVM is not available at {self.uri}")
        if not kvm:
            LOG.warning("KVM is not available at %s: domains run under TCG", self.uri)
        return "kvm" if kvm else "qemu"

    @_translated
    def create(self, spec: InstanceSpec) -> Instance:
        import libvirt

        if not spec.image.is_file():
            raise NotFound(f"no such image: {spec.image}")
        if spec.networking not in ("nat", "none") or spec.private_network:
            raise UsageError("the libvirt driver takes its network from libvirt_network "
                             "(network:NAME or bridge:NAME); -n is for the qemu driver")
        if self.network and spec.forwards:
            raise UsageError("port forwards need user networking: unset libvirt_network")
        if self.remote and spec.volumes:
            raise UsageError("volumes are host files: they cannot be used with a remote URI")
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.lookupByName(spec.name)
            raise Conflict(f"a domain named {spec.name} already exists at {self.uri}")
        home = self._home(spec.name)
        if home.exists():
            raise Conflict(f"{home} exists: delete instance {spec.name} first")
        home.mkdir(parents=True)
        undo: list[Callable[[], None]] = [lambda: shutil.rmtree(home, ignore_errors=True)]
        held = contextlib.ExitStack()  # a pooled disk's base, locked until defined
        try:
            forwards = tuple(f.allocate() for f in spec.forwards)
            spec, nic = libvirt_net.reserve_for(self.conn, self.network, spec)
            undo.append(lambda: libvirt_net.release_for(self.conn, spec.name, nic))
            digest, disk = self._disk(spec, home, undo, held)
            meta = {"image": str(spec.image.absolute()), "digest": digest,
                    "created": timestamps.now(),
                    "ports": " ".join(map(str, forwards)), **nic, **disk}
            log = remote_log_file(self.uri, spec.name) if self.remote else str(home / "console.log")
            xml = domain_xml(spec, DomainHost(
                domain_type=self.domain_type(), disk=disk, console_log=log,
                network=self.network, meta=meta, forwards=forwards))
            dom = call(f"define {spec.name}", self.conn.defineXML, xml)
        except BaseException:
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            raise
        finally:
            held.close()
        return self._instance(dom)

    def _disk(self, spec: InstanceSpec, home: Path, undo: list[Callable[[], None]],
              held: contextlib.ExitStack) -> tuple[str, dict[str, str]]:
        """The image's digest, and the domain's disk: an overlay in *home*, or an
        overlay volume on the image's base volume in the storage pool."""
        if not self.pool:
            if self.remote:
                raise ConfigError(f"a remote URI ({self.uri}) needs a storage pool: set "
                                  "libvirt_pool (e.g. CAPSTAN_LIBVIRT_POOL=default)")
            overlay = self.disks.prepare(spec, home / "disk.qcow2")
            _make_reachable(home, self.config.root)
            return overlay.digest, {"file": str(overlay.path)}
        pool = Pool(self.conn, self.uri, self.pool, self.disks)
        return pool.instance_disk(spec, home, undo, held)

    # -- lifecycle ----------------------------------------------------------

    @_translated
    def start(self, name: str) -> Instance:
        dom = self._domain(name)
        if dom.isActive():
            raise Conflict(f"instance {name} is already running")
        call(f"start {name}", dom.create)
        return self._instance(dom)

    @_translated
    def stop(self, name: str, timeout: float = 30) -> Instance:
        import libvirt

        dom = self._domain(name)
        if not dom.isActive():
            return self._instance(dom)
        with contextlib.suppress(libvirt.libvirtError):
            dom.shutdown()  # the ACPI power button
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not dom.isActive():
                return self._instance(dom)
            time.sleep(0.1)
        LOG.warning("instance %s ignored the ACPI power button: destroying it", name)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        if dom.isActive():
            raise BackendError(f"could not stop instance {name}")
        return self._instance(dom)

    @_translated
    def delete(self, name: str) -> None:
        import libvirt

        self.stop(name)
        dom = self._domain(name)
        meta = metadata(dom) or {}
        call(f"undefine {name}", dom.undefineFlags,
                   libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        libvirt_net.release_for(self.conn, name, meta)
        if meta.get("pool"):
            Pool(self.conn, self.uri, meta["pool"]).discard(name, meta.get("base", ""))
        shutil.rmtree(self._home(name), ignore_errors=True)
        remove_remote_log(self.uri, name)

    # -- queries ------------------------------------------------------------

    def _instance(self, dom: Any) -> Instance:
        import libvirt

        meta = metadata(dom) or {}
        raw_state = call("state", dom.state)[0]
        state = {libvirt.VIR_DOMAIN_RUNNING: InstanceState.RUNNING,
                 libvirt.VIR_DOMAIN_BLOCKED: InstanceState.RUNNING,
                 libvirt.VIR_DOMAIN_PAUSED: InstanceState.PAUSED,
                 libvirt.VIR_DOMAIN_PMSUSPENDED: InstanceState.PAUSED,
                 libvirt.VIR_DOMAIN_SHUTDOWN: InstanceState.STOPPING,
                 libvirt.VIR_DOMAIN_SHUTOFF: InstanceState.STOPPED,
                 libvirt.VIR_DOMAIN_CRASHED: InstanceState.CRASHED}.get(
                     raw_state, InstanceState.UNKNOWN)
        pid = None
        if state.live and not self.remote:
            pid = _qemu_pid(dom.name())
        return Instance(name=dom.name(), driver=self.name, state=state,
                        image=meta.get("image", ""), pid=pid,
                        ports=tuple(p for p in meta.get("ports", "").split(" ") if p),
                        image_digest=meta.get("digest", ""), created=meta.get("created", ""),
                        extra={"uri": self.uri, "uuid": dom.UUIDString(),
                               **libvirt_net.reported(dom, meta)})

    @_translated
    def get(self, name: str) -> Instance:
        return self._instance(self._domain(name))

    @_translated
    def list(self) -> Iterator[Instance]:
        found = []
        for dom in call("list domains", self.conn.listAllDomains, 0):
            with contextlib.suppress(NotFound):  # removed while we looked
                if metadata(dom) is not None:
                    found.append(self._instance(dom))
        return iter(found)

    def free_memory_mib(self) -> int | None:
        """The host's free memory as libvirt reports it."""
        return int(call("free memory", self.conn.getFreeMemory)) >> 20

    @_translated
    def open_log(self, name: str) -> LogReader:
        log = open_console(self.uri, self._home(name) / "console.log", name, remote=self.remote)
        self._domain(name)
        return log

    @_translated
    def console(self, name: str, stdin: int, stdout: BinaryIO, escape: bytes | None) -> None:
        import libvirt

        dom = self._domain(name)
        if not dom.isActive():
            raise Conflict(f"instance {name} is not running")
        stream = self.conn.newStream(0)
        call(f"console of {name}", dom.openConsole, None, stream,
                   libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        relay(stream, stdin, stdout, escape, functools.partial(send, stream))


def _qemu_pid(name: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _make_reachable(directory: Path, root: Path) -> None:
    """Let libvirt's QEMU (user libvirt-qemu) reach files in *directory*.

    Directories up to *root* are ours: they get the search bit. Above it
    nothing is changed; a directory QEMU cannot pass stops us with the fix.
    """
    for d in [directory, *directory.parents]:
        mode = d.stat().st_mode
        if mode & stat.S_IXOTH:
            continue
        if d == root or root in d.parents:
            os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)
            continue
        raise BackendError(f"libvirt's QEMU cannot reach {directory}: run chmod o+x {d}, or "
                           "set libvirt_pool to upload disks into a storage pool")
