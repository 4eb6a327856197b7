"""One fleet on two hosts for real: local QEMU (TCG, probe guests) and libvirt reached
through qemu+ssh:// at a private sshd on this machine (the fixtures of test_libvirt)."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from test_libvirt import libvirtd, lv, pool, ssh_uri  # noqa: F401 - fixtures

pytestmark = [pytest.mark.qemu, pytest.mark.libvirt]

FLEET = """\
name: {name}
hosts:
  here: {{driver: qemu}}
  there: {{driver: libvirt, libvirt_uri: "${{DUO_URI}}", libvirt_pool: {pool}}}
services:
  db: {{image: app.qcow2, host: there, command: /db @hold, ports: ["0:80"], memory: 128M}}
  web: {{image: app.qcow2, host: here, count: 2, command: /web @hold, depends_on: [db],
         memory: 128M}}
  api: {{image: app.qcow2, spread: [here, there], count: 2, command: /api @hold,
         memory: 128M}}
"""


@pytest.fixture
def duo(image: Path, tmp_path: Path, pool: str, ssh_uri: str,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, str]]:
    """The fleet file, its unique fleet name and the libvirt pool; the fleet's libvirt
    domains are removed after."""
    name = f"duo{uuid.uuid4().hex[:6]}"
    work = tmp_path / "duo"
    work.mkdir()
    image.rename(work / "app.qcow2")
    (work / "capstan-fleet.yaml").write_text(FLEET.format(name=name, pool=pool))
    monkeypatch.setenv("DUO_URI", ssh_uri)
    monkeypatch.delenv("CAPSTAN_HYPERVISOR")
    monkeypatch.chdir(work)
    yield work / "capstan-fleet.yaml", name, pool
    conn = libvirt.open("qemu:///system")
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(f"{name}-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def table(cli, *args: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    result = cli(*args, "-f", "json")
    assert result.code == 0, result.err
    return list(json.loads(result.out))


def ours(name: str) -> list[str]:
    return sorted(d.name() for d in libvirt.open("qemu:///system").listAllDomains(0)
                  if d.name().startswith(f"{name}-"))


def test_up_ps_logs_down_across_two_hosts(cli, duo: tuple[Path, str, str]) -> None:
    _, name, storage = duo
    planned = {r["Instance"]: r["Host"] for r in table(cli, "up", "--dry-run")}
    assert planned[f"{name}-db-1"] == "there" and planned[f"{name}-web-2"] == "here"
    assert {planned[f"{name}-api-1"], planned[f"{name}-api-2"]} <= {"here", "there"}
    assert all(r["Result"] == "ok" for r in table(cli, "up")), "up failed"
    ps = {r["Instance"]: r for r in table(cli, "ps")}
    assert {r["Status"] for r in ps.values()} == {"running"}, ps
    assert {n: r["Host"] for n, r in ps.items()} == planned
    assert ps[f"{name}-db-1"]["Driver"] == "libvirt" and ps[f"{name}-web-1"]["Driver"] == "qemu"
    on_there = sorted(n for n, h in planned.items() if h == "there")
    assert ours(name) == on_there
    volumes = libvirt.open("qemu:///system").storagePoolLookupByName(storage).listVolumes()
    bases = [v for v in volumes if v.startswith("capstan-base-")]
    assert sorted(set(volumes) - set(bases)) == [f"{n}.qcow2" for n in on_there]
    assert len(bases) == 2  # app.qcow2 uploaded once: its base volume and marker

    port = str(ps[f"{name}-db-1"]["Ports"]).split("->")[0].rsplit(":", 1)[1]
    logs = cli.program("fleet", "logs")
    web = [line for line in logs.stdout.splitlines() if line.startswith(f"{name}-web-1 ")
           and "cmdline=" in line]
    assert web and f"FLEET_HOSTS={name}-db-1=127.0.0.1:{port}" in web[0], logs.stdout
    assert logs.returncode == 0 and not logs.stderr, logs.stderr  # both hosts' logs
    width = max(len(n) for n in planned)
    db = [line for line in logs.stdout.splitlines() if line.startswith(f"{name}-db-1 ")]
    assert db and all(line.startswith(f"{name}-db-1".ljust(width) + " | ") for line in db)
    assert any(line.endswith(" /db @hold]") and "PROBE cmdline=[" in line for line in db)

    assert {r["Action"] for r in table(cli, "up")} == {"keep"}
    down = table(cli, "down", "-t", "2")
    assert {r["Result"] for r in down} == {"ok"} and len(down) == len(planned)
    assert ours(name) == []
    assert libvirt.open("qemu:///system").storagePoolLookupByName(storage).listVolumes() == []
    assert {r["Status"] for r in table(cli, "ps")} == {"absent"}


def test_a_failure_on_the_second_host_rolls_back_both(cli, duo: tuple[Path, str, str],
                                                      capstan_root: Path) -> None:
    path, name, storage = duo
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        path.write_text(path.read_text().split("  api:")[0] + (
            "  ok2: {image: app.qcow2, host: there, command: /ok @hold, depends_on: [db]}\n"
            f"  bad: {{image: app.qcow2, host: there, command: /bad, depends_on: [db],\n"
            f"         ports: ['{taken}:80']}}\n"))
        result = cli("up", "-t", "2", "-f", "json")
    assert result.code == 65 and "some instances failed" in result.err, result
    outcome = {r["Instance"]: r for r in json.loads(result.out)}
    assert outcome[f"{name}-bad-1"]["Result"] == "failed"
    assert outcome[f"{name}-bad-1"]["Host"] == "there"
    assert f"127.0.0.1:{taken}" in str(outcome[f"{name}-bad-1"]["Detail"])
    rolled = {n for n, r in outcome.items() if r["Result"] == "rolled back"}
    assert rolled == {f"{name}-{s}" for s in ("db-1", "web-1", "web-2", "ok2-1")}
    assert ours(name) == []
    assert libvirt.open("qemu:///system").storagePoolLookupByName(storage).listVolumes() == []
    assert {r["Status"] for r in table(cli, "ps")} == {"absent"}
    assert not (capstan_root / "fleets" / f"{name}.json").exists()
