"""One upload per host: a pooled image's base volume is shared by the overlay volumes of
its instances, locally and through qemu+ssh:// (the fixtures of test_libvirt)."""

from __future__ import annotations

import hashlib
import threading
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt
import pytest
from test_libvirt import SYSTEM, _log, libvirtd, lv, pool, ssh_uri  # noqa: F401 - fixtures

from capstan.core.config import load
from capstan.drivers import libvirt_pool
from capstan.drivers.base import InstanceSpec
from capstan.drivers.libvirt_pool import Base, Pool
from capstan.services.disks import open_driver

from conftest import wait_for

pytestmark = pytest.mark.libvirt

SMALL = 1 << 20  # an overlay volume holds the command line's cluster, nothing more


def storage(name: str) -> Any:
    found = libvirt.open(SYSTEM).storagePoolLookupByName(name)
    found.refresh(0)
    return found


def sizes(name: str) -> dict[str, int]:
    """Volume name -> bytes allocated on the host."""
    return {v.name(): v.info()[2] for v in storage(name).listAllVolumes(0)}


def base_of(image: Path) -> Base:
    return Base.of(hashlib.sha256(image.read_bytes()).hexdigest())


def boot_output(name: str) -> str:
    """The console of domain *name* booted once more, from its first byte to the probe's
    power-off (a remote host keeps no log we can read: the console, read locally)."""
    conn = libvirt.open(SYSTEM)
    dom = conn.lookupByName(name)
    wait_for(lambda: not dom.isActive(), what=f"{name}'s first power-off")
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    stream = conn.newStream(0)
    dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    dom.resume()
    seen = bytearray()
    while b"PROBE done" not in seen and (chunk := stream.recv(4096)):
        seen.extend(chunk)
    stream.abort()
    return seen.decode(errors="replace")


def test_two_instances_over_ssh_upload_the_image_once(
        cli, image: Path, pool: str, ssh_uri: str,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_LIBVIRT_URI", ssh_uri)
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    before = sizes(pool)
    names = [f"lvp-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    with ThreadPoolExecutor(2) as runner:  # two programs racing for the base volume
        runs = list(runner.map(
            lambda n: cli.program("run", "-d", "-i", image, "-e", f"/{n}", n), names))
    for name, run in zip(names, runs, strict=True):
        assert run.returncode == 0, run.stderr
        assert f"PROBE cmdline=[--rootfs=rofs /{name}]" in boot_output(name)
    base = base_of(image)
    volumes = sizes(pool)
    assert sorted(set(volumes) - set(before)) == sorted(
        [base.volume, base.marker, *(f"{n}.qcow2" for n in names)])
    assert all(volumes[f"{n}.qcow2"] < SMALL for n in names), volumes
    path = storage(pool).storageVolLookupByName(base.volume).path()
    for name in names:
        disk = ET.fromstring(libvirt.open(SYSTEM).lookupByName(name).XMLDesc(0)).find(
            "devices/disk")
        assert disk is not None and disk.find("source").get("volume") == f"{name}.qcow2"  # type: ignore[union-attr]
        assert disk.find("backingStore/source").get("file") == path  # type: ignore[union-attr]
    assert cli("delete", names[0]).code == 0
    assert base.volume in sizes(pool)  # the other instance still uses it
    assert cli("delete", names[1]).code == 0
    assert sizes(pool) == before


def test_a_fleet_of_threads_uploads_once(image: Path, pool: str, lv: str,  # noqa: F811
                                         capstan_root: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    uploads: list[str] = []
    real = Pool._send_file

    def counted(self: Pool, vol: Any, source: Path, volume: str) -> None:
        uploads.append(volume)
        real(self, vol, source, volume)

    monkeypatch.setattr(Pool, "_send_file", counted)
    names = [f"lvp-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    barrier = threading.Barrier(len(names))

    def create(name: str) -> None:
        driver = open_driver("libvirt", load())
        barrier.wait()
        driver.create(InstanceSpec(name=name, image=image, memory_mib=128,
                                   cmdline=f"--rootfs=rofs /{name}"))
        driver.start(name)

    with ThreadPoolExecutor(len(names)) as runner:
        list(runner.map(create, names))
    base = base_of(image)
    assert sorted(uploads) == sorted([base.volume, *(f"{n}.qcow2" for n in names)])
    for name in names:
        wait_for(lambda n=name: "PROBE done" in _log(capstan_root, n), what="probe report")
        assert f"PROBE cmdline=[--rootfs=rofs /{name}]" in _log(capstan_root, name)
    driver = open_driver("libvirt", load())
    for name in names:
        driver.delete(name)
    assert sizes(pool) == {}


def test_an_abandoned_base_is_uploaded_again(cli, image: Path, pool: str, lv: str,  # noqa: F811
                                             capstan_root: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What a killed upload leaves: the base volume, part written, and no marker."""
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    monkeypatch.setattr(libvirt_pool, "STALL_SECONDS", 1.0)
    base = base_of(image)
    target = Pool(libvirt.open(SYSTEM), SYSTEM, pool)
    part = image.parent / "part"
    part.write_bytes(image.read_bytes()[:65536])
    target.upload(part, base.volume, [])
    name = f"lvp-{uuid.uuid4().hex[:6]}"
    assert cli("run", "-d", "-i", image, "-e", "/again", name).code == 0
    wait_for(lambda: "PROBE done" in _log(capstan_root, name), what="probe report")
    assert "PROBE cmdline=[--rootfs=rofs /again]" in _log(capstan_root, name)
    assert base.marker in sizes(pool)
    path = storage(pool).storageVolLookupByName(base.volume).path()
    assert Path(path).read_bytes() != part.read_bytes()  # a new, whole upload
    assert cli("delete", name).code == 0
    assert sizes(pool) == {}
