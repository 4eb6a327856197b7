"""The driver contract: capabilities, normalised states, and the same lifecycle checks
against every driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_gce import fake, gcs  # noqa: F401 (fixtures)
from test_libvirt import libvirtd, lv  # noqa: F401 (fixtures)
from test_openstack import cloud  # noqa: F401 (fixture)
from test_vsphere import vcsim, vs  # noqa: F401 (fixtures)

from capstan.core.config import load
from capstan.core.errors import Conflict, NotFound
from capstan.drivers import aws, gce, openstack, vbox, vsphere
from capstan.drivers.base import (
    Capability,
    Driver,
    ImageStore,
    InstanceSpec,
    InstanceState,
    driver_names,
    get_driver,
)
from capstan.services.disks import open_driver
from capstan.services.instances import RunRequest, create_instance, make_spec

from conftest import wait_for


def test_every_driver_declares_capabilities_as_the_enum(cli) -> None:
    for name in driver_names():
        caps = type(get_driver(name, load())).capabilities
        assert caps and all(isinstance(c, Capability) for c in caps), name


@pytest.mark.parametrize(("table", "raw", "state"), [
    (aws._STATES, "pending", InstanceState.STARTING),
    (aws._STATES, "stopping", InstanceState.STOPPING),
    (aws._STATES, "shutting-down", InstanceState.STOPPING),
    (gce._STATES, "STAGING", InstanceState.STARTING),
    (gce._STATES, "SUSPENDED", InstanceState.PAUSED),
    (gce._STATES, "TERMINATED", InstanceState.STOPPED),
    (openstack._STATES, "BUILD", InstanceState.STARTING),
    (openstack._STATES, "PAUSED", InstanceState.PAUSED),
    (openstack._STATES, "ERROR", InstanceState.CRASHED),
    (vsphere._STATES, "suspended", InstanceState.PAUSED),
    (vbox._STATES, "aborted", InstanceState.CRASHED),
    (vbox._STATES, "stopping", InstanceState.STOPPING),
])
def test_backend_states_map_onto_the_normalised_ones(table: dict[str, InstanceState], raw: str,
                                                     state: InstanceState) -> None:
    assert table[raw] is state


def test_live_states_are_those_a_guest_can_still_run_in() -> None:
    live = {s for s in InstanceState if s.live}
    assert live == {InstanceState.STARTING, InstanceState.RUNNING, InstanceState.PAUSED,
                    InstanceState.STOPPING}


def test_a_spec_the_driver_cannot_do_is_refused_before_create(cli, image, capstan_root) -> None:
    result = cli("run", "-p", "vsphere", "-d", "-i", image, "--volume", image, "x")
    assert result.code == 69
    assert result.err.strip() == "capstan: driver 'vsphere' does not support volumes (--volume)"
    assert not (capstan_root / "instances" / "vsphere").exists()


TOY = Path(__file__).resolve().parents[1] / "toy_driver"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy driver (tests/toy_driver: a module and its dist-info) on sys.path."""
    from stevedore.extension import ExtensionManager

    monkeypatch.syspath_prepend(str(TOY))
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})  # read once per process
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(TOY), os.environ.get("PYTHONPATH")])))


