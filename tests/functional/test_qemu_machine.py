"""The QEMU machine object: launch or attach, one QMP connection, the stop ladder."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.core.errors import BackendError, GuestTimeout
from capstan.drivers.qemu import QemuMachine

pytestmark = pytest.mark.qemu

QEMU = shutil.which("qemu-system-x86_64")
need_qemu = pytest.mark.skipif(QEMU is None, reason="no qemu-system-x86_64")


def bare_qemu(sock: Path) -> list[str]:
    """A QEMU with no guest at all: QMP only, quick to start."""
    assert QEMU is not None
    return [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-accel", "tcg",
            "-qmp", f"unix:{sock},server=on,wait=off"]


@need_qemu
def test_launch_command_and_ladder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sock = tmp_path / "qmp.sock"
    with QemuMachine("m1", qmp=sock, log=tmp_path / "qemu.log") as machine:
        machine.launch(bare_qemu(sock))
        assert machine.running()
        assert machine.command("query-status")["status"] in ("running", "prelaunch")
        assert machine.command("query-name") == {}
        with caplog.at_level(logging.WARNING):
            machine.shutdown(timeout=0.2)  # no ACPI without a machine: quit ends it
        assert "ignored the ACPI power button" in caplog.text
        assert not machine.running() and machine.exit_code() == 0
        machine.shutdown()  # twice is harmless
        machine.kill()


@need_qemu
def test_attach_to_an_instance_that_outlived_its_launcher(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    launcher = QemuMachine("m2", qmp=sock, log=tmp_path / "qemu.log")
    launcher.launch(bare_qemu(sock), outlive=True)
    launcher.close()
    try:
        later = QemuMachine.attach("m2", qmp=sock, pid=None)  # found by its argv
        assert later.pid == launcher.pid and later.running()
        assert later.command("query-status")["running"] in (True, False)
        later.kill()
        assert not later.running()
        assert launcher.wait(10) is not None  # reaped by its parent
    finally:
        launcher.kill()


def test_attach_to_nothing(tmp_path: Path) -> None:
    machine = QemuMachine.attach("gone", qmp=tmp_path / "qmp.sock", pid=None)
    assert machine.pid is None and not machine.running()
    with pytest.raises(BackendError, match="QMP connect"):
        machine.command("query-status", timeout=1)
    machine.shutdown()  # not running: nothing to do


@need_qemu
def test_qemu_that_fails_names_its_last_line(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    machine = QemuMachine("bad", qmp=sock, log=tmp_path / "qemu.log")
    with pytest.raises(BackendError, match=r"failed to start instance bad: .*nosuchdevice"):
        machine.launch([*bare_qemu(sock), "-device", "nosuchdevice"])


class FakeQmp:
    """A QMP server that answers every command with ``{}`` and counts connections."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        self.connections = 0
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                version = {"qemu": {"major": 8, "minor": 2, "micro": 0}, "package": ""}
                self.send(conn, {"QMP": {"version": version, "capabilities": []}})
                self.answer(conn)

    def answer(self, conn: socket.socket) -> None:
        """Answer each request (JSON objects back to back, no separator needed)."""
        buffer, decoder = "", json.JSONDecoder()
        while data := conn.recv(4096):
            buffer = (buffer + data.decode()).lstrip()
            while buffer:
                try:
                    request, end = decoder.raw_decode(buffer)
                except ValueError:
                    break
                buffer = buffer[end:].lstrip()
                self.commands.append(request["execute"])
                reply: dict[str, object] = {"return": {}}
                if "id" in request:
                    reply["id"] = request["id"]
                self.send(conn, reply)

    @staticmethod
    def send(conn: socket.socket, message: dict[str, object]) -> None:
        conn.sendall(json.dumps(message).encode() + b"\n")


@pytest.fixture
def fake_qmp(tmp_path: Path) -> Iterator[tuple[FakeQmp, Path]]:
    sock = tmp_path / "fake.sock"
    fake = FakeQmp(sock)
    yield fake, sock
    fake.server.close()


def test_one_qmp_connection_for_many_commands(fake_qmp: tuple[FakeQmp, Path]) -> None:
    fake, sock = fake_qmp
    with QemuMachine.attach("f", qmp=sock, pid=None) as machine:
        for _ in range(5):
            assert machine.command("query-status") == {}
    assert fake.connections == 1
    assert fake.commands == ["qmp_capabilities", *["query-status"] * 5]


def test_captured_output_and_its_handshake(tmp_path: Path) -> None:
    script = "import time; print('booting', flush=True); print('READY', flush=True); time.sleep(60)"
    with QemuMachine("stand-in", qmp=None) as machine:
        machine.spawn([sys.executable, "-c", script])
        machine.wait_for_output("READY", 30)
        assert machine.last_line() == "READY" and machine.running()
        with pytest.raises(GuestTimeout, match="did not finish within 0 s: READY"):
            machine.wait(0.1)
        machine.shutdown()  # no QMP: stopping is killing
        assert machine.exit_code() is not None and machine.exit_code() < 0


def test_output_of_a_process_that_died_is_complete(tmp_path: Path) -> None:
    script = "print('a', flush=True); print('Aborted', flush=True); raise SystemExit(3)"
    with QemuMachine("stand-in", qmp=None) as machine:
        machine.spawn([sys.executable, "-c", script])
        with pytest.raises(BackendError, match=r"exited \(3\) before it was ready: Aborted"):
            machine.wait_for_output("never", 30)


def test_instances_does_not_load_qemu_qmp(tmp_path: Path) -> None:
    code = ("import sys; from capstan.shell import main\n"
            "rc = main(['instances'])\n"
            "print('QMP', rc, 'qemu.qmp' in sys.modules, 'capstan.drivers.qemu' in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "CAPSTAN_ROOT": str(tmp_path), "PYTHONSAFEPATH": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=env)
    assert "QMP 0 False True" in done.stdout, done


def test_relative_root_gives_qemu_absolute_paths(image: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from capstan.core.config import load
    from capstan.drivers.base import InstanceSpec
    from capstan.services.disks import open_driver

    monkeypatch.chdir(tmp_path)
    driver = open_driver("qemu", load({}, {"CAPSTAN_ROOT": "rel-root",
                                           "CAPSTAN_QEMU_ACCEL": "tcg"}))
    driver.create(InstanceSpec(name="r1", image=image, networking="none"))
    record = tmp_path / "rel-root" / "instances" / "qemu" / "r1" / "instance.json"
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("-drive") + 1].startswith(f"file={tmp_path}/rel-root/")
    assert argv[argv.index("-qmp") + 1].startswith(f"unix:{tmp_path}/rel-root/")
