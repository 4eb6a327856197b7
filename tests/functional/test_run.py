"""capstan run and instance lifecycle with the probe guest under QEMU TCG."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import states, wait_for

pytestmark = pytest.mark.qemu


def test_foreground_run_streams_console_and_exits_zero(cli, image: Path) -> None:
    done = cli.program("run", "-i", image, "fg")
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--rootfs=rofs runscript /run/default;]" in done.stdout
    assert states(cli)["fg"][0] == "stopped"
    assert "PROBE done" in cli.program("logs", "fg").stdout


def test_boot_env_and_execute_rewrite_only_the_instance_disk(cli, image: Path) -> None:
    done = cli.program("run", "-i", image, "--boot", "a", "--boot", "b", "--env",
                       "MSG=hello world", "--rm", "e1")
    assert "cmdline=[--rootfs=rofs --env=MSG=hello\\ world runscript /run/a;runscript /run/b;]" \
        in done.stdout
    done = cli.program("run", "-i", image, "-e", "/hello x", "--rm", "e2")
    assert "cmdline=[--rootfs=rofs /hello x]" in done.stdout
    assert "e1" not in states(cli)
    assert cli("image", "info", "-f", "value", "-c", "cmdline", image).out.strip() == \
        "--rootfs=rofs runscript /run/default;"


def test_detached_run_logs_and_graceful_stop(cli, image: Path) -> None:
    result = cli("run", "-d", "-i", image, "-e", "/hello @hold", "-f", "0:80", "held")
    assert result.code == 0, result.err
    status, pid, ports = states(cli)["held"]
    assert status == "running" and int(pid) > 0
    host, port = ports.split("->")[0].rsplit(":", 1)
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # QEMU listens on 127.0.0.1 for the guest
    with pytest.raises(OSError):
        socket.create_connection(("0.0.0.0" if False else _other_ip(), int(port)), timeout=1)
    deadline = time.monotonic() + 20
    while "PROBE done" not in cli.program("logs", "held").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert cli("stop", "held").code == 0
    assert "PROBE power-button" in cli.program("logs", "held").stdout
    assert states(cli)["held"][0] == "stopped"


def _other_ip() -> str:
    """A non-loopback address of this machine (the forward must not listen there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            return str(s.getsockname()[0])
        except OSError:
            pytest.fail("no non-loopback address to check the forward's binding")


def test_stop_escalates_on_a_guest_that_ignores_acpi(cli, image: Path) -> None:
    assert cli("run", "-d", "-i", image, "-e", "/x @deaf", "deaf").code == 0
    start = time.monotonic()
    assert cli("stop", "--timeout", "1", "deaf").code == 0
    assert time.monotonic() - start < 15
    assert states(cli)["deaf"][0] == "stopped"


def test_state_after_qemu_is_killed_and_delete_leaves_nothing(cli, image: Path,
                                                              capstan_root: Path) -> None:
    assert cli("run", "-d", "-i", image, "-e", "/x @deaf", "victim").code == 0
    pid = int(states(cli)["victim"][1])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while states(cli)["victim"][0] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert cli("delete", "victim").code == 0
    assert not (capstan_root / "instances" / "qemu" / "victim").exists()
    assert cli("delete", "victim").code == 65


def test_delete_of_a_running_instance_stops_it_first(cli, image: Path) -> None:
    assert cli("run", "-d", "-i", image, "-e", "/x @hold", "busy").code == 0
    pid = int(states(cli)["busy"][1])
    # A guest presses nothing before it enables ACPI: wait until it listens.
    wait_for(lambda: "PROBE done" in cli.program("logs", "busy").stdout, what="probe report")
    assert cli("delete", "busy").code == 0
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_volume_is_visible_to_the_guest(cli, image: Path, tmp_path: Path) -> None:
    vol = tmp_path / "vol.img"
    vol.write_bytes(b"VOLUME01" + bytes(1 << 20))
    done = cli.program("run", "-i", image, "--volume", f"{vol}:format=raw", "--rm", "v")
    assert "PROBE disk1=564f4c554d453031" in done.stdout, done.stdout


def test_eight_instances_at_once(cli, image: Path) -> None:
    def launch(n: int) -> subprocess.CompletedProcess[str]:
        return cli.program("run", "-d", "-i", image, "-e", "/x @hold", "-f", "0:80",
                           f"many{n}")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(launch, range(8)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    rows = states(cli)
    ports = {rows[f"many{n}"][2] for n in range(8)}
    assert len(ports) == 8 and all(rows[f"many{n}"][0] == "running" for n in range(8))
    assert cli("delete", *(f"many{n}" for n in range(8))).code == 0
    assert not any(name.startswith("many") for name in states(cli))


def test_bad_run_input_starts_nothing(cli, image: Path, capstan_root: Path) -> None:
    cases = [
        (("run", "-i", "nope", "x"), 65, "no such image"),
        (("run", "-i", image, "-f", "8080", "x"), 64, "invalid port forward"),
        (("run", "-i", image, "-f", "70000:80", "x"), 64, "ports are 1-65535"),
        (("run", "-i", image, "--volume", "/v.img:size", "x"), 64, "use '='"),
        (("run", "-i", image, "--volume", "/v.img:colour=red", "x"), 64, "unknown setting"),
        (("run", "-i", image, "--volume", "/no/such.img", "x"), 65, "no such volume"),
        (("run", "-i", image, "-m", "lots", "x"), 64, "invalid size"),
        (("run", "-i", image, "-c", "0", "x"), 64, "cpu count"),
        (("run", "-i", image, "--env", "NOEQUALS", "x"), 64, "invalid --env"),
        (("run", "-i", image, "bad/name!"), 64, "invalid instance name"),
        (("run", "-p", "warp", "-i", image, "x"), 65, "not a supported hypervisor"),
    ]
    for argv, code, text in cases:
        result = cli(*argv)
        assert result.code == code, (argv, result)
        assert text in result.err and result.err.count("\n") == 1, (argv, result.err)
    assert states(cli) == {}


def test_duplicate_name_of_a_running_instance(cli, image: Path) -> None:
    assert cli("run", "-d", "-i", image, "-e", "/x @hold", "dup").code == 0
    pid = states(cli)["dup"][1]
    result = cli("run", "-d", "-i", image, "dup")
    assert result.code == 65 and "already running" in result.err
    assert states(cli)["dup"][1] == pid


@pytest.mark.kvm
def test_kvm_smoke(cli, image: Path) -> None:
    """The one KVM boot: nested KVM here runs guest ring 0 about 300x slower."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.fail("/dev/kvm is not usable")
    env = dict(os.environ, CAPSTAN_QEMU_ACCEL="kvm")
    done = cli.program("run", "-i", image, "--cpu", "host,-arch-capabilities",
                       "--timeout", "120", "--rm", "kvm", env=env)
    assert done.returncode == 0, done.stderr
    assert "PROBE rofs-magic=ok" in done.stdout


def test_cached_facts_and_overlays_follow_image_changes(cli, image: Path, app_tree: Path,
                                                        capstan_root: Path) -> None:
    for _ in range(2):  # the second run copies the cached overlay
        done = cli.program("run", "-i", image, "-e", "/hello @one", "--rm", "c")
        assert "cmdline=[--rootfs=rofs /hello @one]" in done.stdout, done.stderr
    assert len(list((capstan_root / "cache" / "overlays").glob("*.qcow2"))) == 1
    (app_tree / "extra").write_bytes(b"changed")
    assert cli("compose", "-l", "probe-loader", "-o", image, app_tree).code == 0
    done = cli.program("run", "-i", image, "-e", "/hello @one", "--rm", "c")
    assert "cmdline=[--rootfs=rofs /hello @one]" in done.stdout
    assert "sectors=00000014" not in done.stdout  # the new, larger partition is booted
    assert len(list((capstan_root / "cache" / "overlays").glob("*.qcow2"))) == 2


def test_run_name_relaunches_an_existing_instance(cli, image: Path,
                                                 capstan_root: Path) -> None:
    assert cli("run", "-d", "-i", image, "-e", "/x @hold", "again").code == 0
    wait_for(lambda: "PROBE done" in cli.program("logs", "again").stdout, what="first boot")
    assert cli("stop", "again").code == 0
    disk = capstan_root / "instances" / "qemu" / "again" / "disk.qcow2"
    inode = disk.stat().st_ino
    result = cli("run", "-d", "again")
    assert result.code == 0 and "Running (already existing) instance: again" in result.out
    assert states(cli)["again"][0] == "running"
    assert disk.stat().st_ino == inode  # the same disk: its state survives
    result = cli("run", "-e", "/other", "again")
    assert result.code == 64 and "delete it first" in result.err
