"""Gap 6 of issue 17: volume cache and aio defaults, the boot drive, no lock left behind.

Capstan (reference 12.4): "keys are case-insensitive: ``format`` (default ``raw``),
``aio`` (``native``), ``cache`` (``none``)" and "The default ``aio=native,cache=none``
needs ``O_DIRECT``, so a volume on tmpfs fails to open." [fix] 13 #18: "``O_DIRECT``
fallback". QEMU itself refuses ``aio=native`` with a cached mode: "aio=native was
specified, but it requires cache.direct=on". (4.8) ``volume delete`` "Removes
``./volumes/<name>`` ... and its ``.yaml`` if present."
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from capstan.drivers.base import InstanceSpec, Volume
from capstan.drivers.qemu.argv import Host, Paths, argv
from capstan.drivers.qemu.driver import QemuDriver
from capstan.drivers.qemu.host import attach_volume


@pytest.mark.parametrize(("text", "direct", "cache", "aio"), [
    ("/v.img", True, "none", "native"),  # Capstan's defaults
    ("/v.img", False, "writeback", "threads"),  # tmpfs: the documented fallback
    ("/v.img:cache=writeback", True, "writeback", "threads"),
    ("/v.img:cache=directsync", True, "directsync", "native"),
    ("/v.img:aio=native", True, "none", "native"),
    ("/v.img:aio=native", False, "writeback", "threads"),
    ("/v.img:cache=none:aio=threads", True, "none", "threads"),
    ("/v.img:cache=unsafe:aio=io_uring", False, "unsafe", "io_uring"),
])
def test_defaults_and_fallback(text: str, direct: bool, cache: str, aio: str) -> None:
    vol = Volume.parse(text).resolved(direct)
    assert (vol.cache, vol.aio) == (cache, aio)


def test_the_driver_probes_o_direct(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "v.img"
    disk.write_bytes(b"\0" * 4096)
    vol = attach_volume(Volume(disk, "raw"))  # ext4 or xfs: O_DIRECT works
    assert (vol.cache, vol.aio) == ("none", "native")
    # a file system without O_DIRECT (tmpfs before Linux 6.6, some FUSE and 9p mounts)
    monkeypatch.setattr("capstan.drivers.qemu.host.direct_io", lambda path: False)
    monkeypatch.setattr("capstan.drivers.qemu.driver.direct_io", lambda path: False)
    vol = attach_volume(Volume(disk, "raw", "none", "native"))
    assert (vol.cache, vol.aio) == ("writeback", "threads")
    assert "cannot use O_DIRECT here" in caplog.text
    config = type("C", (), {"qemu_aio_type": "native"})()
    driver = QemuDriver.__new__(QemuDriver)
    driver.config = config  # type: ignore[assignment]
    assert driver._boot_aio(disk) == "threads"


def _boot_drive(aio: str) -> str:
    spec = InstanceSpec(name="b", image=Path("/i.qcow2"), networking="none")
    paths = Paths(disk=Path("/d/disk.qcow2"), console=Path("/d/c"),
                  console_log=Path("/d/c.log"), qmp=Path("/d/q"))
    args = argv(spec, paths, Host(qemu="qemu-system-x86_64", accel="tcg", aio=aio))
    return next(a for a in args if a.startswith("file=/d/disk.qcow2"))


def test_boot_drive_never_native_with_a_cached_mode() -> None:
    assert _boot_drive("native").endswith("aio=native,cache=none")
    assert _boot_drive("threads").endswith("aio=threads,cache=writeback")


def test_qemu_accepts_our_boot_drive_and_refuses_the_old_one(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)

    def launch(cache: str) -> subprocess.CompletedProcess[bytes]:
        drive = f"file={disk},if=none,id=hd0,format=qcow2,aio=native,cache={cache}"
        return subprocess.run(
            ["qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
             "-drive", drive, "-qmp", "stdio"], capture_output=True, timeout=60,
            input=b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n', check=False)

    assert launch("none").returncode == 0
    refused = launch("writeback")
    assert refused.returncode != 0 and b"aio=native" in refused.stderr


def test_volume_delete_leaves_nothing_behind(cli, tmp_path: Path,  # type: ignore
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg"
    assert cli("package", "init", pkg, "-n", "app", "-t", "App", "-a", "me").code == 0
    monkeypatch.chdir(pkg)
    before = sorted(p.name for p in pkg.rglob("*"))
    assert cli("volume", "create", "data", "-s", "1M").code == 0
    assert cli("volume", "delete", "data").code == 0
    assert sorted(p.name for p in pkg.rglob("*")) == sorted([*before, "volumes"])
    assert list((pkg / "volumes").iterdir()) == []  # no volume, .yaml or .lock
