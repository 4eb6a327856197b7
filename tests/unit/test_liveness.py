"""Instance liveness without /proc (macOS answers through ps), and the ``auto``
accelerator on each host kind."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.core import fs, pids
from capstan.drivers.qemu import accel
from capstan.drivers.qemu.machine import find_pid, pid_alive

from conftest import wait_for

MARKER = f"/run/capstan,{uuid.uuid4().hex}/qmp.sock"  # unique; QEMU's argv doubles the comma


@pytest.fixture(params=["proc", "ps"])
def host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path) -> str:
    """Each check once through /proc and once as on a host without it."""
    if request.param == "ps":
        monkeypatch.setattr(pids, "PROC", tmp_path / "no-proc")
    return str(request.param)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              MARKER.replace(",", ",,")])
    yield child
    child.kill()
    child.wait()


def test_a_running_process_is_found_with_a_stable_identity(
        host: str, sleeper: subprocess.Popen[bytes]) -> None:
    found = pids.look(sleeper.pid)
    assert found is not None and not found.zombie, host
    assert MARKER.replace(",", ",,").encode() in found.command
    token = fs.process_token(sleeper.pid)
    assert token.startswith(f"{sleeper.pid}-") and "." not in token
    assert fs.process_token(sleeper.pid) == token and fs.owner_alive(token)
    assert fs.owner_alive(f"{sleeper.pid}-0") is False  # same pid, another start time
    assert pid_alive(sleeper.pid, MARKER) and not pid_alive(sleeper.pid, "/other.sock")
    assert find_pid(MARKER) == sleeper.pid


def test_gone_and_zombie_processes_are_not_alive(host: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", MARKER.replace(",", ",,")])
    child.wait()  # reaped: gone
    assert pids.look(child.pid) is None and not pids.alive(child.pid), host
    assert fs.process_token(child.pid) == "" and not pid_alive(child.pid, MARKER)
    zombie = subprocess.Popen([sys.executable, "-c", "pass", MARKER.replace(",", ",,")])
    try:
        wait_for(lambda: getattr(pids.look(zombie.pid), "zombie", False), what="a zombie")
        assert pids.alive(zombie.pid)  # signal 0 still reaches it
        assert fs.process_token(zombie.pid) == "" and not pid_alive(zombie.pid, MARKER)
        assert find_pid(MARKER) is None
    finally:
        zombie.wait()


def test_no_pid_and_another_users_pid(host: str) -> None:
    assert not pids.alive(None) and not pids.alive(0) and not pids.alive(-1)
    assert pids.alive(1), host  # init: signal 0 answers EPERM for a non-root user
    assert fs.process_token().startswith(f"{os.getpid()}-")


@pytest.mark.parametrize("case", [
    ("darwin", False, False, "hvf"),
    ("darwin", False, True, "tcg"),
    ("linux", True, False, "kvm"),
    ("linux", True, True, "tcg"),
    ("linux", False, False, "tcg"),
    ("freebsd14", True, False, "tcg"),
])
def test_auto_accelerator(case: tuple[str, bool, bool, str], monkeypatch: pytest.MonkeyPatch,
                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(platform, /dev/kvm usable, disable_kvm, what auto picks)"""
    platform, device, disable, expected = case
    kvm = tmp_path / "kvm"
    if device:
        kvm.write_bytes(b"")
    monkeypatch.setattr(accel, "KVM_DEVICE", kvm)
    monkeypatch.setattr(sys, "platform", platform)
    with caplog.at_level(logging.WARNING):
        assert accel.pick("auto", disable_kvm=disable) == expected
    assert ("TCG" in caplog.text) is (expected == "tcg")


@pytest.mark.parametrize("wanted", ["kvm", "hvf", "tcg"])
def test_an_explicit_accelerator_is_kept(wanted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert accel.pick(wanted, disable_kvm=True) == wanted
