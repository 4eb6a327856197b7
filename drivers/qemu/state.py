"""What a QEMU instance keeps on disk: ``instance.json`` (:class:`State`), its
``qemu.pid``, ``osv.config`` (Capstan's view of it) and where its sockets go."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from capstan.core import fs
from capstan.drivers.base import InstanceSpec, PortForward

__all__ = ["State", "pidfile", "run_dir", "write_osv_config"]

_SOCKET_MAX = 100


@dataclass
class State:
    """``instance.json``: what we need to find, reconcile and stop an instance."""

    name: str
    image: str
    image_digest: str
    disk: str
    argv: list[str]
    qmp: str
    console: str
    console_log: str
    qemu_log: str
    ports: list[str] = field(default_factory=list)
    pid: int | None = None
    created: str = ""
    accel: str = ""
    creator: str = ""  # fs.process_token() of the run that created it
    volumes: list[list[str]] = field(default_factory=list)  # [path, probed format]
    forwards: list[PortForward] = field(default_factory=list, repr=False)
    damaged: bool = field(default=False, repr=False)  # rebuilt from what survives


def pidfile(d: Path) -> int | None:
    """The PID in ``qemu.pid`` of instance directory *d*, if any."""
    try:
        return int((d / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def run_dir(d: Path) -> Path:
    """Where the sockets of instance directory *d* go: *d*, or a short directory
    (under ``$XDG_RUNTIME_DIR`` when that is short enough, else ``/tmp/capstan-UID``)
    when *d* is too long for a unix socket path."""
    if len(str(d / "console.sock")) < _SOCKET_MAX:
        return d
    name = hashlib.sha1(str(d).encode()).hexdigest()[:16]  # made by the driver's launch
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and len(str(Path(runtime) / name / "console.sock")) < _SOCKET_MAX:
        return Path(runtime) / name
    return Path(f"/tmp/capstan-{os.getuid()}") / name


def write_osv_config(spec: InstanceSpec, state: State, *, folder: Path, aio: str) -> None:
    """Write ``osv.config`` (Capstan's view of the instance) into *folder*."""
    d = Path(state.console_log).parent
    rules = [{"hostport": str(f.host_port), "guestport": str(f.guest_port)}
             for f in state.forwards]
    capstan_view = {
        "name": spec.name, "verbose": False, "cmd": spec.cmdline or "",
        "disablekvm": state.accel != "kvm", "persist": True, "instancedir": str(d),
        "monitor": state.qmp, "configfile": str(d / "osv.config"),
        "aiotype": aio, "image": state.disk, "backingfile": True,
        "volumes": [str(v.path) for v in spec.volumes], "memory": spec.memory_mib,
        "cpus": spec.cpus, "networking": spec.networking, "bridge": spec.bridge or "",
        "natrules": rules, "mac": spec.mac or "", "vncfile": "", "kernelmode": False,
        "kernelpath": "",
    }
    # JSON is YAML (a subset that Capstan's parser reads): no YAML emitter to load
    fs.atomic_write(folder / "osv.config",
                    (json.dumps(capstan_view, indent=2) + "\n").encode(), 0o600)

