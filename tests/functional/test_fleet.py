"""Fleets: capstan up/down/ps/logs with probe guests under QEMU TCG."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from capstan.drivers.qemu import QemuMachine

pytestmark = pytest.mark.qemu

FLEET = """\
name: demo
services:
  db:
    image: app.qcow2
    command: /db @deaf
    memory: 128M
  web:
    image: app.qcow2
    count: 3
    command: /web @deaf
    ports: ["0:80"]
    env: {MODE: prod}
    depends_on: [db]
  worker:
    image: app.qcow2
    count: 2
    command: /work @deaf
    depends_on: [db]
"""


@pytest.fixture
def fleet_dir(image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "fleet"
    work.mkdir()
    image.rename(work / "app.qcow2")
    (work / "capstan-fleet.yaml").write_text(FLEET)
    monkeypatch.chdir(work)
    return work


def alive(pid: int) -> bool:
    """Running, not a zombie (in-process runs make QEMU our child)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rows(cli, *args: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    result = cli(*args, "-f", "json")
    assert result.code == 0, result.err
    return list(json.loads(result.out))


def test_up_ps_idempotent_up_logs_and_clean_down(cli, fleet_dir: Path,
                                                 capstan_root: Path) -> None:
    planned = rows(cli, "up", "--dry-run")
    assert [(r["Instance"], r["Action"], r["Result"]) for r in planned][:2] == [
        ("demo-db-1", "create", "planned"), ("demo-web-1", "create", "planned")]
    assert not (capstan_root / "instances").exists()

    up = rows(cli, "up")
    assert len(up) == 6 and all(r["Result"] == "ok" for r in up), up
    ps = {r["Instance"]: r for r in rows(cli, "ps")}
    assert all(r["Status"] == "running" for r in ps.values()), ps
    assert ps["demo-db-1"]["Address"] == "10.77.0.2"
    assert sorted(str(r["Address"]) for r in ps.values()) == [f"10.77.0.{n}" for n in range(2, 8)]
    assert len({r["Ports"] for r in ps.values() if r["Service"] == "web"}) == 3

    # one private segment: every instance has the same multicast netdev
    segments = set()
    for name in ps:
        state = json.loads((capstan_root / "instances" / "qemu" / name / "instance.json")
                           .read_text())
        with QemuMachine.attach(name, qmp=Path(state["qmp"]), pid=state["pid"]) as machine:
            info = machine.command("human-monitor-command",
                                   {"command-line": "info network"})
        segments.add(re.search(r"mcast=([0-9.:]+)", info).group(1))  # type: ignore[union-attr]
    assert len(segments) == 1

    again = rows(cli, "up")
    assert {r["Action"] for r in again} == {"keep"}
    assert {r["PID"] for r in rows(cli, "ps")} == {r["PID"] for r in ps.values()}

    logs = cli.program("fleet", "logs").stdout
    web2 = next(line for line in logs.splitlines() if line.startswith("demo-web-2 ")
                and "cmdline=" in line)
    assert "--ip=eth1,10.77.0.4,255.255.255.0" in web2
    assert "--env=FLEET_HOSTS=demo-db-1=10.77.0.2" in web2 and "--env=MODE=prod" in web2

    pids = [int(str(r["PID"])) for r in ps.values()]
    down = rows(cli, "down", "-t", "0.5")
    assert [r["Instance"] for r in down][-1] == "demo-db-1"  # dependents go first
    assert all(r["Result"] == "ok" for r in down)
    assert not any(alive(pid) for pid in pids)
    leftovers = [p for p in capstan_root.rglob("*") if p.is_file()
                 and "cache" not in p.parts and "locks" not in p.parts]
    assert leftovers == [], leftovers
    assert rows(cli, "down") == []


def test_a_changed_file_reconciles(cli, fleet_dir: Path) -> None:
    small = FLEET.replace("count: 3", "count: 1").replace("count: 2", "count: 1")
    (fleet_dir / "capstan-fleet.yaml").write_text(small)
    assert all(r["Result"] == "ok" for r in rows(cli, "up"))
    before = {r["Instance"]: r["PID"] for r in rows(cli, "ps")}
    changed = small.replace("MODE: prod", "MODE: test").replace("count: 1\n    command: /work",
                                                                "count: 2\n    command: /work")
    (fleet_dir / "capstan-fleet.yaml").write_text(changed)
    actions = {r["Instance"]: r["Action"] for r in rows(cli, "up", "-t", "0.5")}
    assert actions == {"demo-db-1": "keep", "demo-web-1": "recreate",
                       "demo-worker-1": "keep", "demo-worker-2": "create"}
    after = {r["Instance"]: r["PID"] for r in rows(cli, "ps")}
    assert after["demo-db-1"] == before["demo-db-1"]
    assert after["demo-web-1"] != before["demo-web-1"]
    (fleet_dir / "capstan-fleet.yaml").write_text(small)
    assert ("demo-worker-2", "remove") in {(r["Instance"], r["Action"])
                                           for r in rows(cli, "up", "-t", "0.5")}
    assert rows(cli, "down", "-t", "0.5")


def test_partial_failure_rolls_back_or_keeps_going(cli, fleet_dir: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        text = FLEET.replace('ports: ["0:80"]', f'ports: ["{port}:80"]').replace("count: 3",
                                                                            "count: 1")
        (fleet_dir / "capstan-fleet.yaml").write_text(text)
        result = cli("up", "-t", "0.5", "-f", "json")
        assert result.code == 65 and "some instances failed" in result.err
        outcome = {r["Instance"]: r for r in json.loads(result.out)}
        assert outcome["demo-web-1"]["Result"] == "failed"
        assert f"127.0.0.1:{port}" in str(outcome["demo-web-1"]["Detail"])
        assert outcome["demo-db-1"]["Result"] == "rolled back"
        assert {r["Status"] for r in rows(cli, "ps")} == {"absent"}

        result = cli("up", "--keep-going", "-f", "json")
        assert result.code == 65
        outcome = {r["Instance"]: r for r in json.loads(result.out)}
        assert [outcome[n]["Result"] for n in ("demo-db-1", "demo-web-1", "demo-worker-1")] \
            == ["ok", "failed", "ok"]
        status = {r["Instance"]: r["Status"] for r in rows(cli, "ps")}
        assert status == {"demo-db-1": "running", "demo-web-1": "absent",
                          "demo-worker-1": "running", "demo-worker-2": "running"}
    assert cli("down", "-t", "0.5").code == 0


@pytest.mark.parametrize(("text", "message"), [
    ("services:\n  a: {image: x}\n  a: {image: y}\n", ":3: duplicate key 'a'"),
    ("services:\n  a: {image: x, depends_on: [b]}\n", "unknown service 'b'"),
    ("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n",
     "dependency cycle a -> b -> a"),
    ("services:\n  a: {image: x, count: -1}\n", "count: must be an integer from 0 to 64"),
    ("services:\n  a: {image: x, count: two}\n", "count: must be an integer"),
    ("services:\n  a: {image: x, count: true}\n", "count: must be an integer"),
    ("services:\n  a: {image: x, count: 65}\n", "count: must be an integer"),
    ("services:\n  a: {image: x, colour: red}\n", "unknown key 'colour'"),
    ("services:\n  a: {count: 1}\n", "services.a.image: required"),
    ("services: {}\n", "non-empty mapping"),
    ("private_network: 10.0.0.0/30\nservices:\n  a: {image: x, count: 9}\n", "too small"),
    ("services:\n  a: {image: x\n", "expected ','"),
    ("services:\n  a: {image: nope.qcow2}\n", "no such image"),
    ("services:\n  a: {image: app.qcow2, ports: ['80']}\n", "invalid port forward"),
])
def test_bad_fleet_files_start_nothing(cli, fleet_dir: Path, capstan_root: Path, text: str,
                                       message: str) -> None:
    (fleet_dir / "capstan-fleet.yaml").write_text(text)
    result = cli("up")
    assert result.code in (64, 65), result
    assert message in result.err and result.err.count("\n") == 1, result.err
    assert not (capstan_root / "instances" / "qemu").exists() or \
        not os.listdir(capstan_root / "instances" / "qemu")


def test_missing_fleet_file(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("ps")
    assert result.code == 65 and "no such file: capstan-fleet.yaml" in result.err


@pytest.mark.parametrize("jobs", ["0", "-2", "many"])
def test_bad_job_count_is_a_usage_error(cli, fleet_dir: Path, jobs: str) -> None:
    result = cli("up", "-j", jobs)
    assert result.code == 64 and "expected a whole number of at least 1" in result.err
    assert result.err.count("\n") == 1, result.err
