"""``capstan doctor``: what this host can run, and the exact fix for what it cannot."""

from __future__ import annotations

import enum
import fcntl
import importlib.util
import os
import platform
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from capstan.core import proc
from capstan.core.config import Config
from capstan.core.errors import CapstanError

__all__ = ["Finding", "Status", "diagnose"]

_KVM_GET_API_VERSION = 0xAE00
_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


class Status(enum.Enum):
    """How one check came out."""

    OK = "ok"
    WARN = "warn"  # works, but not as well as it could
    MISSING = "missing"  # an optional backend is not installed
    FAIL = "fail"  # capstan cannot run guests until this is fixed


@dataclass(frozen=True)
class Finding:
    """The result of one check."""

    check: str
    status: Status
    detail: str
    fix: str = ""


def _install(debian: str, fedora: str, mac: str) -> str:
    """The install command for this platform."""
    if platform.system() == "Darwin":
        return mac
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        release = ""
    redhat = re.search(r"^ID(_LIKE)?=.*(fedora|rhel|centos)", release, re.MULTILINE)
    return fedora if redhat else debian


def _version(argv: list[str]) -> str:
    out = proc.run(argv, timeout=10)
    text = (out.stdout or out.stderr).decode(errors="replace")
    match = _VERSION.search(text)
    return match.group(1) if match else text.strip().splitlines()[0]


def _root(config: Config) -> Finding:
    root = config.root
    probe = root if root.exists() else next(p for p in root.parents if p.exists())
    if os.access(probe, os.W_OK | os.X_OK):
        return Finding("root", Status.OK, f"{root} is writable")
    return Finding("root", Status.FAIL, f"{root} is not writable",
                   f"sudo chown -R $USER {root}, or set CAPSTAN_ROOT to a writable directory")


def _qemu(config: Config) -> Finding:
    from capstan.drivers.qemu import QemuDriver

    fix = _install("apt-get install qemu-system-x86", "dnf install qemu-kvm", "brew install qemu")
    try:
        binary = QemuDriver(config).qemu_binary()
        return Finding("qemu", Status.OK, f"{binary} {_version([binary, '-version'])}")
    except CapstanError as err:
        return Finding("qemu", Status.FAIL, str(err), fix)


def _qemu_img(config: Config) -> Finding:
    fix = _install("apt-get install qemu-utils", "dnf install qemu-img", "brew install qemu")
    try:
        return Finding("qemu-img", Status.OK, f"qemu-img {_version(['qemu-img', '--version'])}")
    except CapstanError as err:
        return Finding("qemu-img", Status.FAIL, str(err), fix)


def _accelerators(config: Config) -> Finding:
    from capstan.drivers.qemu import QemuDriver

    try:
        binary = QemuDriver(config).qemu_binary()
        out = proc.run([binary, "-accel", "help"], timeout=10).stdout.decode()
    except CapstanError as err:
        return Finding("accelerators", Status.FAIL, str(err), "install QEMU (see 'qemu')")
    found = [line.strip() for line in out.splitlines()[1:] if line.strip()]
    wanted = config.qemu_accel
    if wanted != "auto" and wanted not in found:
        return Finding("accelerators", Status.FAIL,
                       f"qemu_accel is '{wanted}' but this QEMU has {', '.join(found)}",
                       "set qemu_accel to auto in config.yaml or CAPSTAN_QEMU_ACCEL")
    return Finding("accelerators", Status.OK, f"{', '.join(found)} (qemu_accel: {wanted})")


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


def _bridge(config: Config) -> Finding:
    from capstan.drivers.qemu import bridge_helper

    try:
        helper = bridge_helper()
    except CapstanError as err:
        return Finding("bridge", Status.MISSING, str(err), "only needed for -n bridge")
    if not Path("/etc/qemu/bridge.conf").exists():
        return Finding("bridge", Status.WARN, f"{helper} found but /etc/qemu/bridge.conf is "
                       "missing, so no bridge is allowed",
                       "echo 'allow virbr0' | sudo tee -a /etc/qemu/bridge.conf")
    return Finding("bridge", Status.OK, helper)


