"""Hostile fleet files with hosts: bad host names, unknown drivers and settings, secrets
written into the file or leaked by a failing host, unreachable hosts, a tampered record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostile_kit import Sandbox, check

SECRET = "hunter2-do-not-show"


def _write(sandbox: Sandbox, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = sandbox.root.parent / "fleet"
    work.mkdir(exist_ok=True)
    (work / "capstan-fleet.yaml").write_text(text)
    monkeypatch.chdir(work)
    return work


def _hosts(hosts: str, service: str = "host: h") -> str:
    return f"name: f\nhosts:\n{hosts}\nservices:\n  a: {{image: app.qcow2, {service}}}\n"


@pytest.mark.parametrize(("text", "message"), [
    (_hosts('  "../etc": {driver: qemu}', "host: ../etc"), "invalid host name '../etc'"),
    (_hosts('  "-rf": {driver: qemu}'), "invalid host name '-rf'"),
    (_hosts('  "a\\x1b[31mb": {driver: qemu}'), r"invalid host name 'a\x1b[31mb'"),
    (_hosts(f'  "{"h" * 41}": {{driver: qemu}}'), "longer than 40 characters"),
    (_hosts("  h: {driver: qemu}", 'host: "../h"'), "invalid host name '../h'"),
    (_hosts("  h: {driver: qemu}", "host: [h]"), "invalid host name ['h']"),
    (_hosts("  h: {driver: qemu}", "host: nope"), "unknown host 'nope'"),
    (_hosts("  h: {driver: qemu}", "host: h, spread: [h]"), "'host' and 'spread' together"),
    (_hosts("  h: {driver: qemu}", "spread: []"), "expected a non-empty list"),
    (_hosts("  h: {driver: qemu}", "spread: [h, h]"), "a host is named twice"),
    (_hosts("  h: {driver: qemu}", "host: h, driver: qemu"), "'driver' and 'host'"),
    (_hosts("  h: {driver: ../../bin/sh}"), "unknown driver '../../bin/sh'"),
    (_hosts("  h: {driver: [qemu]}"), "expected a mapping with 'driver'"),
    (_hosts("  h: qemu"), "expected a mapping with 'driver'"),
    ("name: f\nhosts: [h]\nservices:\n  a: {image: x}\n", "expected a mapping of host name"),
    (_hosts("  h: {driver: qemu, libvirt_uri: qemu:///system}"),
     "unknown setting 'libvirt_uri' for driver qemu"),
    (_hosts("  h: {driver: libvirt, libvirt_uri: {a: 1}}"), "expected a string on one line"),
    (_hosts('  h: {driver: libvirt, libvirt_uri: "-oProxyCommand=x"}'),
     "expected a string on one line"),
    (_hosts("  h: {driver: aws, aws_upload: floppy}"), "must be one of ebs, s3"),
    (_hosts('  h: {driver: libvirt, address: "a\\nb"}'), "expected a host name or IP address"),
])
def test_bad_hosts_start_nothing(cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                 text: str, message: str) -> None:
    _write(sandbox, text, monkeypatch)
    for command in ("up", "ps", "down"):
        check(cli(command), 65, message)
    assert not (sandbox.root / "instances").exists()


@pytest.mark.parametrize("hosts", [
    f"  h: {{driver: vsphere, vsphere_password: {SECRET}}}",
    f"  h: {{driver: vsphere, vsphere_password: '${{X}}{SECRET}'}}",
    f"  h: {{driver: libvirt, libvirt_uri: 'qemu+ssh://root:{SECRET}@192.0.2.1/system'}}",
    f"  h: {{driver: vsphere, vsphere_url: 'https://u:{SECRET}@192.0.2.1/sdk'}}",
])
def test_secrets_written_in_the_file_are_refused_unshown(
        cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, hosts: str) -> None:
    _write(sandbox, _hosts(hosts), monkeypatch)
    result = cli("up")
    check(result, 65, "value not shown")
    assert SECRET not in result.err + result.out


def test_a_secret_from_the_environment_never_shows(cli, sandbox: Sandbox, image: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    work = _write(sandbox, _hosts("  h: {driver: vsphere, vsphere_url: 'https://127.0.0.1:1/sdk',\n"
                           "      vsphere_user: u, vsphere_password: '${FLEET_PW}'}"),
           monkeypatch)
    image.rename(work / "app.qcow2")
    check(cli("up"), 78, "hosts.h.vsphere_password is read from the environment variable "
          "FLEET_PW, which is not set")
    monkeypatch.setenv("FLEET_PW", SECRET)
    result = cli("up")
    assert result.code in (69, 75), result
    check(result, result.code, "host h: ")
    assert SECRET not in result.err + result.out
    assert not list((sandbox.root / "fleets").glob("*.json"))


FLEET = """\
name: f
hosts:
  here: {driver: qemu}
  there: {driver: libvirt, libvirt_uri: "qemu+tcp://127.0.0.1:1/system"}
services:
  a: {image: app.qcow2, host: here, command: /a @hold, memory: 128M}
"""


@pytest.mark.qemu
def test_an_unreachable_host_is_one_line_and_hides_no_other(
        cli, sandbox: Sandbox, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _write(sandbox, FLEET, monkeypatch)
    image.rename(work / "app.qcow2")
    assert cli("up").code == 0
    # an instance an earlier up made on a host that is now unreachable
    record_path = sandbox.root / "fleets" / "f.json"
    record = json.loads(record_path.read_text())
    record["instances"]["f-b-1"] = {"service": "b", "digest": "x", "driver": "libvirt",
                                    "host": "there"}
    record_path.write_text(json.dumps(record))
    (work / "capstan-fleet.yaml").write_text(
        FLEET + "  b: {image: app.qcow2, host: there, command: /b}\n")

    result = cli("ps", "-f", "json")
    check(result, 69, "host there: cannot connect to libvirt")
    rows = {r["Instance"]: (r["Host"], r["Status"]) for r in json.loads(result.out)}
    assert rows == {"f-a-1": ("here", "running"), "f-b-1": ("there", "unreachable")}
    check(cli("up"), 69, "host there: cannot connect to libvirt")

    result = cli("down", "-t", "1", "-f", "json")
    check(result, 69, "host there: cannot connect to libvirt")
    results = {r["Instance"]: r["Result"] for r in json.loads(result.out)}
    assert results == {"f-a-1": "ok", "f-b-1": "unreachable"}
    assert list(json.loads(record_path.read_text())["instances"]) == ["f-b-1"]


@pytest.mark.parametrize(("entry", "code", "message"), [
    ({"service": "a", "digest": "x", "host": "gone"}, 65, "host gone: not among the hosts"),
    ({"service": "a", "digest": "x", "host": "../../etc"}, 65, "invalid host name"),
    ({"service": "a", "digest": "x", "host": ["here"]}, 65, "is damaged"),
])
def test_a_tampered_record(cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
                           entry: dict[str, object], code: int, message: str) -> None:
    _write(sandbox, _hosts("  h: {driver: qemu}", "host: h, count: 0"), monkeypatch)
    (sandbox.root / "fleets").mkdir(parents=True)
    (sandbox.root / "fleets" / "f.json").write_text(
        json.dumps({"file": "x", "instances": {"f-a-1": entry}}))
    result = cli("down", "-f", "json")
    check(result, code, message)
