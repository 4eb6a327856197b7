"""Fleet hosts without guests: the hosts: map, placement, host settings, FLEET_HOSTS plans."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.core import config as config_mod
from capstan.core.errors import BackendError, InputError
from capstan.services.fleet import load_fleet, plan
from capstan.services.fleet.hosts import HostSet, HostUnreachable, place

HOSTS = """\
name: duo
hosts:
  here: {driver: qemu}
  there:
    driver: libvirt
    libvirt_uri: qemu+ssh://root@192.0.2.7/system
    libvirt_pool: ${DUO_POOL}
  cloud: {driver: vsphere, vsphere_password: "${DUO_SECRET}", address: 198.51.100.9}
services:
  db: {image: app.qcow2, host: there, ports: ["0:5432"], command: /db}
  web: {image: app.qcow2, count: 3, spread: [here, there], depends_on: [db], command: /web}
  solo: {image: app.qcow2, depends_on: [web], command: /solo}
"""


@pytest.fixture
def duo(image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "duo"
    work.mkdir()
    image.rename(work / "app.qcow2")
    (work / "capstan-fleet.yaml").write_text(HOSTS)
    monkeypatch.setenv("DUO_POOL", "pool7")
    monkeypatch.setenv("DUO_SECRET", "s3cr3t-value")
    return work / "capstan-fleet.yaml"


def test_round_robin_by_index() -> None:
    assert place(range(1, 6), ("a", "b")) == {1: "a", 2: "b", 3: "a", 4: "b", 5: "a"}


def test_by_free_memory_when_every_host_reports_it() -> None:
    placed = place(range(1, 6), ("a", "b"), free={"a": 1000, "b": 300}, memory_mib=256)
    assert Counter(placed.values()) == {"a": 4, "b": 1}  # 1000 -> 744, 488, 232; 300
    assert placed[1] == "a"  # the most free first
    # one host that does not say: round-robin
    assert place(range(1, 5), ("a", "b"), free={"a": 1000, "b": None}, memory_mib=256) == \
        {1: "a", 2: "b", 3: "a", 4: "b"}


def test_running_instances_stay_where_they_are() -> None:
    placed = place(range(1, 4), ("a", "b"), free={"a": 9000, "b": 10}, memory_mib=1,
                   kept={1: "b", 2: "gone"})
    assert placed == {1: "b", 2: "a", 3: "a"}  # 2's host left the list: placed again


@settings(max_examples=60, deadline=None)
@given(count=st.integers(0, 64), hosts=st.lists(st.sampled_from("abcdef"), min_size=1,
                                                max_size=6, unique=True),
       free=st.lists(st.integers(0, 1 << 20) | st.none(), min_size=6, max_size=6))
def test_every_instance_lands_on_a_listed_host(count: int, hosts: list[str],
                                               free: list[int | None]) -> None:
    names = tuple(hosts)
    placed = place(range(1, count + 1), names, free=dict(zip(names, free, strict=False)),
                   memory_mib=128)
    assert sorted(placed) == list(range(1, count + 1))
    assert set(placed.values()) <= set(names)
    if any(f is None for f in free[:len(names)]):
        spread = Counter(placed.values())
        assert max(spread.values(), default=0) - min(spread.values(), default=0) <= 1


def test_plan_places_and_addresses_across_hosts(duo: Path, capstan_root: Path) -> None:
    fleet = load_fleet(duo)
    assert fleet.hosts["there"].reach_address() == "192.0.2.7"
    assert fleet.hosts["cloud"].reach_address() == "198.51.100.9"
    members = {m.name: m for m in plan(config_mod.load(), fleet)}
    assert {n: m.host for n, m in members.items()} == {
        "duo-db-1": "there", "duo-web-1": "here", "duo-web-2": "there", "duo-web-3": "here",
        "duo-solo-1": "local"}
    # libvirt joins no private segment; QEMU hosts have one each (local keeps today's)
    assert members["duo-db-1"].address is None and members["duo-web-2"].address is None
    assert members["duo-web-1"].spec.private_network == f"duo@{duo}#here"
    assert members["duo-solo-1"].spec.private_network == f"duo@{duo}"
    web1 = str(members["duo-web-1"].spec.cmdline)
    assert "FLEET_HOSTS=duo-db-1=remote" in web1  # filled in when db runs
    assert members["duo-web-1"].remote == ("duo-db-1",)
    assert members["duo-web-2"].remote == ()  # same host as db
    assert "FLEET_HOSTS" not in str(members["duo-web-2"].spec.cmdline)
    solo = members["duo-solo-1"]
    assert solo.remote == ("duo-web-1", "duo-web-2", "duo-web-3")
    moved = plan(config_mod.load(), fleet, placement={"duo-web-1": "there"})
    assert moved[1].host == "there" and moved[1].digest != members["duo-web-1"].digest


def test_host_settings_reach_the_driver_and_secrets_stay_hidden(duo: Path,
                                                               capstan_root: Path) -> None:
    fleet = load_fleet(duo)
    hosts = HostSet(config_mod.load(), fleet.hosts, str(duo))
    there = hosts.driver("there")
    assert (there.uri, there.pool) == ("qemu+ssh://root@192.0.2.7/system", "pool7")  # type: ignore[attr-defined]
    assert hosts.driver_name("there") == "libvirt" and hosts.driver_name("local") == "qemu"
    assert hosts.private("here") and not hosts.private("there")
    cloud = hosts.driver("cloud")
    assert cloud.config.vsphere_password == "s3cr3t-value"
    err = hosts.unreachable("cloud", BackendError("login s3cr3t-value refused"))
    assert isinstance(err, HostUnreachable) and str(err) == "host cloud: login *** refused"
    assert err.exit_code == 69
    with pytest.raises(HostUnreachable, match="host gone: not among the hosts"):
        hosts.driver("gone")


def test_a_secret_variable_that_is_not_set(duo: Path, capstan_root: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUO_SECRET")
    hosts = HostSet(config_mod.load(), load_fleet(duo).hosts, str(duo))
    with pytest.raises(HostUnreachable, match="DUO_SECRET, which is not set") as caught:
        hosts.driver("cloud")
    assert caught.value.exit_code == 78


def test_files_without_hosts_parse_as_before(duo: Path) -> None:
    duo.write_text("services:\n  a: {image: app.qcow2}\n")
    fleet = load_fleet(duo)
    assert fleet.hosts == {} and fleet.services[0].hosts == ()
    duo.write_text("services:\n  a: {image: app.qcow2, host: local}\n")
    assert load_fleet(duo).services[0].hosts == ("local",)
    duo.write_text("services:\n  a: {image: app.qcow2, spread: [local, x]}\n")
    with pytest.raises(InputError, match="unknown host 'x'"):
        load_fleet(duo)
