"""The Firecracker and Cloud Hypervisor drivers against recording fakes that check the
generated config (Firecracker's swagger schema) and argv (Cloud Hypervisor's options)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from capstan.core.config import load
from capstan.core.errors import UsageError
from capstan.drivers.base import InstanceSpec, get_driver
from capstan.image.loader import probe_kernel_path

from conftest import wait_for

FAKES = Path(__file__).resolve().parents[1] / "fakes"
pytestmark = pytest.mark.microvm


@pytest.fixture
def vmm_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fakes of firecracker and cloud-hypervisor first on PATH; their calls' log."""
    log = tmp_path / "vmm-calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    monkeypatch.setenv("CAPSTAN_CHILD_ENV", "FAKE_LOG")
    monkeypatch.setenv("CAPSTAN_FIRECRACKER_KERNEL", str(probe_kernel_path()))
    monkeypatch.setenv("CAPSTAN_CLOUD_HYPERVISOR_KERNEL", str(probe_kernel_path()))
    return log


@pytest.fixture
def kernel_less(cli, app_tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "kl.raw"
    assert cli("compose", "--kernel-less", "-o", out, app_tree).code == 0
    return out


def _states(cli, driver: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    rows = cli("instances", "-p", driver, "-f", "value", "-c", "Name", "-c", "Status").out
    return dict(line.split(" ") for line in rows.splitlines())


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_firecracker_boots_from_its_config(cli, vmm_fakes: Path, kernel_less: Path,
                                           capstan_root: Path) -> None:
    done = cli.program("run", "-p", "firecracker", "-i", kernel_less, "--kernel",
                       "probe-kernel", "-m", "64M", "-c", "1", "-e", "/hello x", "fc")
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--nopci --rootfs=rofs /hello x]" in done.stdout
    folder = capstan_root / "instances" / "firecracker" / "fc"
    [call] = _calls(vmm_fakes)
    assert call["argv"] == ["firecracker", "--no-api", "--config-file", str(folder / "vm.json")]
    assert call["config"] == {
        "boot-source": {"kernel_image_path": str(probe_kernel_path()),
                        "boot_args": "--nopci --rootfs=rofs /hello x"},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(folder / "disk.raw"),
                    "is_root_device": True, "is_read_only": False}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": False},
        "logger": {"log_path": str(folder / "vmm.log"), "level": "Warning"}}
    assert (folder / "disk.raw").read_bytes() == kernel_less.read_bytes()
    assert _states(cli, "firecracker") == {"fc": "stopped"}


def test_cloud_hypervisor_boots_from_its_argv(cli, vmm_fakes: Path, kernel_less: Path,
                                              capstan_root: Path) -> None:
    done = cli.program("run", "-p", "cloud-hypervisor", "-i", kernel_less, "--kernel",
                       "probe-kernel", "-m", "128M", "-c", "2", "-n", "tap", "-b", "tap7",
                       "--mac", "52:54:00:12:34:56", "--rm", "ch")
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--rootfs=rofs runscript /run/default;]" in done.stdout
    folder = capstan_root / "instances" / "cloud-hypervisor" / "ch"
    [call] = _calls(vmm_fakes)
    assert call["argv"] == [
        "cloud-hypervisor", "--kernel", str(probe_kernel_path()),
        "--cmdline", "--rootfs=rofs runscript /run/default;",
        "--disk", f"path={folder / 'disk.raw'}", "--cpus", "boot=2", "--memory", "size=128M",
        "--serial", f"file={folder / 'console.log'}", "--console", "off",
        "--net", "tap=tap7,mac=52:54:00:12:34:56"]
    assert not folder.exists()


def test_tap_networking_and_the_default_kernel(cli, vmm_fakes: Path, image: Path) -> None:
    done = cli.program("run", "-p", "firecracker", "-i", image, "-n", "tap", "-b", "tap0",
                       "-c", "2", "fc2")
    assert done.returncode == 0, done.stderr
    [call] = _calls(vmm_fakes)
    [nic] = call["config"]["network-interfaces"]
    assert (nic["iface_id"], nic["host_dev_name"]) == ("eth0", "tap0")
    assert call["config"]["boot-source"]["kernel_image_path"] == str(probe_kernel_path())
    assert call["config"]["machine-config"]["vcpu_count"] == 2


@pytest.mark.parametrize("driver", ["firecracker", "cloud-hypervisor"])
def test_exit_status_and_crash_come_from_the_console(cli, vmm_fakes: Path, kernel_less: Path,
                                                     driver: str) -> None:
    run = ("run", "-p", driver, "-i", kernel_less, "--kernel", "probe-kernel", "--rm")
    assert cli.program(*run, "-e", "/x program exited with status 3", "a").returncode == 3
    assert cli.program(*run, "-e", "/x Aborted", "b").returncode == 134


