"""The OpenStack driver against the FAKE cloud in tests/fakes/openstack_cloud.py (Keystone
v3, Glance v2, Nova v2.1, Neutron), reached through openstacksdk and a clouds.yaml."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.core.errors import ConfigError
from capstan.drivers.openstack import Flavor, pick_flavor
from capstan.image import cmdline as osv_cmdline

from conftest import expect_errors
from fakes.openstack_cloud import PASSWORD, FakeOpenStack

pytestmark = [pytest.mark.openstack,
              pytest.mark.filterwarnings("ignore:::openstack")]  # the SDK's own deprecations


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenStack]:
    """The fake cloud, named ``fake`` in a clouds.yaml that openstacksdk finds."""
    for key in ("OS_CLOUD", "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME",
                "OS_REGION_NAME", "OS_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    with FakeOpenStack() as fake:
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(fake.clouds_yaml())
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        monkeypatch.setenv("CAPSTAN_OPENSTACK_CLOUD", "fake")
        monkeypatch.setattr("capstan.drivers.openstack.OpenStackDriver.poll_seconds", 0.0)
        yield fake


def flavors(*rows: tuple[str, int, int]) -> list[Flavor]:
    return [Flavor(fid, fid, disk, ram, 1) for fid, disk, ram in rows]


@pytest.mark.parametrize(("comment", "offered", "optimal"), [
    # Capstan's own cases (provider/openstack/openstack_internal_test.go), picked for a
    # 1 GiB disk with memory ignored, as selectBestFlavor saw them
    ("prefer smaller disk for equal memory",
     flavors(("f01", 30, 1), ("f02", 10, 1), ("f03", 20, 1), ("f04", 40, 1)), "f02"),
    ("prefer smaller disk regardless memory",
     flavors(("f01", 50, 1), ("f02", 1, 16), ("f03", 40, 1), ("f04", 20, 1)), "f02"),
    ("prefer smaller memory for equal hdd",
     flavors(("f01", 10, 3), ("f02", 10, 2), ("f03", 10, 1), ("f04", 10, 8)), "f03"),
])
def test_flavor_picker_on_capstans_cases(comment: str, offered: list[Flavor],
                                         optimal: str) -> None:
    assert pick_flavor(offered, 1024).id == optimal, comment


def test_flavor_picker_fits_memory_cpus_and_disk() -> None:
    with pytest.raises(ConfigError, match="No matching flavors to pick from"):
        pick_flavor([], 1024)  # Capstan's "no matching flavor" case
    with pytest.raises(ConfigError, match="Please specify disk size"):
        pick_flavor(flavors(("a", 1, 1)), 0)
    offered = [Flavor("tiny", "tiny", 1, 512, 1), Flavor("small", "small", 20, 2048, 1),
               Flavor("c1", "c1", 10, 1024, 2), Flavor("big", "big", 80, 8192, 4)]
    assert pick_flavor(offered, 1024, 512, 1).id == "tiny"
    assert pick_flavor(offered, 1024, 1024, 2).id == "c1"  # memory and vCPUs rule out tiny
    assert pick_flavor(offered, 15 * 1024, 1024, 1).id == "small"  # 15 GiB disk
    assert pick_flavor(offered, 1025, -1, 3).id == "big"
    with pytest.raises(ConfigError, match="No matching flavors"):
        pick_flavor(offered, 1024, 16384)


def test_upload_reuse_list_rmi(cli, cloud: FakeOpenStack, image: Path) -> None:
    result = cli("image", "upload", "-p", "openstack", image, "--name", "web", "-f", "json")
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    glance = cloud.images[shown["ID"]]
    assert glance["disk_format"] == "qcow2" and glance["container_format"] == "bare"
    assert (glance["hw_disk_bus"], glance["hw_vif_model"]) == ("virtio", "virtio")
    assert set(glance["tags"]) == {"tagOSv", "tagCapstan"} and glance["min_disk"] == 1
    assert cloud.data[shown["ID"]] == image.read_bytes()  # a plain qcow2 goes as it is
    again = json.loads(cli("image", "upload", "-p", "openstack", image, "-f", "json").out)
    assert (again["ID"], again["Bytes sent"]) == (shown["ID"], 0)  # same checksum: reused
    rows = json.loads(cli("images", "-p", "openstack", "-f", "json").out)
    assert [(r["Name"], r["ID"], r["SHA256"]) for r in rows] == \
        [("web", shown["ID"], hashlib.sha256(image.read_bytes()).hexdigest())]
    assert cli("rmi", "-p", "openstack", "web").code == 0
    assert cloud.images == {}


def test_run_instances_logs_stop_delete(cli, cloud: FakeOpenStack, image: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CAPSTAN_OPENSTACK_FLOATING_IP", "true")
    planned = cli("run", "-p", "openstack", "--dry-run", "-i", image, "-m", "1G", "web")
    assert planned.code == 0, planned.err
    assert "would create server web: the smallest flavor with 1024 MiB, 2 vCPUs" in planned.out
    assert "would attach a floating IP" in planned.out and cloud.requests == []
    result = cli("run", "-p", "openstack", "-d", "-i", image, "-m", "1G", "-e", "/hello 3",
                 "web")
    assert result.code == 0, result.err
    (server,) = cloud.servers.values()
    assert server["flavor"]["id"] == "4"  # c1.small: 10 GiB, 1 GiB RAM, 2 vCPUs
    assert server["name"] == "web" and server["metadata"] == {"capstan-managed": "true"}
    data = cloud.data[server["image"]["id"]]
    assert data[:4] == b"QFI\xfb"  # the overlay was flattened into one qcow2
    (fip,) = cloud.floating.values()
    assert fip["port_id"] and fip["floating_network_id"] == "net-public"
    assert fip["floating_ip_address"] in result.out
    rows = json.loads(cli("instances", "-p", "openstack", "-f", "json").out)
    assert [(r["Name"], r["Status"]) for r in rows] == [("web", "running")]
    capfd.readouterr()
    assert cli("logs", "-p", "openstack", "web").code == 0
    assert "Booted on the fake cloud." in capfd.readouterr().out
    assert cli("stop", "-p", "openstack", "web").code == 0 and server["status"] == "SHUTOFF"
    assert cli("start", "-p", "openstack", "web").code == 0 and server["status"] == "ACTIVE"
    assert cli("delete", "-p", "openstack", "web").code == 0
    assert cloud.servers == {} and cloud.floating == {}
    assert cli("instances", "-p", "openstack", "-f", "value").out == ""
    assert cli("rmi", "-p", "openstack", "web").code == 0 and cloud.images == {}


def test_command_line_reaches_the_uploaded_disk(cli, cloud: FakeOpenStack, image: Path,
                                                tmp_path: Path) -> None:
    assert cli("run", "-p", "openstack", "-d", "-i", image, "-e", "/hello 4", "cmd").code == 0
    (server,) = cloud.servers.values()
    uploaded = tmp_path / "uploaded.qcow2"
    uploaded.write_bytes(cloud.data[server["image"]["id"]])
    from capstan.image.inspect import OsvImage

    with OsvImage(uploaded) as img:
        assert osv_cmdline.split(img.cmdline)[1] == "/hello 4"
    assert cli("delete", "-p", "openstack", "cmd").code == 0


def test_named_flavor_and_failed_create(cli, cloud: FakeOpenStack, image: Path,
                                        capstan_root: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_OPENSTACK_FLAVOR", "m1.large")
    monkeypatch.setenv("CAPSTAN_OPENSTACK_NETWORK", "private")
    monkeypatch.setenv("CAPSTAN_OPENSTACK_FLOATING_IP", "true")
    cloud.fail_servers = "No valid host was found."
    result = cli("run", "-p", "openstack", "-d", "-i", image, "web")
    assert (result.code, result.err.count("\n")) == (69, 1), result.err
    assert "went to ERROR: No valid host was found." in result.err
    create = next(b for m, p, b in cloud.requests if m == "POST" and p.endswith("/servers"))
    assert create["server"]["flavorRef"] == "5"
    assert create["server"]["networks"] == [{"uuid": "net-private"}]
    # the server is deleted, no floating IP was made, and no record is left
    assert cloud.servers == {} and cloud.floating == {}
    assert not (capstan_root / "instances" / "openstack" / "web").exists()
    assert cli("rmi", "-p", "openstack", "web").code == 0


def test_bad_input(cli, cloud: FakeOpenStack, image: Path, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(cloud.clouds_yaml().replace(PASSWORD, "not-the-password"))
    cases = [
        ({"CAPSTAN_OPENSTACK_FLAVOR": "m9.mega"}, ("run", "-p", "openstack", "-d", "-i",
                                                   image, "x"), 78,
         "unknown OpenStack flavor 'm9.mega' (have: c1.small, m1.large"),
        ({}, ("run", "-p", "openstack", "-d", "-m", "64G", "-i", image, "x"), 78,
         "No matching flavors to pick from"),
        ({"CAPSTAN_OPENSTACK_NETWORK": "nowhere"}, ("run", "-p", "openstack", "-d", "-i",
                                                    image, "x"), 78,
         "unknown OpenStack network 'nowhere'"),
        ({"CAPSTAN_OPENSTACK_CLOUD": "elsewhere"}, ("images", "-p", "openstack"), 78,
         "OpenStack configuration"),
        ({"OS_CLIENT_CONFIG_FILE": str(wrong)}, ("images", "-p", "openstack"), 78,
         "OpenStack rejected the credentials"),
        ({"CAPSTAN_OPENSTACK_CLOUD": "", "OS_CLIENT_CONFIG_FILE": str(tmp_path / "none")},
         ("images", "-p", "openstack"), 78, "no OpenStack credentials"),
        ({}, ("run", "-p", "openstack", "-i", image, "bad name"), 64,
         "invalid instance name"),
        ({}, ("rmi", "-p", "openstack", "nope"), 65, "no pycapstan Glance image 'nope'"),
        ({}, ("logs", "-p", "openstack", "nope"), 65, "no such instance: nope"),
    ]
    expect_errors(cli, monkeypatch, cases)
    assert cloud.servers == {} and cli("instances", "-p", "openstack", "-f", "value").out == ""
    for module in ("openstack",):
        with monkeypatch.context() as m:  # the extra is not installed
            m.setitem(__import__("sys").modules, module, None)
            expect_errors(cli, monkeypatch, [({}, ("images", "-p", "openstack"), 69,
                                              "pip install 'pycapstan[openstack]'")])


def test_children_never_see_the_credentials(cli, cloud: FakeOpenStack, image: Path,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu-img and qemu-io (converting the run's overlay) get no OS_* secret."""
    seen = tmp_path / "child-env.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-img", "qemu-io"):
        real = shutil.which(tool)
        wrapper = bin_dir / tool
        wrapper.write_text(f"#!/bin/sh\nenv >> {seen}\nexec {real} \"$@\"\n")
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("OS_PASSWORD", PASSWORD)
    monkeypatch.setenv("OS_USERNAME", "capstan")
    assert cli("run", "-p", "openstack", "-d", "-i", image, "-e", "/hello 5", "env").code == 0
    children = seen.read_text()
    assert "PATH=" in children  # the wrappers ran
    assert PASSWORD not in children and "OS_" not in children
    assert cli("delete", "-p", "openstack", "env").code == 0


def test_identical_disks_made_at_once_share_one_upload(cloud: FakeOpenStack, image: Path,
                                                       capstan_root: Path) -> None:
    """No block deltas on Glance: each distinct command line is one upload, and instances
    whose disks are identical share it, also when created in parallel (a fleet's up)."""
    from concurrent.futures import ThreadPoolExecutor

    from capstan.core.config import load
    from capstan.drivers.cloud import CloudDriver
    from capstan.drivers.model import InstanceSpec
    from capstan.services.disks import open_driver

    driver = open_driver("openstack", load())
    assert isinstance(driver, CloudDriver)
    specs = [InstanceSpec(f"w{n}", image, memory_mib=256, cpus=1,
                          cmdline=f"--env=GROUP={n % 2} /hello") for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(driver.create, specs))
    assert len(cloud.images) == 2
    assert len({driver.load_record(s.name)["image"] for s in specs}) == 2
    for s in specs:
        driver.delete(s.name)
