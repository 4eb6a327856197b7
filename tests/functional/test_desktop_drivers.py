"""VirtualBox and VMware drivers: recording fakes of VBoxManage/vmrun, real disks.

Named as fakes: VirtualBox and VMware cannot run here. Every disk a fake is given
is checked with qemu-img, and booted under QEMU TCG on the controller the VM
would use, with the probe guest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from guest import boot

pytestmark = [pytest.mark.vbox, pytest.mark.vmware]

FAKES = Path(__file__).resolve().parents[1] / "fakes"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "fake-calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_STATE", str(tmp_path / "fake-state.json"))
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    monkeypatch.setenv("CAPSTAN_CHILD_ENV", "FAKE_LOG,FAKE_STATE,FAKE_FAIL,FAKE_ACPI")
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in log.read_text().splitlines()]


def test_fake_virtualbox_sequence_disk_and_lifecycle(cli, image: Path, fake: Path,
                                                     capstan_root: Path) -> None:
    result = cli("run", "-p", "vbox", "-d", "-i", image, "-e", "/vbox @x", "-f", "0:80",
                 "-m", "256M", "-c", "1", "vb1")
    assert result.code == 0, result.err
    folder = capstan_root / "instances" / "vbox" / "vb1"
    disk = folder / "disk.vdi"
    argv = [a[1:] for a in calls(fake)]
    port = re.search(r"127\.0\.0\.1:(\d+)->80", result.out).group(1)  # type: ignore[union-attr]
    assert argv[:2] == [["list", "vms"], ["createvm", "--name", "vb1", "--basefolder",
                                          str(capstan_root / "instances" / "vbox"),
                                          "--ostype", "Linux26_64"]]
    assert ["registervm", str(folder / "vb1.vbox")] in argv
    assert ["storageattach", "vb1", "--storagectl", "SATA", "--port", "0", "--device", "0",
            "--type", "hdd", "--medium", str(disk)] in argv
    assert ["modifyvm", "vb1", "--natpf1", f"capstan-tcp-{port},tcp,127.0.0.1,{port},,80"] \
        in argv
    assert ["modifyvm", "vb1", "--hpet", "on", "--memory", "256", "--cpus", "1", "--uart1",
            "0x3f8", "4", "--uartmode1", "file", str(folder / "console.log")] in argv
    assert argv[-2:] == [["startvm", "vb1", "--type", "headless"],
                         ["showvminfo", "vb1", "--machinereadable"]]
    assert subprocess.run(["qemu-img", "check", disk], capture_output=True).returncode == 0
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", disk],
                                     capture_output=True, check=True).stdout)
    assert info["format"] == "vdi"
    report = boot(disk, "vdi", capstan_root.parent / "vb.log", "ahci")  # VirtualBox's AHCI
    assert report["cmdline"] == "[--rootfs=rofs /vbox @x]"
    assert "vb1 vbox running" in cli("instances", "-p", "vbox", "-f", "value").out
    assert cli("stop", "-p", "vbox", "vb1").code == 0
    assert ["controlvm", "vb1", "acpipowerbutton"] in [a[1:] for a in calls(fake)]
    assert cli("delete", "-p", "vbox", "vb1").code == 0
    assert calls(fake)[-1][1:] == ["unregistervm", "vb1", "--delete"]
    assert not folder.exists()


def test_fake_virtualbox_failures_leave_nothing(cli, image: Path, fake: Path,
                                                capstan_root: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "modifyvm")
    result = cli("run", "-p", "vbox", "-d", "-i", image, "half")
    assert result.code == 69 and "injected failure of modifyvm" in result.err
    assert calls(fake)[-1][1:] == ["unregistervm", "half", "--delete"]
    assert not (capstan_root / "instances" / "vbox" / "half").exists()
    monkeypatch.delenv("FAKE_FAIL")
    subprocess.run([FAKES / "VBoxManage", "createvm", "--name", "theirs", "--basefolder",
                    str(capstan_root.parent / "elsewhere")], check=True, capture_output=True)
    subprocess.run([FAKES / "VBoxManage", "registervm",
                    str(capstan_root.parent / "elsewhere" / "theirs" / "theirs.vbox")],
                   check=True)
    result = cli("run", "-p", "vbox", "-d", "-i", image, "theirs")
    assert result.code == 65 and "did not create" in result.err
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    result = cli("run", "-p", "vbox", "-d", "-i", image, "novbox")
    assert result.code == 69 and "VBoxManage not found" in result.err
    assert result.err.count("\n") == 1


def test_fake_vmware_vmx_disk_and_lifecycle(cli, image: Path, fake: Path,
                                            capstan_root: Path) -> None:
    result = cli("run", "-p", "vmw", "-d", "-i", image, "-e", "/vmw", "-m", "512M", "vm1")
    assert result.code == 0, result.err
    folder = capstan_root / "instances" / "vmw" / "vm1"
    settings = dict(re.findall(r'^(\S+) = "(.*)"$', (folder / "osv.vmx").read_text(),
                               re.MULTILINE))
    assert settings["scsi0.virtualDev"] == "pvscsi"
    assert settings["ethernet0.virtualDev"] == "vmxnet3"
    assert settings["hpet0.present"] == "TRUE" and "firmware" not in settings
    assert (settings["memsize"], settings["numvcpus"]) == ("512", "2")
    assert settings["serial0.fileName"] == str(folder / "console.log")
    disk = Path(settings["scsi0:0.fileName"])
    assert disk.is_file()
    assert subprocess.run(["qemu-img", "check", disk], capture_output=True).returncode == 0
    report = boot(disk, "vmdk", capstan_root.parent / "vm.log", "pvscsi")  # as the .vmx says
    assert report["cmdline"] == "[--rootfs=rofs /vmw]"
    vmx = str(folder / "osv.vmx")
    assert calls(fake)[-2][1:] == ["-T", "ws", "start", vmx, "nogui"]
    assert "vm1 vmw running" in cli("instances", "-p", "vmw", "-f", "value").out
    assert cli("stop", "-p", "vmw", "vm1").code == 0
    assert ["-T", "ws", "stop", vmx, "soft"] in [a[1:] for a in calls(fake)]
    assert cli("delete", "-p", "vmw", "vm1").code == 0
    assert not folder.exists()


def test_fake_vmware_bad_input(cli, image: Path, fake: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("run", "-p", "vmw", "-d", "-i", image, "-f", "8080:80", "x")
    assert result.code == 69 and "does not support port forwards" in result.err
    monkeypatch.setenv("FAKE_ACPI", "0")  # a guest that ignores the soft stop
    assert cli("run", "-p", "vmw", "-d", "-i", image, "deaf").code == 0
    assert cli("stop", "-p", "vmw", "-t", "0.5", "deaf").code == 0
    assert calls(fake)[-2][1:][-1] == "hard" or \
        calls(fake)[-3][1:4] == ["-T", "ws", "stop"]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    result = cli("run", "-p", "vmw", "-d", "-i", image, "y")
    assert result.code == 69 and "vmrun not found" in result.err