@pytest.mark.parametrize("driver", ["firecracker", "cloud-hypervisor"])
def test_detached_lifecycle(cli, vmm_fakes: Path, kernel_less: Path, driver: str) -> None:
    assert cli("run", "-p", driver, "-d", "-i", kernel_less, "--kernel", "probe-kernel",
               "-e", "/x @hold", "held").code == 0
    assert cli("instances", "-p", driver, "-f", "value", "-c", "Status").out.split() == [
        "running"]
    wait_for(lambda: "PROBE done" in cli.program("logs", "-p", driver, "held").stdout,
             what="console")
    assert cli("stop", "-p", driver, "held").code == 0
    assert cli("instances", "-p", driver, "-f", "value", "-c", "Status").out.split() == [
        "stopped"]
    assert cli("delete", "-p", driver, "held").code == 0


def test_capstan_test_on_firecracker(cli, vmm_fakes: Path, kernel_less: Path) -> None:
    done = cli("test", "-p", "firecracker", kernel_less, "--kernel", "probe-kernel",
               "--expect", r"cmdline=\[--nopci", "--expect", "PROBE done")
    assert done.code == 0, done


@pytest.mark.parametrize(("args", "code", "text"), [
    (("-p", "firecracker", "-c", "3"), 64, "Firecracker takes 1 or an even number"),
    (("-p", "firecracker", "-n", "bridge"), 64, "-n tap -b TAP"),
    (("-p", "cloud-hypervisor", "-n", "tap", "-b", "bad tap"), 64, "invalid tap device"),
    (("-p", "firecracker", "-f", "8080:80"), 69, "does not support port forwards"),
    (("-p", "cloud-hypervisor", "--volume", "/nonexistent"), 65, ""),
])
def test_refused(cli, vmm_fakes: Path, kernel_less: Path, args: tuple[str, ...], code: int,
                 text: str) -> None:
    done = cli("run", "-d", "-i", kernel_less, "--kernel", "probe-kernel", *args, "bad")
    assert done.code == code and text in done.err, done
    assert "bad" not in _states(cli, args[1])


def test_no_kernel_is_a_usage_error(cli, vmm_fakes: Path, kernel_less: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPSTAN_FIRECRACKER_KERNEL")
    done = cli("run", "-d", "-p", "firecracker", "-i", kernel_less, "nok")
    assert done.code == 64 and "give --kernel K" in done.err and "firecracker_kernel" in done.err


def test_missing_binary_is_69(cli, kernel_less: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    done = cli("run", "-d", "-p", "cloud-hypervisor", "-i", kernel_less, "--kernel",
               "probe-kernel", "x")
    assert done.code == 69 and "cloud-hypervisor not found" in done.err


def test_firecracker_boot_args_are_at_most_2048_bytes(vmm_fakes: Path, kernel_less: Path,
                                                      tmp_path: Path) -> None:
    """OSv's own 1023-byte limit comes first through run; the driver checks Firecracker's."""
    spec = InstanceSpec(name="long", image=kernel_less, kernel=probe_kernel_path(),
                        cmdline="/x " + "y" * 2100, machine="microvm")
    with pytest.raises(UsageError, match="Firecracker takes at most 2048"):
        get_driver("firecracker", load()).vm(spec, tmp_path)


def test_doctor_says_which_microvm_targets_run(cli, vmm_fakes: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    found = {r["Check"]: r for r in json.loads(cli("doctor", "-f", "json").out)}
    assert found["microvm"]["Detail"].startswith("qemu --machine microvm: yes; ")
    kvm = "yes" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "no (needs /dev/kvm)"
    assert f"-p firecracker: {kvm}; -p cloud-hypervisor: {kvm}" in found["microvm"]["Detail"]
    assert found["firecracker"]["Status"] == found["cloud-hypervisor"]["Status"] == "ok"
    monkeypatch.setenv("PATH", "/nonexistent")
    found = {r["Check"]: r for r in json.loads(cli("doctor", "-f", "json").out)}
    assert found["microvm"]["Status"] == "missing"
    assert "-p firecracker: no (not installed)" in found["microvm"]["Detail"]


def test_a_vmm_of_another_uid_is_not_taken_for_ours(cli, vmm_fakes: Path, kernel_less: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Any user can run a process whose argv names the instance's folder."""
    assert cli("run", "-p", "firecracker", "-d", "-i", kernel_less, "--kernel",
               "probe-kernel", "-e", "/x @hold", "u").code == 0
    uid = os.getuid()
    with monkeypatch.context() as patch:
        patch.setattr(os, "getuid", lambda: uid + 1)
        assert _states(cli, "firecracker") == {"u": "stopped"}
    assert _states(cli, "firecracker") == {"u": "running"}
    assert cli("delete", "-p", "firecracker", "u").code == 0
