"""Host ports of QEMU's user-mode forwards: free now, and not recorded by another instance."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from capstan.core.errors import Conflict
from capstan.drivers.base import PortForward, free_port

__all__ = ["allocate", "reserved"]

_TRIES = 64


def reserved(home: Path) -> set[tuple[str, int, str]]:
    """(addr, port, proto) of every forward recorded by an instance under *home*."""
    taken = set()
    for state_file in home.glob("*/instance.json"):  # staged ones included
        with contextlib.suppress(OSError, ValueError, KeyError):
            for port in json.loads(state_file.read_text())["ports"]:
                addr_port, rest = port.split("->")
                addr, host = addr_port.rsplit(":", 1)
                taken.add((addr, int(host), rest.rsplit("/", 1)[1]))
    return taken


def allocate(fwd: PortForward, home: Path) -> PortForward:
    """*fwd* with a host port free now (bind() fails for any holder) and not recorded by
    another instance under *home*, which may be about to start."""
    taken = reserved(home)
    if (fwd.host_addr, fwd.host_port, fwd.protocol) in taken:
        raise Conflict(f"cannot forward {fwd.host_addr}:{fwd.host_port}/{fwd.protocol}: "
                       "another instance uses it")
    for _ in range(_TRIES):
        port = free_port(fwd.host_addr, fwd.protocol, fwd.host_port)
        if (fwd.host_addr, port, fwd.protocol) not in taken:
            return PortForward(port, fwd.guest_port, fwd.protocol, fwd.host_addr)
    raise Conflict(f"no free {fwd.protocol} port on {fwd.host_addr}")