def _libvirt(config: Config) -> Finding:
    fix = _install("apt-get install libvirt-daemon-system python3-libvirt",
                   "dnf install libvirt-daemon-kvm python3-libvirt", "brew install libvirt")
    if importlib.util.find_spec("libvirt") is None:
        return Finding("libvirt", Status.MISSING, "libvirt-python is not installed",
                       f"{fix}, or pip install libvirt-python")
    sockets = ("/run/libvirt/libvirt-sock", "/var/run/libvirt/libvirt-sock")
    if not any(Path(s).exists() for s in sockets):
        return Finding("libvirt", Status.WARN, "libvirt-python found but libvirtd is not "
                       "running (no /run/libvirt/libvirt-sock)", "sudo systemctl start libvirtd")
    return Finding("libvirt", Status.OK, "libvirt-python and libvirtd found")


def _tool(check: str, program: str, argv: list[str] | None,
          fix: str) -> Callable[[Config], Finding]:
    """A check that *program* is on PATH and (with *argv*) prints its version."""

    def probe(config: Config) -> Finding:
        path = shutil.which(program)
        if path is None:
            return Finding(check, Status.MISSING, f"{program} not found on PATH", fix)
        if argv is None:
            return Finding(check, Status.OK, path)
        try:
            return Finding(check, Status.OK, f"{path} {_version([path, *argv])}")
        except CapstanError as err:
            return Finding(check, Status.WARN, f"{path} does not run: {err}", fix)

    return probe


def _aws(config: Config) -> Finding:
    if importlib.util.find_spec("boto3") is None:
        return Finding("aws", Status.MISSING, "boto3 is not installed",
                       "pip install 'pycapstan[aws]'")
    home = Path.home() / ".aws"
    sources = [name for name, present in (
        ("environment", "AWS_ACCESS_KEY_ID" in os.environ),
        ("profile " + os.environ.get("AWS_PROFILE", ""), "AWS_PROFILE" in os.environ),
        (str(home / "credentials"), (home / "credentials").is_file()),
        (str(home / "config"), (home / "config").is_file()),
    ) if present]
    if not sources:
        return Finding("aws", Status.WARN, "boto3 found, no AWS credentials configured",
                       "aws configure, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    return Finding("aws", Status.OK, "credentials from " + ", ".join(sources))


def _vsphere(config: Config) -> Finding:
    if importlib.util.find_spec("pyVmomi") is None:
        return Finding("vsphere", Status.MISSING, "pyvmomi is not installed",
                       "pip install 'pycapstan[vsphere]'")
    if not config.values.get("vsphere_url"):
        return Finding("vsphere", Status.MISSING, "pyvmomi found, no vsphere_url configured",
                       "set vsphere_url, vsphere_user and CAPSTAN_VSPHERE_PASSWORD")
    if not (config.values.get("vsphere_password") or config.values.get("vsphere_user")):
        return Finding("vsphere", Status.WARN, f"{config.vsphere_url}: no credentials",
                       "set vsphere_user and CAPSTAN_VSPHERE_PASSWORD")
    return Finding("vsphere", Status.OK, f"{config.vsphere_url} as {config.vsphere_user}")


_CHECKS: tuple[Callable[[Config], Finding], ...] = (
    _root, _qemu, _qemu_img, _accelerators, _kvm, _nested, _bridge, _libvirt,
    _tool("virtualbox", "VBoxManage", ["--version"], "install VirtualBox from virtualbox.org"),
    _tool("vmware", "vmrun", None,
          "install VMware Workstation (Linux, Windows) or Fusion (macOS)"),
    _aws, _vsphere,
)


def diagnose(config: Config) -> list[Finding]:
    """Run every check (concurrently); findings in a fixed order."""
    with ThreadPoolExecutor(max_workers=len(_CHECKS)) as pool:
        return list(pool.map(lambda check: check(config), _CHECKS))
