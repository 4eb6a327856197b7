"""Every disk format boots the probe loader under QEMU TCG and sees our bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from capstan.image.formats import DiskFormat

from guest import boot, expected_report

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("fmt", [f.label for f in DiskFormat if not f.archive])
def test_every_format_boots_and_matches(cli, app_tree: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"disk.{DiskFormat.parse(fmt).suffix}"
    result = cli("compose", "-l", "probe-loader", "--disk-format", fmt, "-o", out, app_tree)
    assert result.code == 0, result.err
    report = boot(out, fmt, tmp_path / "serial.log")
    expected = expected_report(out)
    for key, value in expected.items():
        assert report.get(key) == value, (key, report)
    assert report["disk1"] == "none" and "done" in report


@pytest.mark.parametrize(("fmt", "bus"), [("raw", "ide"), ("vdi", "ahci"), ("qcow2", "ahci")])
def test_other_disk_buses(cli, app_tree: Path, tmp_path: Path, fmt: str, bus: str) -> None:
    out = tmp_path / f"disk.{fmt}"
    cli("compose", "-l", "probe-loader", "--disk-format", fmt, "-o", out, app_tree)
    report = boot(out, fmt, tmp_path / "serial.log", bus=bus)
    assert report["fnv1a"] == expected_report(out)["fnv1a"]
    assert report["rofs-magic"] == "ok"


def test_large_partition_checksum(cli, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    for n in range(40):
        (src / f"f{n:02d}").write_bytes(bytes([n]) * (50_000 + n * 313))
    out = tmp_path / "big.qcow2"
    cli("compose", "-l", "probe-loader", "-c", "/f00", "-o", out, src)
    report = boot(out, "qcow2", tmp_path / "serial.log")
    assert report["fnv1a"] == expected_report(out)["fnv1a"]
