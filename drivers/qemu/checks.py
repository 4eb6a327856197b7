"""The QEMU driver's settings and its ``capstan doctor`` checks (QEMU itself, its
accelerators, the bridge helper); imported without QEMU's process code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capstan.core import proc
from capstan.core.checks import Finding, Status, install_command, version_of
from capstan.core.config import Config, Setting
from capstan.core.errors import CapstanError
from capstan.drivers.qemu.accel import QEMU_ACCEL

__all__ = ["SETTINGS", "Tools", "doctor"]

SETTINGS: tuple[Setting, ...] = (
    Setting("qemu_aio_type", default="threads", choices=("threads", "native"),
            help="QEMU asynchronous I/O (Capstan's key)"),
    Setting("qemu_path", help="QEMU binary (empty: search PATH and Capstan's usual places)"),
    QEMU_ACCEL,
)
_QEMU_TIMEOUT = 10  # seconds for ``qemu -accel help``


@dataclass(frozen=True)
class Tools:
    """How the driver finds its programs (each raises a CapstanError if it cannot)."""

    qemu: Callable[[], str]
    bridge_helper: Callable[[], str]


def _qemu(tools: Tools) -> Finding:
    fix = install_command("apt-get install qemu-system-x86", "dnf install qemu-kvm",
                          "brew install qemu")
    try:
        binary = tools.qemu()
        return Finding("qemu", Status.OK, f"{binary} {version_of([binary, '-version'])}")
    except CapstanError as err:
        return Finding("qemu", Status.FAIL, str(err), fix)


def _accelerators(config: Config, tools: Tools) -> Finding:
    try:
        binary = tools.qemu()
        out = proc.run([binary, "-accel", "help"], timeout=_QEMU_TIMEOUT).stdout.decode()
    except CapstanError as err:
        return Finding("accelerators", Status.FAIL, str(err), "install QEMU (see 'qemu')")
    found = [line.strip() for line in out.splitlines()[1:] if line.strip()]
    wanted = config.qemu_accel
    if wanted != "auto" and wanted not in found:
        return Finding("accelerators", Status.FAIL,
                       f"qemu_accel is '{wanted}' but this QEMU has {', '.join(found)}",
                       "set qemu_accel to auto in config.yaml or CAPSTAN_QEMU_ACCEL")
    return Finding("accelerators", Status.OK, f"{', '.join(found)} (qemu_accel: {wanted})")


def _bridge(tools: Tools) -> Finding:
    try:
        helper = tools.bridge_helper()
    except CapstanError as err:
        return Finding("bridge", Status.MISSING, str(err), "only needed for -n bridge")
    if not Path("/etc/qemu/bridge.conf").exists():
        return Finding("bridge", Status.WARN, f"{helper} found but /etc/qemu/bridge.conf is "
                       "missing, so no bridge is allowed",
                       "echo 'allow virbr0' | sudo tee -a /etc/qemu/bridge.conf")
    return Finding("bridge", Status.OK, helper)


def doctor(config: Config, tools: Tools) -> Sequence[Finding]:
    """QEMU, its accelerators and the bridge helper (*config* holds the QEMU settings)."""
    return [_qemu(tools), _accelerators(config, tools), _bridge(tools)]