@pytest.mark.toy
def test_a_driver_registered_by_entry_point_alone_shows_up_everywhere(
        cli, image: Path, toy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_TOY_FLAVOUR", "fancy")
    monkeypatch.setenv("CAPSTAN_TOY_TOKEN", "hunter2-secret")
    run = cli("run", "-p", "toy", "-d", "-i", image, "t1")
    assert run.code == 0, run.err
    listed = json.loads(cli("instances", "-p", "toy", "-f", "json").out)
    assert [(r["Name"], r["Platform"], r["Status"]) for r in listed] == [
        ("t1", "toy", "running")]
    printed = cli("config", "print", "-f", "json")
    assert printed.code == 0, printed.err
    rows = {r["Key"]: r for r in json.loads(printed.out)}
    assert (rows["toy_flavour"]["Value"], rows["toy_flavour"]["Source"]) == (
        "fancy", "environment")
    assert rows["toy_token"]["Value"] == "***" and "hunter2" not in printed.out
    assert rows["toy_loud"]["Value"] is False
    found = {r["Check"]: r for r in json.loads(cli("doctor", "-f", "json").out)}
    assert found["toy"]["Detail"] == "toy driver ready (fancy)"
    assert cli("stop", "-p", "toy", "t1").code == 0
    assert cli("delete", "-p", "toy", "t1").code == 0
    assert json.loads(cli("instances", "-p", "toy", "-f", "json").out) == []


@pytest.mark.toy
def test_a_driver_setting_is_checked_when_its_driver_loads(
        cli, image: Path, toy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_TOY_FLAVOUR", "ugly")
    assert cli("images").code == 0  # the toy is not loaded: its settings are not read
    result = cli("run", "-p", "toy", "-d", "-i", image, "t2")
    assert result.code == 78
    assert result.err.strip() == ("capstan: environment: toy_flavour must be one of "
                                  "plain, fancy, not 'ugly'")
    assert cli("config", "print").code == 78


@pytest.mark.toy
def test_a_driver_module_is_imported_only_when_a_command_needs_it(toy: None) -> None:
    code = ("import sys\nfrom capstan.shell import main\n"
            "code = main(['images'])\n"
            "print(sorted(m for m in sys.modules if m.rpartition('.')[2] in "
            "('aws', 'gce', 'openstack', 'vsphere', 'vbox', 'vmware', 'libvirt_driver', "
            "'toy_capstan_driver')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr


def test_config_print_masks_every_secret(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_VSPHERE_PASSWORD", "pw-never-shown")
    monkeypatch.setenv("CAPSTAN_GITHUB_TOKEN", "ghp-never-shown")
    printed = cli("config", "print", "-f", "json")
    rows = {r["Key"]: r["Value"] for r in json.loads(printed.out)}
    assert rows["vsphere_password"] == rows["github_token"] == "***"
    assert "never-shown" not in printed.out + printed.err
    assert rows["aws_upload"] == "ebs" and rows["libvirt_uri"] == "qemu:///system"


FAKES = Path(__file__).resolve().parents[1] / "fakes"
#: driver -> the fixture that gives it a backend (real, simulated or a recording fake)
BACKENDS = {
    "qemu": None,  # real, TCG
    "libvirt": "lv",  # real libvirtd, TCG
    "vsphere": "vs",  # vcsim
    "aws": "aws_env",  # moto_server
    "gce": "fake",  # the fake Compute Engine and gcp-storage-emulator
    "openstack": "cloud",  # the fake Keystone/Glance/Nova/Neutron
    "vbox": "hosted_fakes",  # the recording VBoxManage
    "vmw": "hosted_fakes",  # the recording vmrun
    "toy": "toy",  # the driver of tests/toy_driver
    "firecracker": "vmm_fakes",  # the recording firecracker (its config schema-checked)
    "cloud-hypervisor": "vmm_fakes",  # the recording cloud-hypervisor
}
#: driver -> its test marker where the two names differ
MARKS = {"vmw": "vmware", "firecracker": "microvm", "cloud-hypervisor": "microvm"}


@pytest.fixture
def hosted_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recording fakes of VBoxManage and vmrun first on PATH."""
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "fake-calls.jsonl"))
    monkeypatch.setenv("FAKE_STATE", str(tmp_path / "fake-state.json"))
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    monkeypatch.setenv("CAPSTAN_CHILD_ENV", "FAKE_LOG,FAKE_STATE,FAKE_FAIL,FAKE_ACPI")


@pytest.fixture
def vmm_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recording fakes of firecracker and cloud-hypervisor first on PATH, booting the
    probe kernel by default."""
    from capstan.image.loader import probe_kernel_path

    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    for key in ("CAPSTAN_FIRECRACKER_KERNEL", "CAPSTAN_CLOUD_HYPERVISOR_KERNEL"):
        monkeypatch.setenv(key, str(probe_kernel_path()))


class TestDriverContract:
    """The same lifecycle checks against every driver."""

    @pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, MARKS.get(name, name)))
                            for name in sorted(BACKENDS)])
    def driver(self, request: pytest.FixtureRequest) -> Driver:
        backend = BACKENDS[request.param]
        if backend is not None:
            request.getfixturevalue(backend)
        return open_driver(request.param, load())

    @pytest.fixture
    def spec(self, driver: Driver, image: Path) -> InstanceSpec:
        """A guest that stays up (the probe's @hold) with the least the driver needs."""
        return make_spec(load(), str(image), f"contract-{uuid.uuid4().hex[:6]}",
                         RunRequest(memory="256M", cpus=1, execute="/x @hold"))

    def test_lifecycle(self, driver: Driver, spec: InstanceSpec) -> None:
        made = create_instance(driver, spec)
        assert (made.name, made.driver) == (spec.name, driver.name)
        assert not driver.get(spec.name).state.live
        assert spec.name in [i.name for i in driver.list()]
        started = driver.start(spec.name)
        assert started.state.live, started
        wait_for(lambda: driver.get(spec.name).state is InstanceState.RUNNING,
                 what=f"{driver.name} instance running")
        stopped = driver.stop(spec.name, timeout=5)
        assert stopped.name == spec.name
        wait_for(lambda: not driver.get(spec.name).state.live,
                 what=f"{driver.name} instance stopped")
        assert driver.get(spec.name).state is InstanceState.STOPPED
        driver.delete(spec.name)
        with pytest.raises(NotFound):
            driver.get(spec.name)
        assert spec.name not in [i.name for i in driver.list()]

    def test_a_second_create_of_one_name_conflicts(self, driver: Driver,
                                                    spec: InstanceSpec) -> None:
        create_instance(driver, spec)
        try:
            with pytest.raises(Conflict):
                create_instance(driver, spec)
        finally:
            driver.delete(spec.name)

    def test_an_unknown_instance_is_not_found(self, driver: Driver) -> None:
        for call in (driver.get, driver.start, driver.delete):
            with pytest.raises(NotFound):
                call("contract-nobody")


def test_a_driver_keeps_images_exactly_when_it_is_an_image_store(cli) -> None:
    for name in driver_names():
        driver = open_driver(name, load())
        assert (Capability.IMAGES in driver.capabilities) is isinstance(driver, ImageStore), name


@pytest.mark.aws
def test_an_upload_says_what_it_made_and_whether_it_reused_one(cli, image: Path,
                                                               aws_env: str) -> None:
    first = json.loads(cli("image", "upload", image, "--name", "st", "-f", "json").out)
    assert first["Reused"] is False and first["Bytes sent"] > 0 and len(first["SHA256"]) == 64
    again = json.loads(cli("image", "upload", image, "-f", "json").out)
    assert (again["ID"], again["SHA256"], again["Reused"], again["Bytes sent"]) == (
        first["ID"], first["SHA256"], True, 0)
    assert cli("rmi", "-p", "aws", first["ID"]).code == 0
