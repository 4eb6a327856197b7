"""The test-backend scripts put the host back: kvm-access.sh restores what it changed."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm

KVM_ACCESS = Path(__file__).resolve().parents[1] / "backends" / "kvm-access.sh"


def _kvm_gid() -> int:
    try:
        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        pytest.skip("no group kvm on this host")


def _access(action: str, device: Path, record: Path) -> None:
    subprocess.run([KVM_ACCESS, action, device, record], check=True, capture_output=True)


def _owner_mode(device: Path) -> tuple[int, int, int]:
    st = device.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.fixture
def device(tmp_path: Path) -> Path:
    """A character device node standing in for /dev/kvm (the numbers of /dev/null)."""
    node = tmp_path / "kvm"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chown(node, 0, 0)
    node.chmod(0o600)
    return node


def test_grant_records_and_restore_puts_back(device: Path, tmp_path: Path) -> None:
    kvm = _kvm_gid()
    record = tmp_path / "kvm.orig"
    _access("grant", device, record)
    assert _owner_mode(device) == (0, kvm, 0o660)
    assert record.read_text() == "0 0 600\n"
    _access("grant", device, record)  # already open to kvm: nothing more recorded
    assert record.read_text() == "0 0 600\n"
    _access("restore", device, record)
    assert _owner_mode(device) == (0, 0, 0o600)
    assert not record.exists()


def test_a_device_already_open_to_kvm_is_left_alone(device: Path, tmp_path: Path) -> None:
    kvm = _kvm_gid()
    os.chown(device, 0, kvm)
    device.chmod(0o666)
    record = tmp_path / "kvm.orig"
    _access("grant", device, record)
    assert not record.exists()
    _access("restore", device, record)
    assert _owner_mode(device) == (0, kvm, 0o666)


def test_a_bad_record_is_refused(device: Path, tmp_path: Path) -> None:
    record = tmp_path / "kvm.orig"
    record.write_text("0 0 777; rm -rf /\n")
    done = subprocess.run([KVM_ACCESS, "restore", device, record], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 1 and "does not hold" in done.stderr
    assert _owner_mode(device) == (0, 0, 0o600)
