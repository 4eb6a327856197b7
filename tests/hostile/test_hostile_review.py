"""Findings of an attacker's review of issue 14's guarantees, each a case of its own."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from hostile_kit import Sandbox, check


def _chained(path: Path, other: Path, kind: str) -> Path:
    """A qcow2 image at *path* whose backing file is *other*, or a vmdk whose extent is."""
    if kind == "backing file":
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(other), "-F", "raw",
                        str(path), "1M"], check=True)
    else:
        path.write_text(f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                        f'createType="monolithicFlat"\nRW 1 FLAT "{other}" 0\n'
                        'ddb.virtualHWVersion = "4"\n')
    return path


@pytest.mark.parametrize("kind", ["backing file", "extent"])
def test_a_pulled_image_that_reads_a_host_file_is_refused(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """A verified remote image that names /etc/shadow as its backing file (or vmdk extent)
    would give the guest the host file as its disk: refused, nothing stored."""
    top = tmp_path / "bucket"
    (top / "ns" / "bk").mkdir(parents=True)
    image = _chained(top / "ns" / "bk" / "bk.qemu", sandbox.victim, kind)
    Path(f"{image}.sha256").write_text(hashlib.sha256(image.read_bytes()).hexdigest() + "\n")
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", top.as_uri())
    check(cli("pull", "ns/bk"), 65, "reads another file")
    assert not (sandbox.root / "repository" / "ns" / "bk").exists()


@pytest.mark.parametrize("kind", ["backing file", "extent"])
def test_running_an_image_that_reads_a_host_file_is_refused(
        cli, sandbox: Sandbox, tmp_path: Path, kind: str) -> None:
    image = _chained(tmp_path / "chained.img", sandbox.victim, kind)
    check(cli("run", "bk", "-i", image, "-d"), 65, "reads another file")
    assert not (sandbox.root / "instances" / "qemu" / "bk").exists()
