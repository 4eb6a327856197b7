"""``capstan doctor``: what this host can run, and the exact fix for what it cannot: the
host's own checks here, each driver's in its ``doctor()`` (QEMU's: drivers/qemu/checks.py)."""

from __future__ import annotations

import fcntl
import os
import platform
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from capstan.core import proc
from capstan.core.checks import Finding, Status, install_command, version_of
from capstan.core.config import Config
from capstan.core.errors import CapstanError

__all__ = ["Finding", "Status", "diagnose", "settings"]

_KVM_GET_API_VERSION = 0xAE00


def _root(config: Config) -> Finding:
    root = config.root
    probe = root if root.exists() else next(p for p in root.parents if p.exists())
    if os.access(probe, os.W_OK | os.X_OK):
        return Finding("root", Status.OK, f"{root} is writable")
    return Finding("root", Status.FAIL, f"{root} is not writable",
                   f"sudo chown -R $USER {root}, or set CAPSTAN_ROOT to a writable directory")


def _qemu_img(config: Config) -> Finding:
    fix = install_command("apt-get install qemu-utils", "dnf install qemu-img", "brew install qemu")
    try:
        return Finding("qemu-img", Status.OK, f"qemu-img {version_of(['qemu-img', '--version'])}")
    except CapstanError as err:
        return Finding("qemu-img", Status.FAIL, str(err), fix)


def _kvm(config: Config) -> Finding:
    if platform.system() != "Linux":
        return Finding("kvm", Status.MISSING, "KVM exists only on Linux (hvf is used on macOS)")
    dev = Path("/dev/kvm")
    if not dev.exists():
        cpu = "kvm_amd" if "AuthenticAMD" in _cpuinfo() else "kvm_intel"
        return Finding("kvm", Status.WARN, "/dev/kvm does not exist: guests run under slow TCG",
                       f"enable virtualisation (VT-x/AMD-V) in the firmware, then "
                       f"sudo modprobe {cpu}")
    if not os.access(dev, os.R_OK | os.W_OK):
        return Finding("kvm", Status.WARN, "/dev/kvm is not readable and writable by you",
                       "sudo usermod -aG kvm $USER, then log in again")
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
        try:
            api = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
        finally:
            os.close(fd)
    except OSError as err:
        return Finding("kvm", Status.WARN, f"/dev/kvm does not answer: {err.strerror}",
                       "check dmesg for KVM errors; CAPSTAN_QEMU_ACCEL=tcg works meanwhile")
    detail = f"/dev/kvm usable (API version {api})"
    if config.disable_kvm:
        return Finding("kvm", Status.WARN, detail + " but disable_kvm is set",
                       "set disable_kvm: false in config.yaml")
    return Finding("kvm", Status.OK, detail)


def _kvm_runs(config: Config) -> Finding:
    """Whether QEMU runs under KVM here (probed afresh; the verdict ``auto`` uses)."""
    from capstan.drivers.qemu import QemuDriver, kvm_verdict

    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Finding("kvm-run", Status.MISSING, "no usable /dev/kvm (see 'kvm')")
    try:
        verdict = kvm_verdict(config.root, QemuDriver(config).qemu_binary(), refresh=True)
    except CapstanError as err:
        return Finding("kvm-run", Status.MISSING, str(err), "install QEMU (see 'qemu')")
    if verdict.usable:
        return Finding("kvm-run", Status.OK, "QEMU runs a -cpu host guest under KVM")
    effect = ("qemu_accel auto runs guests under TCG (slow)" if config.qemu_accel == "auto"
              else f"qemu_accel {config.qemu_accel}")
    return Finding("kvm-run", Status.WARN,
                   f"/dev/kvm opens but QEMU aborts under KVM ({verdict.reason}), as on nested "
                   f"virtualisation whose outer hypervisor refuses an MSR; {effect}",
                   "enable nested virtualisation fully on the outer host (or pass its CPU "
                   "through), try capstan run --cpu host,-arch-capabilities with qemu_accel "
                   "kvm, or set qemu_accel: tcg")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _nested(config: Config) -> Finding:
    flags = re.search(r"^flags\s*:(.*)$", _cpuinfo(), re.MULTILINE)
    if flags and " hypervisor" in flags.group(1):
        return Finding("nested", Status.WARN,
                       "this host is itself a VM: KVM guests are nested and may be slow, and "
                       "-cpu host can abort QEMU",
                       "if KVM guests misbehave: capstan run --cpu max, or CAPSTAN_QEMU_ACCEL=tcg")
    for module in ("kvm_intel", "kvm_amd"):
        param = Path(f"/sys/module/{module}/parameters/nested")
        if param.exists():
            on = param.read_text().strip() in ("Y", "1")
            return Finding("nested", Status.OK,
                           f"bare metal; nested virtualisation {'on' if on else 'off'} "
                           f"({module})")
    return Finding("nested", Status.OK, "bare metal")


def _microvm(config: Config) -> Finding:
    """Which direct-kernel microVM targets run here: QEMU's microvm machine (under any
    accelerator), Firecracker and Cloud Hypervisor (KVM only)."""
    import shutil

    from capstan.drivers.qemu import QemuDriver

    try:
        binary = QemuDriver(config).qemu_binary()
        machines = proc.run([binary, "-machine", "help"], timeout=10).stdout.decode()
        qemu = "yes" if re.search(r"^microvm\b", machines, re.MULTILINE) else \
            "no (this QEMU lacks the microvm machine)"
    except CapstanError:
        qemu = "no (no QEMU)"
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    found = {"qemu --machine microvm": qemu}
    for driver, program in (("-p firecracker", "firecracker"),
                            ("-p cloud-hypervisor", "cloud-hypervisor")):
        found[driver] = ("no (not installed)" if shutil.which(program) is None
                         else "yes" if kvm else "no (needs /dev/kvm)")
    detail = "; ".join(f"{target}: {verdict}" for target, verdict in found.items())
    if any(verdict == "yes" for verdict in found.values()):
        return Finding("microvm", Status.OK, detail)
    return Finding("microvm", Status.MISSING, detail,
                   "install QEMU 4.2 or later (microvm), Firecracker or Cloud Hypervisor")


_CHECKS: tuple[Callable[[Config], Finding], ...] = (_root, _qemu_img, _kvm, _nested, _kvm_runs,
                                                     _microvm)


def diagnose(config: Config) -> list[Finding]:
    """Run the host's checks, then each installed driver's (concurrently); findings in a
    fixed order."""
    from capstan.drivers.base import driver_classes

    drivers = driver_classes()
    full = config.with_settings([s for cls in drivers for s in cls.settings], complete=True)

    def host(check: Callable[[Config], Finding]) -> Sequence[Finding]:
        return [check(full)]

    jobs = [*(partial(host, c) for c in _CHECKS), *(partial(d.doctor, full) for d in drivers)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return [f for found in pool.map(lambda job: job(), jobs) for f in found]


def settings(config: Config) -> list[tuple[str, Any, str]]:
    """(key, value, source) of every setting, Capstan's and each installed driver's;
    a secret's value shows as ``***``."""
    from capstan.drivers.base import driver_classes

    extra = [s for cls in driver_classes() for s in cls.settings]
    full = config.with_settings(extra, complete=True)
    rows: list[tuple[str, Any, str]] = [("root", str(full.root), full.sources["root"])]
    for key, setting in full.settings.items():
        value = full.values[key]
        rows.append((key, "***" if setting.secret and value else value, full.sources[key]))
    return rows
