"""Golden files: the exact QEMU argv, libvirt domain XML, OVF descriptor and VMware .vmx
of representative specs (``tests/golden/``).

Each builder is a pure function of its inputs, so a change to any byte shows here as a
diff to review. Regenerate with ``pytest --regen-golden`` (or ``CAPSTAN_REGEN_GOLDEN=1``)
and review ``git diff tests/golden`` like code.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from capstan.drivers.base import InstanceSpec, PortForward, Volume
from capstan.drivers.libvirt_driver import DomainHost, domain_xml
from capstan.drivers.qemu.argv import Host, Paths, argv
from capstan.drivers.vmware import vmx
from capstan.image.ova import Appliance, OvfDisk, descriptor

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ROOT = Path("/var/lib/capstan/instances/qemu")
IMAGE = Path("/var/lib/capstan/repository/app/app.qemu")
MAC = "52:54:00:12:34:56"


def regen(config: pytest.Config) -> bool:
    """Whether golden files are rewritten instead of compared."""
    return bool(config.getoption("--regen-golden", default=False)) or \
        os.environ.get("CAPSTAN_REGEN_GOLDEN") == "1"


def compare(request: pytest.FixtureRequest, name: str, text: str) -> None:
    """*text* must equal ``tests/golden/<name>``; a mismatch shows a unified diff."""
    path = GOLDEN / name
    if regen(request.config):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.is_file():
        pytest.fail(f"{path} is missing: run pytest --regen-golden", pytrace=False)
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), text.splitlines(keepends=True),
            f"golden/{name}", "now"))
        pytest.fail(f"{name} differs from its golden file (regenerate with "
                    f"--regen-golden, then review the diff):\n{diff}", pytrace=False)


def paths(name: str) -> Paths:
    d = ROOT / name
    return Paths(disk=d / "disk.qcow2", console=d / "console.sock",
                 console_log=d / "console.log", qmp=d / "qmp.sock")


QEMU_CASES: dict[str, tuple[InstanceSpec, Host]] = {
    "nat-forwards": (
        InstanceSpec(name="web", image=IMAGE, memory_mib=512, cpus=2, forwards=(
            PortForward(8080, 80), PortForward(5353, 53, "udp", "0.0.0.0"),
            PortForward(4443, 443, "tcp", "::1"))),
        Host(qemu="/usr/bin/qemu-system-x86_64", accel="tcg")),
    "tap": (
        InstanceSpec(name="t1", image=IMAGE, networking="tap", bridge="tap0", mac=MAC),
        Host(qemu="qemu-system-x86_64", accel="kvm")),
    "bridge": (
        InstanceSpec(name="b1", image=IMAGE, networking="bridge", bridge="virbr0", mac=MAC),
        Host(qemu="qemu-system-x86_64", accel="kvm",
             bridge_helper=Path("/usr/lib/qemu/qemu-bridge-helper"))),
    "volumes-with-commas": (
        InstanceSpec(name="v1", image=IMAGE, networking="none", volumes=(
            Volume(Path("/data/x.img,file=/etc/shadow,format=raw"), "raw"),
            Volume(Path("/data/a,b dir/vol.qcow2"), "qcow2", "none", "native"),
            Volume(Path("/data/v.vhdx"), "vhdx", "unsafe", "io_uring"))),
        Host(qemu="qemu-system-x86_64", accel="tcg", aio="native")),
    "private-network": (
        InstanceSpec(name="p1", image=IMAGE, forwards=(PortForward(2222, 22),),
                     private_network="backend", private_mac="02:00:00:00:00:01"),
        Host(qemu="qemu-system-x86_64", accel="tcg")),
    "kvm": (InstanceSpec(name="k1", image=IMAGE, cpus=4, memory_mib=2048),
            Host(qemu="qemu-system-x86_64", accel="kvm")),
    "tcg": (InstanceSpec(name="k1", image=IMAGE, cpus=4, memory_mib=2048),
            Host(qemu="qemu-system-x86_64", accel="tcg")),
    "cpu-model": (InstanceSpec(name="c1", image=IMAGE, cpu_model="Skylake-Server,-hle"),
                  Host(qemu="qemu-system-x86_64", accel="kvm")),
    "microvm": (
        InstanceSpec(name="m1", image=IMAGE, memory_mib=256, cpus=1, machine="microvm",
                     kernel=Path("/var/lib/capstan/kernels/loader, stripped.elf"),
                     cmdline="--nopci --rootfs=rofs runscript /run/default;",
                     forwards=(PortForward(8080, 80),),
                     volumes=(Volume(Path("/data/v.img"), "raw"),),
                     private_network="backend", private_mac="02:00:00:00:00:01"),
        Host(qemu="qemu-system-x86_64", accel="tcg")),
    "microvm-tap": (
        InstanceSpec(name="m2", image=IMAGE, machine="microvm", networking="tap",
                     bridge="tap0", mac=MAC, kernel=Path("/k.elf"), cmdline="--nopci /hello"),
        Host(qemu="qemu-system-x86_64", accel="kvm")),
}


@pytest.mark.parametrize("case", sorted(QEMU_CASES))
def test_qemu_argv(request: pytest.FixtureRequest, case: str) -> None:
    spec, host = QEMU_CASES[case]
    text = json.dumps(argv(spec, paths(spec.name), host), indent=1) + "\n"
    compare(request, f"qemu/{case}.json", text)


def test_libvirt_user_network_with_forwards(request: pytest.FixtureRequest) -> None:
    spec = InstanceSpec(name="web", image=IMAGE, memory_mib=512, cpus=2,
                        forwards=(PortForward(8080, 80), PortForward(5353, 53, "udp")),
                        volumes=(Volume(Path("/data/a,b.qcow2"), "qcow2"),))
    xml = domain_xml(spec, DomainHost(
        domain_type="qemu", disk={"file": "/var/lib/capstan/web.qcow2"},
        console_log="/var/lib/capstan/web.log", network="",
        meta={"image": str(IMAGE), "digest": "0" * 64}, forwards=spec.forwards))
    compare(request, "libvirt/user-forwards.xml", xml + "\n")


def test_libvirt_bridge_pool_cpu_model(request: pytest.FixtureRequest) -> None:
    spec = InstanceSpec(name="b<&>1", image=IMAGE, networking="bridge", mac=MAC,
                        cpu_model="Haswell-noTSX")
    xml = domain_xml(spec, DomainHost(
        domain_type="kvm", disk={"pool": "default", "volume": "b1.qcow2"}, console_log=None,
        network="bridge:virbr0", meta={"image": "app"}))
    compare(request, "libvirt/bridge-pool.xml", xml + "\n")


def test_ovf_descriptor(request: pytest.FixtureRequest) -> None:
    text = descriptor(Appliance("app & <tools>", 1024, 2),
                      OvfDisk("app-disk1.vmdk", 12345678, 10 << 30))
    compare(request, "ova/app.ovf", text.decode())


@pytest.mark.parametrize("networking", ["nat", "bridge"])
def test_vmx(request: pytest.FixtureRequest, networking: str) -> None:
    spec = InstanceSpec(name="vm1", image=IMAGE, memory_mib=768, cpus=3,
                        networking=networking, mac=None if networking == "nat" else MAC)
    text = vmx(spec, Path("/vms/vm1/disk.vmdk"), Path("/vms/vm1/console.log"))
    compare(request, f"vmware/{networking}.vmx", text)


def test_mismatch_shows_a_diff(request: pytest.FixtureRequest,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPSTAN_REGEN_GOLDEN", raising=False)
    monkeypatch.setattr(request.config.option, "regen_golden", False, raising=False)
    spec, host = QEMU_CASES["kvm"]
    text = json.dumps(argv(spec, paths(spec.name), host), indent=1).replace('"2048"', '"4096"')
    with pytest.raises(pytest.fail.Exception) as failed:
        compare(request, "qemu/kvm.json", text + "\n")
    assert '- "2048",\n+ "4096",' in str(failed.value)
