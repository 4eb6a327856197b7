"""Hostile addresses on their way into a dependent's FLEET_HOSTS: leases, ARP entries and
DHCP reservations a (remote, hostile) libvirtd reports, ports and addresses a driver
reports, and a host address in the fleet file. None reaches a command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import libvirt
import pytest

from capstan.core.errors import InputError
from capstan.drivers import libvirt_net
from capstan.drivers.base import Instance, InstanceState
from capstan.services.fleet.reach import _where

from hostile_kit import Sandbox, check

MAC = "02:aa:bb:cc:dd:ee"
BAD = ["10.0.0.5;reboot", "10.0.0.5 --env=X=1", "not-an-ip", "10.0.0.5\n", "",
       "1" * 5000, "10.0.0.256", "../../etc"]


class _Net:
    def __init__(self, ip: str) -> None:
        self.ip = ip

    def XMLDesc(self, _flags: int) -> str:
        return ("<network><ip address='10.0.0.1' netmask='255.255.255.0'><dhcp>"
                f"<host mac='{MAC}' name='x' ip={json.dumps(self.ip)}/></dhcp></ip></network>")


class _Dom:
    """A running domain whose libvirtd answers with *leases* and a reservation *held*."""

    def __init__(self, leases: Any, held: str) -> None:
        self.leases, self.held = leases, held

    def isActive(self) -> bool:
        return True

    def interfaceAddresses(self, _source: int, _flags: int) -> Any:
        return self.leases

    def connect(self) -> Any:
        held = self.held

        class _Conn:
            def networkLookupByName(self, _name: str) -> _Net:
                return _Net(held)
        return _Conn()


def _leases(addr: Any) -> dict[str, Any]:
    return {"vnet0": {"hwaddr": MAC, "addrs": [{"addr": addr, "prefix": 24, "type": 0}]}}


META = {"network": "network:n", "mac": MAC}


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_lease_falls_back_to_the_reservation(bad: str) -> None:
    assert libvirt_net.reported(_Dom(_leases(bad), "10.0.0.7"), META) == {"address": "10.0.0.7"}


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_reservation_is_no_address(bad: str) -> None:
    assert libvirt_net.reported(_Dom({}, bad), META) == {}


@pytest.mark.parametrize("leases", [None, [], "x", {"vnet0": "x"}, {"vnet0": {"addrs": "x"}},
                                    {"vnet0": {"hwaddr": MAC, "addrs": [["10.0.0.9"]]}},
                                    {"vnet0": {"hwaddr": "02:00:00:00:00:01",
                                               "addrs": [{"addr": "10.0.0.9"}]}}])
def test_malformed_answers_are_no_address(leases: Any) -> None:
    assert libvirt_net.reported(_Dom(leases, "nope"), META) == {}


def test_a_libvirt_error_is_no_address() -> None:
    class _Failing(_Dom):
        def connect(self) -> Any:
            raise libvirt.libvirtError("gone")
    assert libvirt_net.reported(_Failing({}, "10.0.0.7"), META) == {}


@pytest.mark.parametrize(("extra", "ports"), [
    *(({"address": b}, ()) for b in BAD if b),
    ({}, ("10.0.0.5;reboot:80->80/tcp",)),
    ({}, ("10.0.0.5:99999->80/tcp",)),
    ({}, ("10.0.0.5:8x->80/tcp",)),
    ({}, ("x y:80->80/tcp",)),
])
def test_a_driver_reporting_a_bad_address_is_refused(extra: dict[str, str],
                                                     ports: tuple[str, ...]) -> None:
    inst = Instance("f-db-1", "libvirt", InstanceState.RUNNING, "", ports=ports, extra=extra)
    with pytest.raises(InputError, match="not a valid") as caught:
        _where(inst, "192.0.2.1", "there")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_a_host_address_that_is_no_address_is_refused_before_anything_starts(
        cli, sandbox: Sandbox, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = sandbox.root.parent / "fleet"
    work.mkdir()
    image.rename(work / "app.qcow2")
    (work / "capstan-fleet.yaml").write_text(
        "name: f\nhosts:\n  here: {driver: qemu}\n"
        '  there: {driver: qemu, address: "10.0.0.5;reboot --env=X=1"}\n'
        "services:\n"
        "  db: {image: app.qcow2, host: there, command: /db @hold, ports: ['0:80'],"
        " memory: 128M}\n"
        "  web: {image: app.qcow2, host: here, command: /web, depends_on: [db], memory: 128M}\n")
    monkeypatch.chdir(work)
    check(cli("up", "-t", "2"), 65, "hosts.there.address: expected a host name or IP address")
    assert not (sandbox.root / "fleets").exists() or not any((sandbox.root / "fleets").iterdir())
    assert not (sandbox.root / "instances").exists() or \
        not any((sandbox.root / "instances").rglob("*.pid"))
