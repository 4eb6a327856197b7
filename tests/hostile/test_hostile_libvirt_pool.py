"""Hostile libvirt pools: a planted base volume, domain metadata naming volumes with
path tricks, volume paths the host reports that cannot name a backing file."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from test_libvirt import SYSTEM, _log, libvirtd, lv, pool  # noqa: F401 - fixtures

from capstan.core.errors import RemoteError
from capstan.drivers import libvirt_pool
from capstan.drivers.libvirt_pool import Base, Pool, host_path
from capstan.drivers.libvirt_xml import NS

from conftest import wait_for
from hostile_kit import Sandbox, check

pytestmark = pytest.mark.libvirt

DIGEST = "ab" * 32
BASE = Base.of(DIGEST)


def _volumes(name: str) -> list[str]:
    found = libvirt.open(SYSTEM).storagePoolLookupByName(name)
    found.refresh(0)
    return sorted(found.listVolumes())


def test_a_planted_base_without_marker_is_never_used(
        cli, image: Path, pool: str, lv: str, sandbox: Sandbox,  # noqa: F811
        capstan_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base volume in the pool without its marker (a killed upload, or a plant whose
    header reads a host file) is replaced, not booted."""
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    monkeypatch.setattr(libvirt_pool, "STALL_SECONDS", 1.0)
    base = Base.of(hashlib.sha256(image.read_bytes()).hexdigest())
    plant = sandbox.root.parent / "plant.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    str(sandbox.victim), str(plant), "64M"], check=True)
    Pool(libvirt.open(SYSTEM), SYSTEM, pool).upload(plant, base.volume, [])
    name = f"lvh-{uuid.uuid4().hex[:6]}"
    assert cli("run", "-d", "-i", image, "-e", "/fresh", name).code == 0
    wait_for(lambda: "PROBE done" in _log(capstan_root, name), what="probe report")
    assert "PROBE cmdline=[--rootfs=rofs /fresh]" in _log(capstan_root, name)
    vol = libvirt.open(SYSTEM).storagePoolLookupByName(pool).storageVolLookupByName(
        base.volume)
    assert vol.info()[1] != plant.stat().st_size
    assert base.marker in _volumes(pool)
    assert cli("delete", name).code == 0
    assert _volumes(pool) == []


@pytest.mark.parametrize(("volume", "base"), [
    ("../../outside/victim", "../../outside/victim"),
    ("x/../victim", f"{BASE.volume}/../../victim"),
    ("/etc/passwd", f"../{BASE.volume}"),
    ("victim", BASE.volume.replace(".qcow2", ".ok")),
])
def test_metadata_never_names_what_delete_removes(
        cli, pool: str, lv: str, sandbox: Sandbox, tmp_path: Path,  # noqa: F811
        volume: str, base: str) -> None:
    """A domain with our metadata (defined by anyone with access to libvirt) naming
    volumes with path tricks: delete removes its own overlay name and nothing else."""
    keep = Pool(libvirt.open(SYSTEM), SYSTEM, pool)
    kept = tmp_path / "kept"
    kept.write_bytes(b"k" * 512)
    for other in (BASE.volume, BASE.marker, "victim", "other.qcow2"):
        keep.upload(kept, other, [])
    name = f"lvh-{uuid.uuid4().hex[:6]}"
    meta = "".join(f"<{k}>{v}</{k}>" for k, v in
                   {"pool": pool, "volume": volume, "base": base}.items())
    xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
           f"<metadata><capstan:instance xmlns:capstan='{NS}'>{meta}</capstan:instance>"
           "</metadata><os><type arch='x86_64'>hvm</type></os></domain>")
    libvirt.open(SYSTEM).defineXML(xml)
    assert cli("delete", name).code == 0
    assert name not in [d.name() for d in libvirt.open(SYSTEM).listAllDomains(0)]
    assert _volumes(pool) == sorted([BASE.volume, BASE.marker, "victim", "other.qcow2"])


@pytest.mark.parametrize("path", [
    "relative/" + BASE.volume,
    "/pool/../etc/" + BASE.volume,
    "/pool/other.qcow2",
    f"/pool/{BASE.volume}/",
    f"/pool/\n/{BASE.volume}",
    f"/pool/\x1b[31m/{BASE.volume}",
    "/" + "p" * 1024 + "/" + BASE.volume,
    f"json:{{\"file\":\"/etc/shadow\"}}/{BASE.volume}",
    12,
    None,
])
def test_a_reported_volume_path_must_name_that_volume(path: Any) -> None:
    with pytest.raises(RemoteError, match=f"unusable path for volume {BASE.volume}") as err:
        host_path(path, BASE.volume)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)


@pytest.mark.parametrize("name", [
    f"{BASE.volume}/../x", f"../{BASE.volume}", BASE.volume.upper(), BASE.marker,
    BASE.volume + "\n", "capstan-base-" + "0" * 23 + ".qcow2", "",
])
def test_a_base_named_in_metadata_must_have_our_shape(name: str) -> None:
    assert Base.named(name) is None


def test_an_unusable_pool_path_stops_the_run(cli, image: Path, lv: str,  # noqa: F811
                                             sandbox: Sandbox, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool whose directory has a control character in its name: its volume paths
    cannot go into an overlay's header (exit 75) and no domain is defined."""
    target = tmp_path / "po\tol"
    target.mkdir(mode=0o711)
    name = f"capstan-test-{uuid.uuid4().hex[:6]}"
    conn = libvirt.open(SYSTEM)
    odd = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target>"
        "</pool>", 0)
    try:
        monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", name)
        instance = f"lvh-{uuid.uuid4().hex[:6]}"
        check(cli("run", "-d", "-i", image, instance), 75, "unusable path for volume")
        assert instance not in [d.name() for d in conn.listAllDomains(0)]
        assert f"{instance}.qcow2" not in odd.listVolumes()
    finally:
        for vol in odd.listAllVolumes(0):
            vol.delete(0)
        odd.destroy()
