"""Gap 8 of issue 17 (real QEMU): instances go both ways between Go Capstan and pycapstan.

Capstan (reference 6.13): "An instance "exists" for ``instances``, ``stop``, ``delete``
... only if ``osv.config`` is present", its QEMU reached through the QMP socket
``osv.monitor`` (12.2: ``-chardev socket,id=charmonitor,path=<instance dir>/osv.monitor,
server=on,wait=off -mon chardev=charmonitor,id=monitor,mode=control``); "Delete. Calls
stop, then ``rm -f disk.qcow2 osv.monitor osv.config vnc-domain-socket`` ... and
``rmdir`` of the directory" -- but Capstan's stop leaves QEMU running. pycapstan
"[compat] reads these files so that ``instances``, ``stop`` and ``delete`` see instances
Capstan created", and "writes ``osv.config`` in Capstan's format as well for QEMU
instances, so that Capstan can still see them".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import wait_for

pytestmark = pytest.mark.qemu

#: the keys of Capstan's qemu VMConfig as it dumps them (reference 6.13)
CAPSTAN_QEMU_KEYS = {"name", "verbose", "cmd", "disablekvm", "persist", "instancedir",
                     "monitor", "configfile", "aiotype", "image", "backingfile", "volumes",
                     "memory", "cpus", "networking", "bridge", "natrules", "mac", "vncfile",
                     "kernelmode", "kernelpath"}


def _capstan_instance(root: Path, name: str, image: Path, serial: Path
                      ) -> subprocess.Popen[bytes]:
    """Instance *name* as Capstan's ``run --persist`` leaves it, its QEMU running."""
    d = root / "instances" / "qemu" / name
    d.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image), str(d / "disk.qcow2")], check=True)
    (d / "osv.config").write_text(yaml.safe_dump({
        "name": name, "verbose": False, "cmd": "/hello @hold", "disablekvm": True,
        "persist": True, "instancedir": str(d), "monitor": str(d / "osv.monitor"),
        "configfile": str(d / "osv.config"), "aiotype": "threads",
        "image": str(d / "disk.qcow2"), "backingfile": True, "volumes": [], "memory": 256,
        "cpus": 1, "networking": "nat", "bridge": "virbr0",
        "natrules": [{"hostport": "8080", "guestport": "80"}], "mac": "",
        "vncfile": str(d / "vnc-domain-socket"), "kernelmode": False, "kernelpath": ""}))
    return subprocess.Popen(
        ["qemu-system-x86_64", "-display", "none", "-m", "256", "-smp", "1",
         "-accel", "tcg", "-nodefaults",
         "-device", "virtio-blk-pci,id=blk0,bootindex=0,drive=hd0",
         "-drive", f"file={d / 'disk.qcow2'},if=none,id=hd0,aio=threads,cache=writeback",
         "-chardev", f"socket,id=charmonitor,path={d / 'osv.monitor'},server=on,wait=off",
         "-mon", "chardev=charmonitor,id=monitor,mode=control",
         "-serial", f"file:{serial}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def short_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A CAPSTAN_ROOT short enough for Capstan's socket path (under 108 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="cap-", dir="/tmp"))
    monkeypatch.setenv("CAPSTAN_ROOT", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _hold_image(cli, app_tree: Path, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "hold.qcow2"
    assert cli("compose", "-l", "probe-loader", "-o", out, app_tree, "-c",
               "/hello @hold").code == 0
    return out


def test_capstans_running_instance_is_listed_stopped_and_deleted(
        cli, app_tree: Path, tmp_path: Path, short_root: Path) -> None:
    serial = tmp_path / "serial.log"
    qemu = _capstan_instance(short_root, "capweb", _hold_image(cli, app_tree, tmp_path),
                             serial)
    try:
        wait_for(lambda: qemu.poll() is not None or (
            serial.exists() and "PROBE done" in serial.read_text()),
                 timeout=120, what="the guest's report")
        assert qemu.poll() is None, (qemu.stderr.read() if qemu.stderr else b"",
                                     serial.read_text() if serial.exists() else "")
        rows = {r["Name"]: r for r in json.loads(cli("instances", "-f", "json").out)}
        assert rows["capweb"]["Status"] == "running"
        assert rows["capweb"]["PID"] == qemu.pid
        result = cli("delete", "capweb")
        assert result.code == 0, result
        assert qemu.wait(timeout=60) == 0  # a clean ACPI power-off, not a kill
        assert "PROBE power-button" in serial.read_text()
        assert not (short_root / "instances" / "qemu" / "capweb").exists()
        assert "capweb" not in cli("instances", "-f", "value").out
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()


def test_capstans_stopped_instance_with_a_stranger_file(cli, tmp_path: Path,  # type: ignore
                                                        short_root: Path, image: Path
                                                        ) -> None:
    qemu = _capstan_instance(short_root, "old", image, tmp_path / "s.log")
    assert qemu.wait(timeout=120) == 0  # the probe guest powers off by itself
    assert "PROBE done" in (tmp_path / "s.log").read_text()
    folder = short_root / "instances" / "qemu" / "old"
    (folder / "notes.txt").write_text("mine\n")
    assert json.loads(cli("instances", "-f", "json").out)[0]["Status"] == "stopped"
    result = cli("delete", "old")
    assert result.code == 65 and "notes.txt" in result.err and "left in place" in result.err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_our_instances_carry_an_osv_config_capstan_reads(cli, image: Path,  # type: ignore
                                                         capstan_root: Path) -> None:
    result = cli("run", "-d", "-i", image, "-e", "/hello @hold", "-f", "0:80", "ours")
    assert result.code == 0, result.err
    try:
        config = yaml.safe_load(
            (capstan_root / "instances" / "qemu" / "ours" / "osv.config").read_text())
        assert set(config) == CAPSTAN_QEMU_KEYS
        assert config["name"] == "ours" and isinstance(config["memory"], int)
        assert isinstance(config["natrules"], list) and config["natrules"][0]["guestport"] == \
            "80"
    finally:
        assert cli("delete", "ours").code == 0
