"""Whether QEMU actually runs under KVM here, probed once per host and QEMU version.

``/dev/kvm`` can open while every QEMU aborts under it: on nested virtualisation the
outer hypervisor refuses an MSR (``failed to set MSR 0x10a``, then QEMU's
``kvm_buf_set_msrs`` assertion), so the guest dies at once (Capstan's CS#185). The
probe starts this QEMU paused with KVM and ``-cpu host`` and asks it to quit over QMP
on stdin: exit status 0 means KVM works. The verdict is cached in
``<root>/cache/kvm.json`` under the host name, kernel release, QEMU path, QEMU
version and CPU model, so ``auto`` pays for the probe once.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from capstan.core import fs, proc
from capstan.core.errors import CapstanError, CommandFailed

__all__ = ["KvmVerdict", "kvm_verdict", "probe_argv"]

_TIMEOUT = 30  # seconds; a paused QEMU answers QMP in well under one
_QUIT = b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
_HINTS = ("failed to set MSR", "kvm_buf_set_msrs", "KVM", "kvm")


@dataclass(frozen=True)
class KvmVerdict:
    """Whether KVM works for one QEMU on this host, and QEMU's reason when not."""

    usable: bool
    reason: str = ""
    cached: bool = False


def probe_argv(qemu: str, cpu: str = "host") -> list[str]:
    """A paused KVM guest with CPU model *cpu* that quits when QMP on stdin says so."""
    return [qemu, "-machine", "pc", "-accel", "kvm", "-cpu", cpu, "-m", "16",
            "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio"]


def _key(qemu: str, cpu: str) -> str:
    """Host, QEMU and CPU model the verdict holds for."""
    try:
        version = proc.run([qemu, "-version"], timeout=_TIMEOUT).stdout.decode(
            errors="replace").splitlines()[0]
    except (CapstanError, IndexError):
        version = "unknown version"
    return (f"{platform.node()} {platform.release()} {os.path.realpath(qemu)} {version} "
            f"-cpu {cpu}")


def _reason(err: CommandFailed) -> str:
    """QEMU's own line about the failure (the MSR line when there is one)."""
    lines = [ln.strip() for ln in err.stderr.splitlines() if ln.strip()]
    for hint in _HINTS:
        for line in lines:
            if hint in line:
                return line.removeprefix(f"{os.path.basename(err.argv[0])}: ")
    return str(err)


def _probe(qemu: str, cpu: str) -> KvmVerdict:
    try:
        proc.run(probe_argv(qemu, cpu), input_bytes=_QUIT, timeout=_TIMEOUT)
    except CommandFailed as err:
        return KvmVerdict(False, _reason(err))
    return KvmVerdict(True)


def _load(cache: Path) -> dict[str, dict[str, object]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache.read_text())
        if isinstance(data, dict):
            return data
    return {}


def kvm_verdict(root: Path, qemu: str, *, cpu: str = "host",
                refresh: bool = False) -> KvmVerdict:
    """Whether *qemu* runs a *cpu* guest under KVM here: the cached verdict for this
    host, QEMU version and CPU model, else (or with *refresh*) a probe, then cached."""
    cache = root / "cache" / "kvm.json"
    key = _key(qemu, cpu)
    known = _load(cache)
    entry = known.get(key)
    if isinstance(entry, dict) and not refresh:
        return KvmVerdict(bool(entry.get("usable")), str(entry.get("reason", "")), cached=True)
    verdict = _probe(qemu, cpu)
    known[key] = {"usable": verdict.usable, "reason": verdict.reason}
    with contextlib.suppress(CapstanError, OSError):  # advisory: a read-only root probes again
        cache.parent.mkdir(parents=True, exist_ok=True)
        fs.atomic_write(cache, json.dumps(known, indent=1, sort_keys=True).encode())
    return verdict
