"""What a QEMU instance needs of the host, checked before QEMU runs: the bridge helper,
bridge and tap devices, and volumes (``O_DIRECT`` where asked for)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from capstan.core.errors import CapstanError, NotFound, ToolMissing
from capstan.drivers.base import InstanceSpec, Volume
from capstan.drivers.qemu.argv import interface

LOG = logging.getLogger(__name__)

__all__ = ["attach_volume", "bridge_helper", "direct_io", "host_interface"]

_BRIDGE_HELPERS = ("/usr/lib/qemu/qemu-bridge-helper", "/usr/libexec/qemu-bridge-helper",
                   "/usr/local/libexec/qemu-bridge-helper")


def bridge_helper() -> str:
    """``qemu-bridge-helper``: ``$CAPSTAN_QEMU_BRIDGE_HELPER`` or QEMU's usual places."""
    env = os.environ.get("CAPSTAN_QEMU_BRIDGE_HELPER")
    for candidate in ([env] if env else _BRIDGE_HELPERS):
        if os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing("no qemu-bridge-helper found: install qemu-system-x86 or set "
                      "CAPSTAN_QEMU_BRIDGE_HELPER")


def direct_io(path: Path) -> bool:
    """Whether *path* can be opened with O_DIRECT (not on tmpfs, for one)."""
    try:
        os.close(os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0)))
    except OSError:
        return False
    return True


def attach_volume(vol: Volume) -> Volume:
    """*vol* as attached: it exists, and gets Capstan's ``cache=none,aio=native``
    unless it says otherwise, or, without ``O_DIRECT`` here, ``cache=writeback,
    aio=threads``."""
    if vol.format is None:
        raise CapstanError(f"volume {vol.path} reached the qemu driver unprobed")
    if not vol.path.is_file():
        raise NotFound(f"no such volume: {vol.path}")
    vol = replace(vol, path=vol.path.absolute())
    direct = direct_io(vol.path)
    if not direct and (vol.cache in ("none", "directsync") or vol.aio == "native"):
        LOG.warning("volume %s cannot use O_DIRECT here: using cache=writeback, "
                    "aio=threads", vol.path)
    return vol.resolved(direct)


def host_interface(spec: InstanceSpec) -> Path | None:
    """Check that *spec*'s bridge or tap device exists; the bridge helper's path
    (bridge networking). Forwards here are refused by :func:`argv`."""
    if spec.forwards:
        return None
    if spec.networking == "bridge":
        bridge = interface(spec.bridge or "virbr0")
        if not Path(f"/sys/class/net/{bridge}/bridge").is_dir():
            raise NotFound(f"no bridge '{bridge}': create it (ip link add {bridge} type "
                           "bridge) or name one with -b")
        return Path(bridge_helper()).absolute()
    if spec.networking == "tap" and spec.bridge:
        tap = interface(spec.bridge)
        if not Path(f"/sys/class/net/{tap}/tun_flags").is_file():
            raise NotFound(f"no tap device '{tap}': create it with "
                           f"ip tuntap add dev {tap} mode tap user $USER")
    return None

