"""A fleet whose dependency runs on a libvirt network and whose dependent runs on local
QEMU: the dependent is given the address libvirt reserved for the dependency, and is
re-created when the dependency is reached at another address."""

from __future__ import annotations

import json
import random
import re
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from test_libvirt import libvirtd, lv  # noqa: F401 - fixtures

from conftest import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.libvirt]

FLEET = """\
name: {name}
hosts:
  here: {{driver: qemu}}
  net: {{driver: libvirt, libvirt_uri: "qemu:///system", libvirt_network: "network:{net}"}}
services:
  db: {{image: app.qcow2, host: net, command: /db @hold, memory: 128M}}
  web: {{image: app.qcow2, host: here, command: /web @hold, depends_on: [db], memory: 128M}}
"""

NETWORK = """\
<network>
  <name>{name}</name>
  <bridge name="{bridge}"/>
  <dns enable="no"/>
  <ip address="{prefix}.1" netmask="255.255.255.0">
    <dhcp><range start="{prefix}.100" end="{prefix}.199"/></dhcp>
  </ip>
</network>
"""


# libvirtd hooks its own chains into the built-in ones once, when it first starts a
# network, and keeps them while it runs (it cannot make them again): not the test's.
_LIBVIRT_HOOK = re.compile(r"-A (INPUT|FORWARD|OUTPUT|POSTROUTING) -j LIBVIRT_[A-Z]+")


def _rules() -> list[str]:
    """The host's iptables rules but libvirtd's hooks (chains left out)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    return sorted(line for line in out.splitlines()
                  if line.startswith("-A") and not _LIBVIRT_HOOK.fullmatch(line))


@pytest.fixture
def network(lv: str) -> Iterator[tuple[str, str]]:  # noqa: F811
    """A persistent isolated libvirt network with DHCP (name, address prefix); it is
    destroyed and undefined after, its bridge and firewall rules with it."""
    token = uuid.uuid4().hex[:6]
    name, bridge = f"capstan-t{token}", f"cpst{token}"
    prefix = f"10.213.{random.randrange(256)}"
    rules = _rules()
    conn = libvirt.open(lv)
    net = conn.networkDefineXML(NETWORK.format(name=name, bridge=bridge, prefix=prefix))
    try:
        net.create()
        yield name, prefix
    finally:
        if net.isActive():
            net.destroy()
        net.undefine()
        assert not Path(f"/sys/class/net/{bridge}").exists()
        assert _rules() == rules


def _hosts_entries(name: str) -> list[dict[str, str]]:
    xml = libvirt.open("qemu:///system").networkLookupByName(name).XMLDesc(0)
    return [dict(h.attrib) for h in ET.fromstring(xml).iterfind("ip/dhcp/host")]


def _table(cli, *args: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    result = cli(*args, "-f", "json")
    assert result.code == 0, result.err
    return list(json.loads(result.out))


def _web_sees(cli, fleet: str, text: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until web's probe guest prints a command line holding *text*."""
    def seen() -> bool:
        logs = cli.program("fleet", "logs").stdout
        return any(line.startswith(f"{fleet}-web-1 ") and "cmdline=" in line
                   and text in line for line in logs.splitlines())
    wait_for(seen, timeout=120, what=f"web's command line with {text}")


def test_a_dependent_gets_the_address_on_the_libvirt_network(
        cli, image: Path, tmp_path: Path, network: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, prefix = network
    name = f"adr{uuid.uuid4().hex[:6]}"
    work = tmp_path / "adr"
    work.mkdir()
    image.rename(work / "app.qcow2")
    (work / "capstan-fleet.yaml").write_text(FLEET.format(name=name, net=net))
    monkeypatch.chdir(work)

    assert {r["Result"] for r in _table(cli, "up")} == {"ok"}
    [entry] = _hosts_entries(net)
    assert entry["name"] == f"{name}-db-1" and entry["ip"].startswith(f"{prefix}.1")
    _web_sees(cli, name, f"FLEET_HOSTS={name}-db-1={entry['ip']}")
    assert {r["Action"] for r in _table(cli, "up")} == {"keep"}

    # the dependency is reached elsewhere now: its reservation moved
    moved = f"{prefix}.150"
    libvirt.open("qemu:///system").networkLookupByName(net).update(
        libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
        -1, f"<host mac='{entry['mac']}' name='{entry['name']}' ip='{moved}'/>",
        libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG)
    planned = {r["Instance"]: r for r in _table(cli, "up", "--dry-run")}
    assert planned[f"{name}-db-1"]["Action"] == "keep"
    assert planned[f"{name}-web-1"]["Action"] == "recreate"
    assert "reached elsewhere" in str(planned[f"{name}-web-1"]["Detail"])
    done = {r["Instance"]: r for r in _table(cli, "up")}
    assert done[f"{name}-web-1"]["Action"] == "recreate", done
    assert "reached elsewhere" in str(done[f"{name}-web-1"]["Detail"])
    _web_sees(cli, name, f"FLEET_HOSTS={name}-db-1={moved}")
    assert {r["Action"] for r in _table(cli, "up")} == {"keep"}

    assert {r["Result"] for r in _table(cli, "down", "-t", "2")} == {"ok"}
    assert _hosts_entries(net) == []  # the reservation went with its domain
