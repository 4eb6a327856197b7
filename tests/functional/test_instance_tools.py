"""console, Ctrl-C, volumes, bridge/tap networking and doctor, with the probe guest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import states, wait_for

pytestmark = pytest.mark.qemu


def _log(capstan_root: Path, name: str) -> str:
    path = capstan_root / "instances" / "qemu" / name / "console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_console_sends_input_and_ends_with_the_guest(cli, image: Path,
                                                     capstan_root: Path) -> None:
    assert cli("run", "-d", "-i", image, "-e", "/x @hold", "con").code == 0
    wait_for(lambda: "PROBE done" in _log(capstan_root, "con"), what="probe report")
    console = subprocess.Popen([sys.executable, "-m", "capstan.shell", "console", "con"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert console.stdin is not None
    console.stdin.write(b"ping-from-host")
    console.stdin.close()
    console.stdin = None  # communicate() below must not flush it
    wait_for(lambda: "ping-from-host" in _log(capstan_root, "con"), what="the echo")
    assert cli("stop", "con").code == 0
    out, err = console.communicate(timeout=30)
    assert console.returncode == 0, err
    assert b"ping-from-host" in out and b"PROBE power-button" in out


def test_console_of_a_stopped_or_unknown_instance(cli, image: Path) -> None:
    assert cli("run", "-i", image, "--timeout", "60", "quiet").code == 0
    done = cli.program("console", "quiet", stdin=subprocess.DEVNULL)
    assert done.returncode == 65 and "not running" in done.stderr
    done = cli.program("console", "ghost", stdin=subprocess.DEVNULL)
    assert done.returncode == 65 and "no such instance" in done.stderr


def test_ctrl_c_stops_the_guest_gracefully(cli, image: Path, capstan_root: Path) -> None:
    run = subprocess.Popen([sys.executable, "-m", "capstan.shell", "run", "-i", str(image),
                            "-e", "/x @hold", "intr"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdout is not None
    shown = b""
    while b"PROBE done" not in shown:  # relayed: the run loop follows the console now (a
        line = run.stdout.readline()  # Ctrl-C while QEMU still starts shows no console)
        assert line, "the run ended before the probe's report"
        shown += line
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    out = shown + out
    assert run.returncode == 130, err
    assert b"PROBE power-button" in out  # the guest saw the ACPI button: a clean shutdown
    assert b"interrupted" in err
    assert states(cli)["intr"][0] == "stopped"


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "pkg"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "package.yaml").write_text("name: demo\ntitle: Demo\nauthor: t\n")
    monkeypatch.chdir(root)
    return root


def test_volume_create_list_run_delete(cli, image: Path, package: Path) -> None:
    result = cli("volume", "create", "-s", "64M", "-f", "qcow2", "data")
    assert result.code == 0, result.err
    assert (package / "volumes" / "data.yaml").read_text() == "format: qcow2\n"
    rows = json.loads(cli("volume", "list", "-f", "json").out)
    assert [(r["Name"], r["Format"], r["Size"]) for r in rows] == [("data", "qcow2", 64 << 20)]
    # run --volume NAME reads volumes/NAME.yaml: the guest sees the qcow2's zeros, not its
    # header (which it would with Capstan's raw default).
    done = cli.program("run", "-i", image, "--volume", "data", "--rm", "vol", cwd=package)
    assert "PROBE disk1=0000000000000000" in done.stdout, done.stdout + done.stderr
    assert cli("volume", "delete", "data").code == 0
    assert sorted(p.name for p in (package / "volumes").iterdir()) == []  # lock: under the root


def test_volume_bad_input(cli, package: Path, tmp_path: Path) -> None:
    assert cli("volume", "create", "v1").code == 0
    before = sorted((package / "volumes").iterdir())
    cases = [
        (("volume", "create", "v1"), 65, "already exists"),
        (("volume", "create", "-f", "floppy", "v2"), 64, "invalid volume format"),
        (("volume", "create", "-s", "big", "v2"), 64, "invalid size"),
        (("volume", "create", "../escape"), 64, "invalid volume name"),
        (("volume", "delete", "nope"), 65, "no volume named 'nope'"),
        (("volume", "create", "-C", str(tmp_path), "v3"), 65, "not a package root"),
    ]
    for argv, code, text in cases:
        result = cli(*argv)
        assert (result.code, result.err.count("\n")) == (code, 1), (argv, result)
        assert text in result.err, (argv, result.err)
    assert sorted((package / "volumes").iterdir()) == before


@pytest.fixture
def tap() -> Iterator[str]:
    name = f"cptap{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], check=False)


def test_tap_networking(cli, image: Path, tap: str) -> None:
    done = cli.program("run", "-i", image, "-n", "tap", "-b", tap, "--mac", "52:54:00:aa:bb:cc",
                       "--rm", "tapped")
    assert done.returncode == 0, done.stderr
    assert "PROBE done" in done.stdout


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"cpbr{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    conf = Path("/etc/qemu/bridge.conf")
    original = conf.read_bytes() if conf.exists() else None
    made_dir = not conf.parent.exists()
    conf.parent.mkdir(exist_ok=True)
    with conf.open("a") as f:
        f.write(f"allow {name}\n")
    yield name
    if original is not None:
        conf.write_bytes(original)
    else:
        conf.unlink()
        if made_dir:
            conf.parent.rmdir()
    subprocess.run(["ip", "link", "del", name], check=False)


def test_bridge_networking_joins_the_bridge(cli, image: Path, bridge: str) -> None:
    result = cli("run", "-d", "-i", image, "-n", "bridge", "-b", bridge, "-e", "/x @hold", "br")
    assert result.code == 0, result.err
    assert os.listdir(f"/sys/class/net/{bridge}/brif")  # QEMU's tap joined the bridge
    wait_for(lambda: "PROBE done" in cli.program("logs", "br").stdout, what="probe report")
    assert cli("delete", "br").code == 0
    assert not os.listdir(f"/sys/class/net/{bridge}/brif")


def test_bad_network_input_starts_nothing(cli, image: Path) -> None:
    cases = [
        (("run", "-i", image, "-n", "tap", "x"), 64, "needs the tap device"),
        (("run", "-i", image, "-n", "tap", "-b", "cpnotap0", "x"), 65, "no tap device"),
        (("run", "-i", image, "-n", "bridge", "-b", "cpnobr0", "x"), 65, "no bridge"),
        (("run", "-i", image, "-n", "tap", "-b", "lo", "-f", "8080:80", "x"), 64,
         "need nat networking"),
        (("run", "-i", image, "-n", "warp", "x"), 64, "invalid choice"),
        (("run", "-i", image, "--mac", "01:00:00:00:00:01", "x"), 64, "multicast"),
        (("run", "-i", image, "--mac", "zz", "x"), 64, "invalid MAC"),
    ]
    for argv, code, text in cases:
        result = cli(*argv)
        assert (result.code, result.err.count("\n")) == (code, 1), (argv, result)
        assert text in result.err, (argv, result.err)
    assert states(cli) == {}


def test_doctor_reports_every_check_with_fixes(cli) -> None:
    result = cli("doctor", "-f", "json")
    assert result.code == 0, result.err
    rows = {r["Check"]: r for r in json.loads(result.out)}
    assert set(rows) >= {"root", "qemu", "qemu-img", "accelerators", "kvm", "nested",
                         "bridge", "libvirt", "virtualbox", "vmware", "aws", "vsphere"}
    assert rows["qemu"]["Status"] == "ok" and "7." in rows["qemu"]["Detail"]
    assert "tcg" in rows["accelerators"]["Detail"]
    assert all(r["Fix"] for r in rows.values() if r["Status"] != "ok")


def test_doctor_fails_without_qemu(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_QEMU_PATH", "/nonexistent/qemu")
    result = cli("doctor", "-f", "json")
    assert result.code == 69
    rows = {r["Check"]: r for r in json.loads(result.out)}
    assert rows["qemu"]["Status"] == "fail" and "apt-get install" in rows["qemu"]["Fix"]
